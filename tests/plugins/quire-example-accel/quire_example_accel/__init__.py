"""A pretend accelerator: the torch model code with its own head-major KV layout."""
