"""Model definitions of the torch family and the architecture registry."""
