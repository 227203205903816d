"""The package-dir mapping works for a wheel, not only for the editable install."""

from __future__ import annotations

import os
import subprocess
import sys
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_wheel_maps_top_level_folders_into_quire(tmp_path):
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps",
                    "--no-build-isolation", str(ROOT), "-w", str(tmp_path / "dist")],
                   check=True, capture_output=True)
    (wheel,) = (tmp_path / "dist").glob("quire-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    for expected in ("quire/core/engine.py", "quire/plugins/manager.py",
                     "quire/testing/reference.py", "quire/models/weight_map.py",
                     "quire/backends/torch/models/llama.py"):
        assert expected in names
    assert not any(n.startswith(("core/", "plugins/", "backends/", "tests/")) for n in names)
    site = tmp_path / "site"
    zipfile.ZipFile(wheel).extractall(site)
    code = ("import quire, quire.core.engine, quire.backends.cpu.plugin; "
            "print(quire.core.engine.__file__)")
    env = {**os.environ, "PYTHONPATH": str(site), "PYTHONNOUSERSITE": "1"}
    out = subprocess.run([sys.executable, "-S", "-c", f"import sys; sys.path[:0]=[{str(site)!r}]"
                          f" + [p for p in {sys.path!r} if 'site-packages' in p]; {code}"],
                         env=env, cwd=tmp_path, check=True, capture_output=True, text=True)
    assert out.stdout.strip().startswith(str(site))
