from __future__ import annotations

import subprocess
import sys


def test_core_imports_no_framework():
    code = (
        "import sys\n"
        "import quire.core, quire.core.engine, quire.core.scheduler, quire.core.batch\n"
        "import quire.core.executor, quire.plugins.manager, quire.plugins.selection\n"
        "bad = [m for m in ('torch', 'jax', 'triton', 'transformers') if m in sys.modules]\n"
        "assert not bad, bad\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
