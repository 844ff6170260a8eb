// tests for avg_pool2d: (in progress)
