"""An executor module that fails on import with something other than ImportError."""

raise RuntimeError("vendor runtime not initialised: call vendor.init() first")
