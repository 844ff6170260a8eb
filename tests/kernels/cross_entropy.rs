// tests for cross_entropy: (in progress)
