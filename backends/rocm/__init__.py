"""The rocm backend: the torch family on AMD GPUs (ROCm build of torch) with quire's Triton
kernels; the HIP probe and tuning by gfx architecture."""
