"""`quire bench`: throughput, latency, serving and prefix-caching benchmarks with baselines."""
