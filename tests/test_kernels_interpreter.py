"""Runs `test_kernels_triton.py` in a subprocess with TRITON_INTERPRET=1 set from the start (its docstring says
why): a plain pytest run collects those tests only there, so each counts once, where it runs, and none as skipped
here. Under TRITON_INTERPRET=1 this process runs them itself and does not collect this file (conftest.py).

The interpreter is slow (~80 s of CPU) and the rest of the suite leaves the cores idle for part of its time
(waiting on the services it starts), so the subprocess starts when collection ends, at the lowest priority, and
this test collects its outcome: it takes what the other tests leave and delays none of them."""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

KERNEL_TESTS = Path(__file__).with_name("test_kernels_triton.py")
RUN_KEY = pytest.StashKey[subprocess.Popen]()


def start_interpreter_run(config: pytest.Config) -> None:
    """Start the kernel tests under the interpreter, niced, in the background (conftest, once collected)."""
    # --noconftest: the shared conftest's fixtures are not used there, and it imports transformers (~7 s)
    lowest_priority = ["nice", "-n", "19"] if shutil.which("nice") else []  # coreutils; without it, as it is
    command = [*lowest_priority, sys.executable, "-m", "pytest", str(KERNEL_TESTS), "-q", "-p", "no:cacheprovider",
               "-o", "addopts=", "--noconftest"]
    if config.getoption("markexpr"):
        command += ["-m", config.getoption("markexpr")]
    env = {**os.environ, "TRITON_INTERPRET": "1"}
    config.stash[RUN_KEY] = subprocess.Popen(command, env=env, cwd=Path(__file__).parents[1], text=True,
                                             stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def stop_interpreter_run(config: pytest.Config) -> None:
    """At the session's end: a run this test never collected (stopped early, `-x`) does not outlive it."""
    run = config.stash.get(RUN_KEY, None)
    if run is not None and run.poll() is None:
        run.kill()
        run.communicate()


def test_kernels_in_interpreter_subprocess(request):
    here = [item.nodeid for item in request.session.items if item.path == KERNEL_TESTS]
    assert not here, f"collected in this process too (skipped or run twice): {here}"
    run = request.config.stash.get(RUN_KEY, None)
    assert run is not None, "the interpreter run was not started when collection finished (conftest.py)"
    with contextlib.suppress(OSError):  # what is left of it now holds up the suite: back to normal (needs root)
        os.setpriority(os.PRIO_PROCESS, run.pid, 0)
    stdout, stderr = run.communicate()
    summary = stdout.strip().splitlines()[-1] if stdout.strip() else ""
    assert run.returncode == 0, f"{summary}\n{stdout[-8000:]}\n{stderr[-2000:]}"
    assert "skipped" not in summary, summary
    print(f"interpreter subprocess: {summary}")
