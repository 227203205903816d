"""pytest plugin (entry point "pytest11") wiring the backend conformance kit:

    pytest --pyargs quire.testing --quire-backend NAME [--quire-backend NAME2 ...]

Without --quire-backend (and without QUIRE_BACKEND) every registered backend is checked.
A backend that is not registered or not available fails with the reason;
--quire-skip-unavailable reports it as skipped instead."""

from __future__ import annotations

import os

import pytest


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--quire-backend", action="append", default=None,
                     help="backend(s) to check (default: $QUIRE_BACKEND, else all registered)")
    parser.addoption("--quire-skip-unavailable", action="store_true", default=False,
                     help="skip, rather than fail, a backend that is not registered or not "
                          "available on this machine")


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "backend_name" not in metafunc.fixturenames:
        return
    names = metafunc.config.getoption("--quire-backend")
    if not names and os.environ.get("QUIRE_BACKEND"):
        names = [os.environ["QUIRE_BACKEND"]]
    if not names:
        from quire.plugins.manager import load_plugins

        names = [s.spec.name for s in load_plugins().backends()]
    metafunc.parametrize("backend_name", names, scope="module")
