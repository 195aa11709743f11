#!/usr/bin/env bash
# A device session's serving benchmark in one call (docs/benchmarking.md, "On a GPU"), the second after
# benchmarks/gpu_check.sh: `adaspec bench` on the Azure code trace against a stack it starts on the GPU (one verify
# and one draft replica with CUDA graphs, the bundled tiny pair), every policy of issue 12's comparison at light
# load to past saturation, then benchmarks/check_targets.py on the results. Sized to end within 5 minutes.
#
#   bash benchmarks/gpu_serving.sh                     # on the device machine (carry .whl and .gpu-data)
#   bash benchmarks/gpu_serving.sh --no-cuda-graphs    # replicas without graphs (if gpu_check.sh's engine part
#                                                      # found them broken)
#   bash benchmarks/gpu_serving.sh --dry-run           # anywhere: print the commands, run nothing
#   GPU_SERVING_SMOKE=1 bash benchmarks/gpu_serving.sh # on a CPU, in seconds: 2 policies, 1 rate, 4 requests,
#                                                      # replicas on the CPU: that every process's imports resolve
#
# Writes to ${OUT:-benchmarks/results/gpu}, one folder, beside gpu_check.sh's files and at most 7 of its own:
# serving.json / .md / .png (the bench's results, tables and plot), serving-env.txt (GPU, versions and where each
# package came from), serving-summary.md (each part's status, the bench's tables and errors, the targets),
# serving-log.txt (the parts' stderr: stack start, progress, tracebacks) and, if the bench failed,
# serving-services.txt (the end of each service's log). Each part runs under its own `timeout`; the exit status is
# 1 if any part failed.
set -euo pipefail

DRY_RUN=0
REPLICA_ARGS=--cuda-graphs
for arg in "$@"; do
  case $arg in
    --dry-run) DRY_RUN=1 ;;
    --no-cuda-graphs) REPLICA_ARGS= ;;
    *) echo "usage: $0 [--dry-run] [--no-cuda-graphs]" >&2; exit 2 ;;
  esac
done

LOG=serving-log.txt
source "$(dirname "$0")/gpu_common.sh"  # RESULTS, SCRATCH, part, install_checkout, parts_table, section

# The trace travels in .gpu-data (scripts/gpu_wheels.sh); without it azure-code would quietly be a synthetic window
export ADASPEC_TRACES_DIR=$PWD/.gpu-data/traces
if ((!DRY_RUN)) && [[ ! -f $ADASPEC_TRACES_DIR/azure_llm_2023_code.csv ]]; then
  echo "no $ADASPEC_TRACES_DIR/azure_llm_2023_code.csv: run scripts/gpu_wheels.sh here and carry .gpu-data" >&2
  exit 2
fi

# Rates: a decode step of the tiny pair on the H200 takes a few ms and a request of the trace's 16-128 output tokens
# should last well under a second alone, so 4 req/s keeps a few requests in flight (light load), 16 req/s about ten
# (batching pays, the service path is busy), and 64 req/s sends the 60 requests within a second, past what the
# coordinator's per-step messages and the replicas' batches keep up with (saturation). 60 requests per (policy,
# rate) give medians from many and a p99 between the two slowest; their arrivals alone take 5 x 59 x (1/4 + 1/16 +
# 1/64) = 97 s, which leaves the bench's 210 s room for the stack's start (CUDA graphs captured) and the drains.
# The window (--trace-start 875.2, of median burstiness) and the warm-ups are those of
# docs/adaptive-speculation-results.md. SLO: TTFT 1 s and TPOT 20 ms, by the rule of those CPU runs' 2 s / 40 ms:
# `none` should meet it at light load with room to spare, and it binds past saturation; goodput counts the same
# limits (vLLM's --goodput), and the JSON's per-request records allow others afterwards. A request stuck past
# saturation ends at 60 s, inside the part's time.
POLICIES=none,fixed:2,fixed:4,goodput,adaspec
RATES=(4 16 64)
REQUESTS=60
WARMUPS=4
if [[ ${GPU_SERVING_SMOKE:-0} == 1 ]]; then
  # the engine in a process of its own, as on a GPU (on a CPU it steps in a thread of the service by default)
  POLICIES=none,adaspec RATES=(4) REQUESTS=4 WARMUPS=1 REPLICA_ARGS="--device cpu --engine-core process"
fi

install_checkout

# the GPU (or its absence) in the first line, then the versions that matter and where each is installed: /tmp/site
# for the carried wheels, the image's site-packages otherwise
part env 10 "$RESULTS/serving-env.txt" bash -c '
  nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader 2>/dev/null || echo "no GPU"
  python3 -m pip list -v 2>/dev/null |
    grep -iE "^(torch|triton|transformers|grpcio[a-z-]*|protobuf|opentelemetry-sdk|cryptography|redis|adaspec) "'

# `adaspec bench` starts verify, draft and coordinator processes on loopback (its stack), runs every (policy, rate)
# interleaved, and stops them; their logs go to the scratch folder, kept only if the bench fails. Its progress bar
# redraws at most every 10 s (tqdm's TQDM_* defaults): the log is a file, not a terminal.
services=$SCRATCH/services
# an earlier run's results (where OUT is not emptied between runs) would pass for this one's
((DRY_RUN)) || rm -f "$RESULTS/serving.json" "$RESULTS/serving-services.txt"
part bench 210 "$SCRATCH/bench.txt" env TQDM_MININTERVAL=10 python3 -m adaspec.cli bench \
  --replica-args="$REPLICA_ARGS" --log-dir "$services" \
  --trace azure-code --trace-start 875.2 --request-rate "${RATES[@]}" --policies "$POLICIES" \
  --num-requests "$REQUESTS" --warmup-requests "$WARMUPS" --rounds 1 --request-timeout 60 \
  --slo-ttft-ms 1000 --slo-tpot-ms 20 --goodput ttft:1000 tpot:20 --output-json "$RESULTS/serving.json"

if ((DRY_RUN)) || [[ -s $RESULTS/serving.json ]]; then
  part targets 10 "$SCRATCH/targets.txt" python3 benchmarks/check_targets.py "$RESULTS/serving.json"
fi

if ((DRY_RUN)); then
  echo "[services] tail $services/*.log > $RESULTS/serving-services.txt (if the bench failed)"
  echo "[summary] > $RESULTS/serving-summary.md"
  exit 0
fi

if [[ ! -s $RESULTS/serving.json ]]; then  # the bench failed: why, from the services' side
  tail -n 40 "$services"/*.log >"$RESULTS/serving-services.txt" 2>&1 || true
fi
{
  echo "# Serving benchmark on a GPU, $(date -u '+%Y-%m-%d %H:%M UTC')"
  echo
  echo "GPU (name, driver, memory): $(head -n 1 "$RESULTS/serving-env.txt")"
  echo
  echo "Replica arguments: \`${REPLICA_ARGS:-(none)}\`; policies $POLICIES; ${RATES[*]} req/s; $REQUESTS requests each"
  parts_table
  section "adaspec bench" "$SCRATCH/bench.txt"
  section "Issue 12's targets (benchmarks/check_targets.py)" "$SCRATCH/targets.txt"
} >"$RESULTS/serving-summary.md"
cat "$RESULTS/serving-summary.md"
exit "$FAILED"
