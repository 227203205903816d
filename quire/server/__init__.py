"""The OpenAI-compatible HTTP server (`quire serve`)."""
