"""The PyTorch family shared by the cpu, cuda, rocm and triton-interpret backends: the
executor, models, attention seam, sampler and torch-side checkpoint loading."""
