// tests for adam: (in progress)
