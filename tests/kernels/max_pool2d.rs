// tests for max_pool2d: (in progress)
