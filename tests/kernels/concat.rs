// tests for concat: (in progress)
