"""Runs `test_kernels_triton.py` in a subprocess with TRITON_INTERPRET=1 set from the start (its docstring says
why): a plain pytest run collects those tests only there, so each counts once, where it runs, and none as skipped
here. Under TRITON_INTERPRET=1 this process runs them itself and does not collect this file (conftest.py)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

KERNEL_TESTS = Path(__file__).with_name("test_kernels_triton.py")


def test_kernels_in_interpreter_subprocess(request):
    here = [item.nodeid for item in request.session.items if item.path == KERNEL_TESTS]
    assert not here, f"collected in this process too (skipped or run twice): {here}"
    # --noconftest: the shared conftest's fixtures are not used there, and it imports transformers (~7 s)
    command = [sys.executable, "-m", "pytest", str(KERNEL_TESTS), "-q", "-p", "no:cacheprovider", "-o", "addopts=",
               "--noconftest"]
    if request.config.getoption("markexpr"):
        command += ["-m", request.config.getoption("markexpr")]
    env = {**os.environ, "TRITON_INTERPRET": "1"}
    result = subprocess.run(command, env=env, cwd=Path(__file__).parents[1], capture_output=True, text=True,
                            check=False)
    summary = result.stdout.strip().splitlines()[-1] if result.stdout.strip() else ""
    assert result.returncode == 0, f"{summary}\n{result.stdout[-8000:]}\n{result.stderr[-2000:]}"
    assert "skipped" not in summary, summary
    print(f"interpreter subprocess: {summary}")
