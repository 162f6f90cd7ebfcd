#!/usr/bin/env bash
# The whole CUDA side in one command, on a machine with one CUDA device and the project installed:
#
#   scripts/gpu_check.sh              # or: make gpu-check
#   scripts/gpu_check.sh --dry-run    # list what would run (no GPU needed; the test suite runs this)
#   scripts/gpu_check.sh --only parity,train    # some stages; --skip tests skips some
#
# Stages (scripts/gpu_check.py <stage>; every figure is one JSON line on stdout, progress on stderr):
#   info        torch / CUDA / GPU, NATTEN (and whether it has its CUDA library libnatten), flex
#   tests       every gpu-marked test (pytest -m gpu)
#   parity      NA forward+backward of the natten and flex backends against the torch backend at 64^2 and
#               128^2: float32 and bfloat16, with and without RPB (and fp32 RPB with bf16 q), strided and
#               contiguous q, the paper's head groups; tolerances per dtype in the records
#   train       20 steps of the 256 model at batch 4, fp32+TF32 and train.amp=bf16: finite, decreasing
#               D loss; the first step's time (every compile included) and the median step
#   throughput  the reference protocol (scripts/benchmark.py generator: batch 1, 10 + 500 calls),
#               fp32+TF32 and bf16
# The last line is {"check": "summary", ...}; the exit status is 0 only when every stage passed. Budget:
# under 8 minutes on an H100 (each stage reports its seconds).
set -euo pipefail

cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-}"
if [[ -z "$PYTHON" ]]; then
    if [[ -x .venv/bin/python ]]; then PYTHON=.venv/bin/python; else PYTHON=python3; fi
fi

STAGES=(info tests parity train throughput)
DRY_RUN=0
ONLY=""
SKIP=""
while [[ $# -gt 0 ]]; do
    case "$1" in
        --dry-run) DRY_RUN=1 ;;
        --only) ONLY="$2"; shift ;;
        --skip) SKIP="$2"; shift ;;
        -h|--help) sed -n '2,21p' "$0"; exit 0 ;;
        *) echo "gpu_check.sh: unknown argument $1 (see --help)" >&2; exit 2 ;;
    esac
    shift
done

selected() {
    local stage="$1"
    if [[ -n "$ONLY" && ",$ONLY," != *",$stage,"* ]]; then return 1; fi
    if [[ -n "$SKIP" && ",$SKIP," == *",$stage,"* ]]; then return 1; fi
    return 0
}

for stage in ${ONLY//,/ } ${SKIP//,/ }; do
    if [[ " ${STAGES[*]} " != *" $stage "* ]]; then
        echo "gpu_check.sh: unknown stage $stage (stages: ${STAGES[*]})" >&2
        exit 2
    fi
done

if [[ $DRY_RUN -eq 0 ]] && ! "$PYTHON" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)"; then
    echo "gpu_check.sh: no CUDA device is visible to $PYTHON (use --dry-run to list the checks)" >&2
    exit 1
fi

declare -A RESULTS=()
FAILED=0
START=$SECONDS
for stage in "${STAGES[@]}"; do
    selected "$stage" || continue
    cmd=("$PYTHON" scripts/gpu_check.py "$stage")
    [[ $DRY_RUN -eq 1 ]] && cmd+=(--dry-run)
    echo "gpu_check.sh: ${cmd[*]}" >&2
    t0=$SECONDS
    if "${cmd[@]}"; then rc=0; else rc=$?; FAILED=1; fi
    RESULTS[$stage]="{\"rc\": $rc, \"seconds\": $((SECONDS - t0))}"
done

summary=""
for stage in "${STAGES[@]}"; do
    [[ -n "${RESULTS[$stage]:-}" ]] || continue
    summary+="${summary:+, }\"$stage\": ${RESULTS[$stage]}"
done
pass=$([[ $FAILED -eq 0 ]] && echo true || echo false)
dry=$([[ $DRY_RUN -eq 1 ]] && echo true || echo false)
echo "{\"check\": \"summary\", \"dry_run\": $dry, \"stages\": {$summary}, \"seconds\": $((SECONDS - START)), \"pass\": $pass}"
exit $FAILED
