"""Overload and faults on a real stack (two verify replicas, one draft, Redis): what is lost, what comes back.

    python benchmarks/bench_faults.py          # writes results/faults.json

Overload: the stack's capacity C (requests/s, closed loop at 32 in flight) is measured first; then requests
arrive as a Poisson process at 2 C for `--overload-s` seconds with no client retries. Reported: how many
finished, how many were refused (RESOURCE_EXHAUSTED with a retry delay) or failed otherwise, every process's
peak resident memory (VmHWM) before and after, and whether every replica is back to no sessions and all of its
KV blocks free afterwards.

Faults, one at a time under a steady load (`--in-flight` greedy requests at once): SIGKILL a verify replica,
the draft replica, Redis (restarted empty after 5 s, as a supervisor would). Reported: requests finished,
resumed on another verify replica, failed (by status); whether the finished outputs equal an undisturbed run's;
how long until a new request succeeds; and, for a replica, how long until the stack restarted it (`supervise`).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import signal
import threading
import time
from collections import Counter
from pathlib import Path

import grpc
from tqdm import tqdm

from adaspec import AsyncClient, Client
from adaspec.errors import AdaSpecError
from adaspec.stack import Stack, StackConfig

OUT_DIR = Path(__file__).resolve().parent / "results"
PROMPTS = [f"def task_{i}(items):\n    " for i in range(64)]
MAX_TOKENS = 48
REDIS_DOWN_S = 5.0


def peak_rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def replica_state(stack: Stack) -> dict[str, tuple[int, int, int]]:
    """(sessions, free KV blocks, total KV blocks) of every live replica, read from it directly."""
    loads = {name: stack.replica_load(name) for name, p in stack.processes.items()
             if name.startswith(("verify", "draft")) and p.popen.poll() is None}
    return {name: (load.sessions, load.free_kv_blocks, load.total_kv_blocks) for name, load in loads.items()}


async def one(client: AsyncClient, i: int) -> tuple[str, object]:
    try:
        completion = await client.generate(PROMPTS[i % len(PROMPTS)], max_tokens=MAX_TOKENS, temperature=0,
                                           ignore_eos=True)
        return "ok", completion
    except AdaSpecError as error:
        retry = " (retry delay)" if getattr(error, "retry_delay", None) is not None else ""
        return f"{error.code.name}{retry}", error


async def capacity(address: str, seconds: float = 15.0, in_flight: int = 32) -> float:
    done, stop = 0, time.monotonic() + seconds

    async def worker(client, w):
        nonlocal done
        i = w
        while time.monotonic() < stop:
            status, _ = await one(client, i)
            done += status == "ok"
            i += in_flight

    async with AsyncClient(address, max_retries=0) as client:
        start = time.monotonic()
        await asyncio.gather(*(worker(client, w) for w in range(in_flight)))
        return done / (time.monotonic() - start)


async def overload(address: str, rate: float, seconds: float) -> Counter:
    rng, tasks = random.Random(0), []
    async with AsyncClient(address, max_retries=0) as client:
        end, i = time.monotonic() + seconds, 0
        while time.monotonic() < end:
            tasks.append(asyncio.create_task(one(client, i)))
            i += 1
            await asyncio.sleep(rng.expovariate(rate))
        return Counter(status for status, _ in await asyncio.gather(*tasks))


def run_overload(stack: Stack, args) -> dict:
    pids = {name: p.popen.pid for name, p in stack.processes.items()}
    before = {name: peak_rss_mb(pid) for name, pid in pids.items()}
    async def measure_then_overload():  # capacity first, then 2x it, on one client event loop
        c = await capacity(stack.address)
        return c, await overload(stack.address, 2 * c, args.overload_s)

    c, outcomes = asyncio.run(measure_then_overload())
    time.sleep(2.0)
    after = {name: peak_rss_mb(pid) for name, pid in pids.items()}
    state = replica_state(stack)
    with Client(stack.address, max_retries=0, timeout=60) as client:
        served_after = len(client.generate("def after():", max_tokens=8, temperature=0).token_ids) == 8
    return {"capacity_req_s": c, "offered_req_s": 2 * c, "seconds": args.overload_s, "outcomes": dict(outcomes),
            "peak_rss_mb_before": before, "peak_rss_mb_after": after,
            "baseline_after": all(s == 0 and free == total for s, free, total in state.values()),
            "replicas_after": state, "served_after": served_after}


def run_fault(stack: Stack, fault: str, reference: dict[int, list[int]], args) -> dict:
    """`args.in_flight` requests at once; the fault lands 1 s in; meanwhile a probe sends a new request every
    0.2 s from the fault on, until one succeeds."""
    fault_at: list[float] = []
    first_ok: list[float] = []

    def probe():
        with Client(stack.address, max_retries=0, timeout=30) as client:
            while not first_ok and time.monotonic() - fault_at[0] < 60:
                try:
                    client.generate("def probe():", max_tokens=4, temperature=0)
                    first_ok.append(time.monotonic() - fault_at[0])
                except AdaSpecError:
                    time.sleep(0.2)

    def strike():
        time.sleep(1.0)
        if fault == "redis":
            stack.redis.crash()
        else:
            os.kill(stack.processes[fault].popen.pid, signal.SIGKILL)  # a crash: `supervise` restarts it
        fault_at.append(time.monotonic())
        prober = threading.Thread(target=probe)
        prober.start()
        if fault == "redis":
            time.sleep(REDIS_DOWN_S)
            stack.redis.restart()
        prober.join()

    async def load():
        async with AsyncClient(stack.address, max_retries=0) as client:
            striker = asyncio.create_task(asyncio.to_thread(strike))
            outcomes = await asyncio.gather(*(one(client, i) for i in range(args.in_flight)))
            await striker
            return outcomes

    results = dict(enumerate(asyncio.run(load())))
    restarted = None
    if fault != "redis":
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            stack.supervise()
            process = stack.processes[fault]
            if process.popen.poll() is None and process.restarts:
                try:
                    replica_state(stack)[fault]
                    restarted = time.monotonic() - fault_at[0]
                    break
                except grpc.RpcError:
                    pass  # still loading its model
            time.sleep(0.25)
    finished = {i: o for i, (status, o) in results.items() if status == "ok"}
    return {
        "fault": fault, "requests": len(results),
        "outcomes": dict(Counter(status for status, _ in results.values())),
        "resumed": sum(o.stats.verify_resumes > 0 for o in finished.values()),
        "ran_without_draft_at_end": sum(not o.stats.draft_replica for o in finished.values()),
        "identical_to_undisturbed": sum(list(o.token_ids) == reference[i] for i, o in finished.items()),
        "first_new_success_s": first_ok[0] if first_ok else None, "replica_back_s": restarted,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--overload-s", type=float, default=60.0)
    parser.add_argument("--in-flight", type=int, default=16)
    parser.add_argument("--profile", help="latency profile for the replicas")
    parser.add_argument("--out", type=Path, default=OUT_DIR / "faults.json")
    args = parser.parse_args()
    config = StackConfig(verify_replicas=2, draft_replicas=1, redis="spawn", profile=args.profile,
                         coordinator_args=["--ttl-s", "1.5"])
    results = {}
    with Stack(config) as stack:
        steps = tqdm(["overload", "reference", "verify-1", "draft-0", "redis"], desc="bench_faults")
        for step in steps:
            steps.set_postfix_str(step)
            if step == "overload":
                results["overload"] = run_overload(stack, args)
            elif step == "reference":
                with Client(stack.address, max_retries=0, timeout=120) as client:
                    reference = {i: list(client.generate(PROMPTS[i % len(PROMPTS)], max_tokens=MAX_TOKENS,
                                                         temperature=0, ignore_eos=True).token_ids)
                                 for i in range(args.in_flight)}
            else:
                results.setdefault("faults", []).append(run_fault(stack, step, reference, args))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=1, default=str))
    o = results["overload"]
    print(f"capacity {o['capacity_req_s']:.2f} req/s; offered {o['offered_req_s']:.2f} req/s for {o['seconds']:.0f} s: "
          f"{o['outcomes']}; back to baseline: {o['baseline_after']}; served after: {o['served_after']}")
    for name in o["peak_rss_mb_after"]:
        print(f"  peak RSS {name:<12} {o['peak_rss_mb_before'][name]:8.0f} -> {o['peak_rss_mb_after'][name]:8.0f} MB")
    for f in results["faults"]:
        print(f"{f['fault']:<9} {f['outcomes']} resumed {f['resumed']}, identical {f['identical_to_undisturbed']}"
              f"/{f['outcomes'].get('ok', 0)}, first new success after {f['first_new_success_s']} s, "
              f"replica back after {f['replica_back_s']} s")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
