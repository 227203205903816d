"""Helpers for testing quire and its plugins without downloading anything."""
