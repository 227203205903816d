"""The model layer no framework owns: architecture configs, checkpoint listing and reading
(safetensors, GGUF), the HF-name -> fused-weight map. Read by the torch and JAX families
alike; imports numpy (and gguf / ml_dtypes lazily), never torch or jax."""
