"""The tpu backend (JAX family): Llama-family models as JAX functions, quire's Pallas ragged
paged attention with a jnp reference, an on-device sampler, bucketed static shapes."""
