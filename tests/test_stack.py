"""`Stack.stop` on a process that ignores SIGTERM: its threads' stacks reach its log, then it is SIGKILLed."""

from __future__ import annotations

import subprocess
import sys
import time

from adaspec.stack import Process, Stack, StackConfig

STUCK_SERVICE = """
import signal, sys, threading, time
from adaspec.serving.logs import configure_logging
configure_logging("stuck")
signal.signal(signal.SIGTERM, signal.SIG_IGN)
def hang_in_a_step():
    time.sleep(60)
threading.Thread(target=hang_in_a_step, daemon=True).start()
print("ready", file=sys.stderr, flush=True)
time.sleep(60)
"""


def test_a_process_that_ignores_sigterm_dumps_its_stacks_and_is_killed(tmp_path):
    stack = Stack(StackConfig(log_dir=str(tmp_path)))
    log_path = tmp_path / "verify-0.log"
    with open(log_path, "wb") as log:
        popen = subprocess.Popen([sys.executable, "-c", STUCK_SERVICE], stdout=log, stderr=subprocess.STDOUT)
    stack.processes["verify-0"] = Process("verify-0", "127.0.0.1:1", popen, log_path)
    deadline = time.monotonic() + 30
    while "ready" not in log_path.read_text():
        assert time.monotonic() < deadline and popen.poll() is None, log_path.read_text()
        time.sleep(0.05)

    stack.stop(timeout_s=0.5)

    assert stack.exit_codes() == {"verify-0": -9} and stack.overstayed == {"verify-0"}
    report = stack.exit_report()
    assert "verify-0: exit code -9 (SIGKILLed: still running after SIGTERM)" in report
    assert "hang_in_a_step" in report, report  # the stuck thread's frame, from faulthandler
