# Sourced by benchmarks/gpu_check.sh and benchmarks/gpu_serving.sh (docs/benchmarking.md, "On a GPU"): what both
# device calls share. The sourcing script sets DRY_RUN (1: print the commands, run nothing) and LOG (the file in
# $RESULTS that takes the parts' stderr); this sets RESULTS, a SCRATCH folder removed on exit, and defines `part`,
# `install_checkout`, `parts_table` and `section`.
cd "$(dirname "${BASH_SOURCE[0]}")/.."

RESULTS=${OUT:-benchmarks/results/gpu}
SCRATCH=$(mktemp -d)  # what the parts print but only the summary keeps (a device call brings back 8 files)
trap 'rm -rf "$SCRATCH"' EXIT
export PYTHONUNBUFFERED=1
SUMMARY_ROWS=()
FAILED=0

((DRY_RUN)) || { mkdir -p "$RESULTS" && : >"$RESULTS/$LOG"; }

# part NAME SECONDS OUTFILE COMMAND...: COMMAND under a timeout, its stdout to OUTFILE and its stderr to $LOG
part() {
  local name=$1 seconds=$2 outfile=$3 status=0 start=$SECONDS outcome
  shift 3
  if ((DRY_RUN)); then
    echo "[$name] timeout $seconds $(printf '%q ' "$@")> $outfile"
    return
  fi
  echo "== $name (at most ${seconds} s): $*" | tee -a "$RESULTS/$LOG"
  timeout --kill-after=10 "$seconds" "$@" >"$outfile" 2>>"$RESULTS/$LOG" || status=$?
  case $status in
    0) outcome=ok ;;
    124 | 137) outcome="timed out after ${seconds} s" ;;
    *) outcome="failed (exit $status)" ;;
  esac
  ((status == 0)) || FAILED=1
  SUMMARY_ROWS+=("| $name | $outcome | $((SECONDS - start)) |")
  echo "== $name: $outcome in $((SECONDS - start)) s"
}

# The carried wheels (scripts/gpu_wheels.sh) into /tmp/site, ahead of the image's packages on PYTHONPATH (which
# every process started from here inherits), then the checkout itself
install_checkout() {
  if compgen -G ".whl/*.whl" >/dev/null; then
    part wheels 30 "$SCRATCH/wheels.txt" python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir \
      --upgrade --target /tmp/site .whl/*.whl
    export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
  fi
  # Editable, so that `adaspec.kernels` maps to kernels/ (pyproject's package-dir); offline: no index, no build env
  part install 40 "$SCRATCH/install.txt" python3 -m pip install -q --no-index --no-deps --no-build-isolation -e .
}

parts_table() {
  printf '\n| part | status | seconds |\n| --- | --- | --- |\n'
  printf '%s\n' "${SUMMARY_ROWS[@]}"
}

section() {  # section TITLE FILE: FILE in a fenced block, or a note that the part left nothing
  printf '\n## %s\n\n```text\n' "$1"
  if [[ -s $2 ]]; then cat "$2"; else echo "(no output: see $LOG)"; fi
  printf '```\n'
}
