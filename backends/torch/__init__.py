"""The PyTorch family shared by the cpu, cuda and rocm backends: models, loading, sampling."""
