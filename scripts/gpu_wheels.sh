#!/usr/bin/env bash
# Run here, before a device session: the wheels benchmarks/gpu_check.sh installs on the device machine, which
# cannot download anything (docs/benchmarking.md, "On a GPU"). They go to .whl/ (kept out of git by
# .git/info/exclude), emptied first so that each package has one version there: two would stop the install.
#
#   bash scripts/gpu_wheels.sh                     # what gpu_check.sh needs
#   bash scripts/gpu_wheels.sh NAME==VERSION ...   # those as well, for other work on the device
#
# What gpu_check.sh imports (the engine, the kernel tests and both benchmarks: torch, triton, transformers,
# tokenizers, safetensors, numpy, scipy, jinja2, tqdm, matplotlib, pytest) is all in the device image
# (/work/.library/device/KINDS.md); the services' dependencies (grpcio-*, opentelemetry-*, redis, fastapi, ...)
# are not imported on that path and stay behind. The one wheel it carries is setuptools, the backend of the
# offline editable install there, at the version that installs this project here: pyproject's SPDX `license`
# string needs setuptools >= 77, and the image's version is not known ahead.
set -euo pipefail
cd "$(dirname "$0")/.."

exclude=$(git rev-parse --git-path info/exclude)
grep -qxF '/.whl/' "$exclude" 2>/dev/null || echo '/.whl/' >>"$exclude"
rm -rf .whl
mkdir .whl

setuptools=$(python3 -c 'import setuptools; print(setuptools.__version__)')
# CPython 3.12 on x86-64 Linux, as the device's python3 (flags from /work/.library/device/README.md)
python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \
  --platform manylinux2014_x86_64 --platform manylinux1_x86_64 -d .whl "setuptools==$setuptools" "$@"

ls .whl
echo "$(du -sh .whl | cut -f1) in .whl/ (a device call carries at most 64 MiB with the working tree)"
