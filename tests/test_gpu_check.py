"""`benchmarks/gpu_check.sh` and `benchmarks/gpu_serving.sh` run only on a lent GPU machine, where a mistake costs
scarce device time: here, their syntax, their dry runs, and that every file and benchmark flag they name exists."""

from __future__ import annotations

import importlib.util
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPTS = [ROOT / "benchmarks" / name for name in ("gpu_check.sh", "gpu_serving.sh", "gpu_common.sh")]
SCRIPTS.append(ROOT / "scripts" / "gpu_wheels.sh")


def dry_run_of(script: Path, tmp_path: Path, *args: str, **env: str) -> list[str]:
    """The dry run's commands, one a line: `[part] timeout SECONDS COMMAND... > FILE`."""
    result = subprocess.run(["bash", str(script), "--dry-run", *args], cwd=ROOT,
                            env={**os.environ, "OUT": str(tmp_path), **env}, capture_output=True, text=True,
                            check=True, timeout=30)
    return result.stdout.splitlines()


@pytest.fixture(scope="module")
def dry_run(tmp_path_factory) -> list[str]:
    return dry_run_of(SCRIPTS[0], tmp_path_factory.mktemp("gpu"))


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda path: path.name)
def test_syntax(script):
    subprocess.run(["bash", "-n", str(script)], check=True)


def test_dry_run_names_existing_files(dry_run):
    parts = [line.split("]")[0].lstrip("[") for line in dry_run]
    assert parts[-4:] == ["kernel_tests", "kernels", "engine", "summary"]
    named = {token for line in dry_run for token in line.split() if token.endswith(".py")}
    assert {"tests/test_kernels_triton.py", "benchmarks/bench_kernels.py", "benchmarks/bench_engine.py"} <= named
    assert [path for path in named if not (ROOT / path).is_file()] == []


def test_benchmark_flags_are_accepted(dry_run, monkeypatch, capsys):
    """Each benchmark's main() with the dry run's arguments and --help last: argparse converts and checks the
    values of the flags before it (then --help exits) and its help names every flag (an unknown one would only
    fail at the end). In this process, where transformers is already imported: a subprocess takes seconds."""
    runs = {}
    for line in dry_run:
        tokens = line.split()
        script = next((token for token in tokens if re.fullmatch(r"benchmarks/bench_\w+\.py", token)), None)
        if script:
            runs[script] = tokens[tokens.index(script) + 1 : tokens.index(">")]
    assert sorted(runs) == ["benchmarks/bench_engine.py", "benchmarks/bench_kernels.py"]
    for script, args in runs.items():
        spec = importlib.util.spec_from_file_location(Path(script).stem, ROOT / script)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        monkeypatch.setattr(sys, "argv", [script, *args, "--help"])
        with pytest.raises(SystemExit) as exit_:
            module.main()
        out, err = capsys.readouterr()
        assert exit_.value.code == 0, f"{script}: {err}"
        flags = [arg for arg in args if arg.startswith("--")]
        assert [flag for flag in flags if not re.search(rf"(?<![\w-]){flag}(?![\w-])", out)] == [], script


def bench_argv(dry_run: list[str]) -> list[str]:
    """`adaspec bench`'s arguments in a gpu_serving.sh dry run."""
    tokens = shlex.split(next(line for line in dry_run if line.startswith("[bench]")))
    return tokens[tokens.index("adaspec.cli") + 1 : tokens.index(">")]


def test_serving_dry_run(tmp_path):
    lines = dry_run_of(SCRIPTS[1], tmp_path, GPU_SERVING_SMOKE="0")
    parts = [line.split("]")[0].lstrip("[") for line in lines]
    assert parts[-5:] == ["env", "bench", "targets", "services", "summary"]
    named = {token for line in lines for token in line.split() if token.endswith(".py")}
    assert named == {"benchmarks/check_targets.py"} and (ROOT / "benchmarks" / "check_targets.py").is_file()
    written = {Path(token).name for line in lines for token in shlex.split(line.replace(">", " ")) if
               token.startswith(str(tmp_path))}
    assert written <= {"serving.json", "serving-env.txt", "serving-services.txt", "serving-summary.md"}
    assert "serving.json" in written
    argv = bench_argv(lines)
    assert argv[0] == "bench" and "--replica-args=--cuda-graphs" in argv
    assert argv[argv.index("--policies") + 1] == "none,fixed:2,fixed:4,goodput,adaspec"
    assert "--replica-args=" in bench_argv(dry_run_of(SCRIPTS[1], tmp_path, "--no-cuda-graphs", GPU_SERVING_SMOKE="0"))


@pytest.mark.parametrize("smoke", ["0", "1"])
def test_serving_bench_flags_are_accepted(smoke, tmp_path, monkeypatch):
    """The bench's command line through `adaspec`'s own parser and the bench's checks, up to the stack it starts,
    whose configuration shows what the replicas get (stopped there: nothing starts)."""
    from adaspec.cli import main

    configs = []

    class Started(Exception):
        pass

    def stack(config):
        configs.append(config)
        raise Started

    monkeypatch.setattr("adaspec.stack.Stack", stack)
    with pytest.raises(Started):
        main(bench_argv(dry_run_of(SCRIPTS[1], tmp_path, GPU_SERVING_SMOKE=smoke)))
    replica_args = ["--device", "cpu", "--engine-core", "process"] if smoke == "1" else ["--cuda-graphs"]
    assert configs[0].verify_args == configs[0].draft_args == replica_args
