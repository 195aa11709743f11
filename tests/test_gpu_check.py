"""`benchmarks/gpu_check.sh` runs only on a lent GPU machine, where a mistake costs scarce device time: here, its
syntax, its dry run, and that every file and benchmark flag it names exists."""

from __future__ import annotations

import importlib.util
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPTS = [ROOT / "benchmarks" / "gpu_check.sh", ROOT / "scripts" / "gpu_wheels.sh"]


@pytest.fixture(scope="module")
def dry_run(tmp_path_factory) -> list[str]:
    """The dry run's commands, one a line: `[part] timeout SECONDS COMMAND... > FILE`."""
    env = {**os.environ, "OUT": str(tmp_path_factory.mktemp("gpu"))}
    result = subprocess.run(["bash", str(SCRIPTS[0]), "--dry-run"], cwd=ROOT, env=env, capture_output=True,
                            text=True, check=True, timeout=30)
    return result.stdout.splitlines()


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
