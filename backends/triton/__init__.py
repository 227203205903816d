"""Triton kernels shared by the cuda and rocm backends (KV write, unified paged attention,
split-KV decode), GpuExecutor with decode graphs, and the triton-interpret test backend."""
