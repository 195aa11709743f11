"""The install puts one top-level name in site-packages, `adaspec`: the root folders `kernels/` and
`services/` install as `adaspec.kernels` and `adaspec.services` (pyproject's package mapping)."""
import re
import shutil
import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
MAPPED = {"kernels": "adaspec.kernels", "services": "adaspec.services"}


def package_folders() -> set[str]:
    names = set()
    for init in ROOT.glob("**/__init__.py"):
        parts = init.parent.relative_to(ROOT).parts
        if parts and parts[0] in ("adaspec", *MAPPED):
            head = MAPPED.get(parts[0], parts[0])
            names.add(".".join((head, *parts[1:])))
    return names


def test_the_package_list_is_every_package_folder():
    setuptools = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    assert set(setuptools["packages"]) == package_folders()
    assert setuptools["package-dir"] == {name: folder for folder, name in MAPPED.items()}


def test_no_source_imports_the_root_folders_by_their_own_names():
    pattern = re.compile(r"^\s*(from|import) (kernels|services)\b", re.MULTILINE)
    offenders = [str(path.relative_to(ROOT)) for folder in ("adaspec", "kernels", "services", "tests", "benchmarks")
                 for path in (ROOT / folder).rglob("*.py") if pattern.search(path.read_text())]
    assert offenders == []


def test_the_wheel_has_one_top_level_name(tmp_path):
    source = tmp_path / "source"  # a copy: a build in place would leave build/ in the checkout
    source.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, source / name)
    for folder in ("adaspec", *MAPPED):
        shutil.copytree(ROOT / folder, source / folder, ignore=shutil.ignore_patterns("__pycache__"))
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation",
                    "-w", str(tmp_path), str(source)], check=True, capture_output=True)
    (wheel,) = tmp_path.glob("adaspec-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert {name.split("/")[0] for name in names if not name.split("/")[0].endswith(".dist-info")} == {"adaspec"}
    assert "adaspec/kernels/rejection_sampler_ref.py" in names
    assert "adaspec/services/verify/service.py" in names
