// tests for conv2d: (in progress)
