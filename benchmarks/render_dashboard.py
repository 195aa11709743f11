"""The provisioned Grafana dashboard, drawn from a real run's scrapes.

    python benchmarks/render_dashboard.py       # about 3 minutes on 2 cores; writes docs/images/dashboard.png

A local stack (coordinator, one verify and one draft replica, the bundled pair) runs with metrics on; a
workload of Poisson arrivals (a low rate, a burst, a low rate again; policies `adaspec`, `fixed:3` and `none`
in turn, one SLO for all) goes through the SDK while every service's Prometheus endpoint is scraped every
`--scrape-s`. Each panel of deploy/grafana/dashboards/adaspec.json is then drawn where its `gridPos` puts it,
from its own queries evaluated over those scrapes (`promql_subset.py`; `$__rate_interval` is four scrape
intervals, Grafana's default for it, and `$__range` the whole run). No number is made up: no scrape, no point.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import random
import re
import threading
import time
import urllib.request
from pathlib import Path

import matplotlib.pyplot as plt
from matplotlib.gridspec import GridSpec
from prometheus_client.parser import text_string_to_metric_families
from promql_subset import Labels, Scrapes, evaluate  # the script directory is on sys.path

from adaspec import AsyncClient
from adaspec.errors import AdaSpecError
from adaspec.stack import Stack, StackConfig

ROOT = Path(__file__).resolve().parents[1]
DASHBOARD = ROOT / "deploy" / "grafana" / "dashboards" / "adaspec.json"
OUTPUT = ROOT / "docs" / "images" / "dashboard.png"
SERVICES = ("coordinator", "verify-0", "draft-0")
POLICIES = ("adaspec", "fixed:3", "none")
PROMPTS = ["def fib(n):", "import os\n", "class Stack:", "for i in range(", "def parse(text):", "# utils\n",
           "async def main():", "x = [", "def __init__(self", "while True:", "try:\n", "return {"]
SLO = {"ttft_ms": 1500.0, "tpot_ms": 120.0}
UNITS = {"s": ("s", 1.0), "percentunit": ("%", 100.0), "reqps": ("req/s", 1.0), "short": ("", 1.0)}


def phases(duration_s: float, rate: float) -> list[tuple[float, float]]:
    """(end time, arrival rate): a low rate, a burst at three times it, the low rate again."""
    return [(duration_s * 0.35, rate), (duration_s * 0.65, rate * 3), (duration_s, rate)]


async def workload(address: str, duration_s: float, rate: float, seed: int) -> dict[str, int]:
    """Send requests until `duration_s`; returns how many finished and how many were refused or failed."""
    rng, outcome, tasks = random.Random(seed), {"finished": 0, "failed": 0}, []
    start = time.monotonic()

    async def one(client: AsyncClient, i: int) -> None:
        try:
            await client.generate(rng.choice(PROMPTS), max_tokens=rng.randint(16, 64), temperature=0,
                                  ignore_eos=True, policy=POLICIES[i % len(POLICIES)], **SLO)
            outcome["finished"] += 1
        except AdaSpecError:
            outcome["failed"] += 1

    async with AsyncClient(address, timeout=120) as client:
        for end_s, phase_rate in phases(duration_s, rate):
            while (now := time.monotonic() - start) < end_s:
                tasks.append(asyncio.create_task(one(client, len(tasks))))
                await asyncio.sleep(min(rng.expovariate(phase_rate), end_s - now))
        await asyncio.gather(*tasks)
    return outcome


def scrape(stack: Stack, urls: dict[str, str]) -> dict[tuple[str, Labels], float]:
    """Every sample of every service now, labelled with its `instance` as Prometheus labels its targets."""
    samples = {}
    for name, url in urls.items():
        with urllib.request.urlopen(url, timeout=10) as reply:
            text = reply.read().decode()
        for family in text_string_to_metric_families(text):
            for s in family.samples:
                samples[(s.name, Labels({**s.labels, "instance": name}.items()))] = s.value
    return samples


def run(args) -> tuple[Scrapes, dict[str, int]]:
    config = StackConfig(metrics=True, profile=args.profile)
    with Stack(config) as stack:
        urls = {name: stack.metrics_url(name) for name in SERVICES}
        times, samples, outcome = [], [], {}
        worker = threading.Thread(target=lambda: outcome.update(
            asyncio.run(workload(stack.address, args.duration_s, args.rate, args.seed))))
        start, after_last = time.monotonic(), 0
        samples.append(scrape(stack, urls))  # before the first request
        times.append(0.0)
        worker.start()
        while worker.is_alive() or after_last < 4:  # four more once the requests end: the rates fall back
            time.sleep(max(0.0, start + len(times) * args.scrape_s - time.monotonic()))
            times.append(time.monotonic() - start)
            samples.append(scrape(stack, urls))
            after_last += not worker.is_alive()
        worker.join()
    return Scrapes(times, samples, rate_interval_s=4 * args.scrape_s), outcome


def legend(template: str, labels: Labels) -> str:
    values = dict(labels)
    return re.sub(r"\{\{\s*(\w+)\s*\}\}", lambda m: values.get(m.group(1), ""), template)


def draw_panel(ax, panel: dict, scrapes: Scrapes) -> None:
    unit, scale = UNITS.get(panel.get("fieldConfig", {}).get("defaults", {}).get("unit", "short"), ("", 1.0))
    ax.set_title(panel["title"], fontsize=10, loc="left")
    if panel["type"] == "stat":
        (target,) = panel["targets"]
        value = evaluate(target["expr"], scrapes, len(scrapes.times) - 1)
        text = "\n".join(f"{v * scale:.1f}{unit}" for v in value.values() if not math.isnan(v)) or "no data"
        ax.text(0.5, 0.5, text, ha="center", va="center", fontsize=28, color="tab:green")
        ax.set_axis_off()
        return
    for target in panel["targets"]:
        lines: dict[Labels, list[float]] = {}
        for at in range(len(scrapes.times)):
            for labels, value in evaluate(target["expr"], scrapes, at).items():
                lines.setdefault(labels, [math.nan] * len(scrapes.times))[at] = value * scale
        for labels, values in sorted(lines.items(), key=lambda item: sorted(item[0])):
            ax.plot(scrapes.times, values, label=legend(target.get("legendFormat", ""), labels), linewidth=1.2)
    ax.set_ylabel(unit, fontsize=8)
    ax.tick_params(labelsize=7)
    ax.grid(alpha=0.3)
    if ax.lines:
        ax.legend(fontsize=6, loc="upper left", ncol=2)
    else:
        ax.text(0.5, 0.5, "no data", ha="center", va="center", transform=ax.transAxes)


def draw(scrapes: Scrapes, outcome: dict[str, int], args, output: Path) -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    panels = dashboard["panels"]
    height = max(p["gridPos"]["y"] + p["gridPos"]["h"] for p in panels)
    fig = plt.figure(figsize=(18, height * 0.42))
    grid = GridSpec(height, 24, figure=fig, hspace=0.0, wspace=2.5, top=0.95, bottom=0.03, left=0.04, right=0.99)
    for panel in panels:
        g = panel["gridPos"]
        if panel["type"] == "row":
            ax = fig.add_subplot(grid[g["y"], :])
            ax.set_axis_off()
            ax.text(0, 0.2, panel["title"], fontsize=12, fontweight="bold")
            continue
        # a panel's top unit holds its title, as Grafana's panel header does
        ax = fig.add_subplot(grid[g["y"] + 1:g["y"] + g["h"] - 1, g["x"]:g["x"] + g["w"]])
        draw_panel(ax, panel, scrapes)
        if g["y"] + g["h"] == height:
            ax.set_xlabel("seconds into the run", fontsize=8)
    fig.suptitle(f"{dashboard['title']} (deploy/grafana/dashboards/adaspec.json), from a real run's scrapes\n"
                 f"{outcome.get('finished', 0)} requests ({outcome.get('failed', 0)} refused or failed) over "
                 f"{args.duration_s:.0f} s, Poisson {args.rate:g} → {args.rate * 3:g} → {args.rate:g} req/s, "
                 f"policies {', '.join(POLICIES)}; bundled pair on CPU; a scrape every {args.scrape_s:g} s",
                 fontsize=11)
    output.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(output, dpi=80, bbox_inches="tight")
    print(f"wrote {output}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--duration-s", type=float, default=150.0, help="how long requests keep arriving")
    parser.add_argument("--rate", type=float, default=0.6, help="arrivals per second outside the burst")
    parser.add_argument("--scrape-s", type=float, default=2.5)
    parser.add_argument("--profile", help="a latency profile for the replicas (default: each measures one)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--output", type=Path, default=OUTPUT)
    args = parser.parse_args()
    scrapes, outcome = run(args)
    draw(scrapes, outcome, args, args.output)


if __name__ == "__main__":
    main()
