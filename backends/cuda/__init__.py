"""The cuda backend: the torch family on NVIDIA GPUs with quire's Triton kernels; the platform
probe and tuning table by compute capability."""
