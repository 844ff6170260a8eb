// tests for linear: (in progress)
