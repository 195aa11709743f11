"""The launcher: services on ports they bind themselves, and `Stack.stop` on a process that ignores SIGTERM (its
threads' stacks reach its log, then it is SIGKILLed).

One small stack (the bundled models, in-process load store: `StackConfig`'s defaults) serves the tests that need one.
"""

from __future__ import annotations

import subprocess
import sys
import time

import pytest

from adaspec import Client
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


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    with Stack(StackConfig(log_dir=str(tmp_path_factory.mktemp("stack-logs")))) as running:
        yield running
    assert set(running.exit_codes().values()) == {0}, f"graceful SIGTERM exit expected:\n{running.exit_report()}"


def test_services_bind_port_0_and_report_the_port_they_got(stack):
    """The launcher picks no port (one found free can be taken before the service binds it): each service binds
    port 0 and writes the address it got to its --port-file; the coordinator gets the replicas' addresses."""
    for process in stack.processes.values():
        args = process.popen.args
        assert args[args.index("--port") + 1] == "0", process.name
        host, port = process.address.rsplit(":", 1)
        assert host == "127.0.0.1" and int(port) > 0, process.name
    with Client(stack.address) as client:
        assert sorted(r.address for r in client.cluster_state()) == sorted(
            stack.processes[name].address for name in ("verify-0", "draft-0"))
        assert len(client.generate("def f():", max_tokens=4, temperature=0).token_ids) == 4
