// tests for global_avg_pool: (in progress)
