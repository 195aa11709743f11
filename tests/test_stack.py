"""The launcher: services on ports they bind themselves, supervision (a replica that dies is restarted within a
budget, the coordinator dying stops the stack), and `Stack.stop` on a process that ignores SIGTERM (its threads'
stacks reach its log, then it is SIGKILLed).

One small stack (the bundled models, in-process load store: `StackConfig`'s defaults, with a restart budget of one
so that the second crash spends it) serves the tests that need one, in order; the coordinator dies last.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time

import pytest

from adaspec import Client
from adaspec.service_runtime.server import wait_until_serving
from adaspec.stack import Process, Stack, StackConfig, StackDown

STUCK_SERVICE = """
import signal, sys, threading, time
from adaspec.service_runtime.logs import configure_logging
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
    with Stack(StackConfig(restart_budget=1, log_dir=str(tmp_path_factory.mktemp("stack-logs")))) as running:
        yield running
    assert set(running.exit_codes().values()) <= {0}, f"graceful SIGTERM exit expected:\n{running.exit_report()}"


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


def supervise_for(stack: Stack, seconds: float, until=lambda: False) -> None:
    """Call `stack.supervise()` as `adaspec up` does (more often), for `seconds` or until `until()`."""
    deadline = time.monotonic() + seconds
    while not until() and time.monotonic() < deadline:
        stack.supervise()
        time.sleep(0.05)


def test_a_replica_that_dies_is_restarted_on_its_port_and_serves_again(stack, capfd):
    verify = stack.processes["verify-0"]
    address, crashed = verify.address, verify.popen.pid
    os.kill(crashed, signal.SIGKILL)  # a crash the launcher did not cause (`Stack.kill` is a wanted one)
    died = time.monotonic()
    supervise_for(stack, 30, until=lambda: verify.popen.pid != crashed)
    assert verify.popen.pid != crashed and time.monotonic() - died >= 1.0  # after the first backoff, 1 s
    assert len(verify.restarts) == 1 and verify.address == address
    restarted = time.time()
    asyncio.run(wait_until_serving(address, 60))
    with Client(stack.address) as client:
        deadline = time.monotonic() + 30
        while not any(r.replica_id == "verify-0" and r.updated_at > restarted for r in client.cluster_state()):
            assert time.monotonic() < deadline, "the coordinator did not find the restarted replica"
            supervise_for(stack, 0.2)
        assert len(client.generate("def f():", max_tokens=4, temperature=0).token_ids) == 4
    err = capfd.readouterr().err
    assert "adaspec: verify-0 exited with code -9; end of its log:" in err
    assert "adaspec: restarting verify-0 in 1 s" in err
    assert f"adaspec: verify-0 restarted on {address} (restart 1, pid {verify.popen.pid})" in err


def test_past_its_restart_budget_a_replica_stays_down_and_a_killed_one_is_left_alone(stack, capfd):
    verify = stack.processes["verify-0"]
    crashed = verify.popen.pid
    os.kill(crashed, signal.SIGKILL)
    verify.popen.wait()
    stack.kill("draft-0")  # a fault test's crash: wanted, not restarted
    supervise_for(stack, 2.5)  # past the next backoff (2 s)
    assert verify.given_up and verify.popen.pid == crashed and verify.popen.returncode == -9
    assert len(verify.restarts) == 1
    assert "adaspec: verify-0 stays down: 1 restarts in the last 300 s spent its budget" in capfd.readouterr().err
    stack.killed.add("verify-0")  # its exit code is checked here, not by the fixture
    draft = stack.processes["draft-0"]
    assert draft.popen.returncode == -9 and not draft.restarts and draft.restart_at is None


def test_the_coordinator_dying_stops_the_stack(stack):
    coordinator = stack.processes["coordinator"]
    os.kill(coordinator.popen.pid, signal.SIGKILL)
    coordinator.popen.wait()
    with pytest.raises(StackDown, match="coordinator exited with code -9; end of its log"):
        stack.supervise()
    stack.killed.add("coordinator")
