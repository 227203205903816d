"""Home of a later backend (see the open issues); nothing here yet."""
