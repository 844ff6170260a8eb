// tests for batch_norm: (in progress)
