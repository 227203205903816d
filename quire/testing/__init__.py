"""Testing quire and its plugins without downloading anything: the backend conformance kit
(`pytest --pyargs quire.testing --quire-backend NAME`), the reference attention every
backend is compared against, and tiny random-weight models."""
