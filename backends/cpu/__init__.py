"""The cpu backend: the torch family on the host CPU, the default backend. Native C++
kernels (paged decode attention, fused RMSNorm / SiLU-and-multiply / rope) and
oneDNN-packed linears, with plain-torch fallbacks; the oracle every backend is checked
against lives in quire.testing.reference."""
