#!/usr/bin/env bash
# A device session's GPU checks in one call (docs/benchmarking.md, "On a GPU"): the Triton kernel tests compiled
# on CUDA, bench_kernels.py, and bench_engine.py with and without CUDA graphs, sized to end within 8 minutes.
#
#   bash benchmarks/gpu_check.sh                       # on the device machine, from anywhere in the repository
#   bash benchmarks/gpu_check.sh kernel_tests engine   # only those parts (a rerun on what device time is left)
#   bash benchmarks/gpu_check.sh --dry-run             # anywhere: print the commands, run nothing
#
# Writes to ${OUT:-benchmarks/results/gpu}, one folder, 8 files (as many as a device call brings back):
# env.txt, kernel_tests.txt, kernels.json, kernels.png, engine.json, engine.png, summary.md (each part's status
# and the tables) and log.txt (what the parts wrote to stderr: progress, warnings, tracebacks). Each part runs
# under its own `timeout` and a failed part does not stop the next; the exit status is 1 if any part failed.
set -euo pipefail

DRY_RUN=0
PARTS=()
for arg in "$@"; do
  case $arg in
    --dry-run) DRY_RUN=1 ;;
    kernel_tests | kernels | engine) PARTS+=("$arg") ;;
    *) echo "usage: $0 [--dry-run] [kernel_tests] [kernels] [engine]" >&2; exit 2 ;;
  esac
done
((${#PARTS[@]})) || PARTS=(kernel_tests kernels engine)

LOG=log.txt
source "$(dirname "$0")/gpu_common.sh"  # RESULTS, SCRATCH, part, install_checkout, parts_table, section

wanted() { [[ " ${PARTS[*]} " == *" $1 "* ]]; }

# Of what these parts import, the device image lacks only setuptools (the editable install's backend); the other
# wheels scripts/gpu_wheels.sh carries are gpu_serving.sh's (the services'), installed here too but not imported.
install_checkout

# the GPU in the first line (summary.md), then the driver, torch's own report and the versions torch omits
part env 20 "$RESULTS/env.txt" bash -c 'nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
  nvidia-smi; python3 -m torch.utils.collect_env
  python3 -m pip list 2>/dev/null | grep -iE "^(transformers|tokenizers|safetensors|setuptools) "'

if wanted kernel_tests; then
  # the tests compile dozens of kernel variants: workers compile them side by side where pytest-xdist is there
  workers=()
  if python3 -c "import xdist" 2>/dev/null; then workers=(-n 4); fi
  part kernel_tests 120 "$RESULTS/kernel_tests.txt" env ADASPEC_TEST_DEVICE=cuda python3 -m pytest -q \
    -p no:cacheprovider "${workers[@]}" tests/test_kernels_triton.py
fi
if wanted kernels; then
  # two vocabularies (Llama-2's, Qwen2's padded one) and the issue's large batches, both kernels and references
  part kernels 100 "$SCRATCH/kernels.txt" python3 benchmarks/bench_kernels.py --vocab 32000 152064 \
    --batch 1 8 64 256 --k 1 4 --out "$RESULTS/kernels.json"
fi
if wanted engine; then
  part engine 170 "$SCRATCH/engine.txt" python3 benchmarks/bench_engine.py --device cuda --cuda-graphs both \
    --rounds 3 --max-k 4 --batches 1 8 --batch1-prompts 2 --new-tokens 128 --out "$RESULTS/engine.json"
fi

if ((DRY_RUN)); then
  echo "[summary] > $RESULTS/summary.md"
  exit 0
fi

{
  echo "# GPU check, $(date -u '+%Y-%m-%d %H:%M UTC')"
  echo
  echo "GPU (name, driver, memory): $(head -n 1 "$RESULTS/env.txt")"
  parts_table
  if wanted kernel_tests; then
    # pytest's list of what failed and why (-ra, from pyproject) down to its count, or the count alone
    tests="$RESULTS/kernel_tests.txt"
    sed -n '/short test summary info/,$p' "$tests" >"$SCRATCH/tests_summary.txt" 2>/dev/null || true
    [[ -s $SCRATCH/tests_summary.txt ]] || tail -n 1 "$tests" >"$SCRATCH/tests_summary.txt" 2>/dev/null || true
    section "Kernel tests on CUDA (tests/test_kernels_triton.py)" "$SCRATCH/tests_summary.txt"
  fi
  if wanted kernels; then section "Kernels (bench_kernels.py)" "$SCRATCH/kernels.txt"; fi
  if wanted engine; then section "Engine (bench_engine.py, bundled pair)" "$SCRATCH/engine.txt"; fi
} >"$RESULTS/summary.md"
cat "$RESULTS/summary.md"
exit "$FAILED"
