"""Accelerator backends; each registers itself through quire.plugins hooks."""
