#!/usr/bin/env bash
# One-command GPU check: bench perf + short real runs of dense, vanilla_lowrank, robust_lowrank and
# pruning on a CIFAR-10 subset, AutoAttack on the 1,000 test points, then `bench show`.
#
#   python benchmarks/gpu_check/prepare.py     # here, with internet: writes gpu_payload/ (git-ignored)
#   benchmarks/gpu_check/run.sh                # on the GPU machine, from the repository root (carry gpu_payload)
#   benchmarks/gpu_check/run.sh --smoke        # the same script on the CPU at tiny sizes (about a minute)
#
# Options: --smoke, --payload DIR (default gpu_payload; in --smoke mode a fresh tiny one under the
# results folder), --results-dir DIR (default $OUT/gpu_check when $OUT is set, else <payload>/gpu_check),
# --budget S (total seconds, default 450 on the GPU, 240 with --smoke).
#
# Every stage runs under `timeout` with its own limit, capped by what is left of the total budget
# (a stage that would start with under 5 s left is skipped), so one slow stage cannot eat the rest.
# Expected times on one H100/H200 (estimates from REFERENCE.md: a dense VGG16 step at batch 128 is
# about 8.5 ms; AutoAttack standard on 1,000 CIFAR-10 points about 40 s for a trained VGG16):
#   gpu info 5 s (limit 30) | install 10-20 s (limit 90) | bench perf 50-110 s (limit 180) |
#   condlr step (the CondLR step and its stages with conditioner eigh and newton_schulz,
#   benchmarks/condlr_step.py --conditioner both) 15-30 s (limit 60) | condlr step cuda graph (the step
#   replayed from a CUDA graph against the eager one, --cuda-graph) 10-20 s (limit 45); bench perf has
#   robust_lowrank twice, eager and replayed from a CUDA graph (--cuda-graph)
#   each run: 5 epochs of 11,250 images (or 25 s, first reached) + evaluation with AutoAttack on
#   1,000 points, 40-80 s (limit 100) | bench show 5 s (limit 30). Total about 4-7 min; the cap is 450 s
#   (stages that would overrun it are cut short or skipped; the runs come last).
# The GPU machine has no internet: every pip call is --no-index.
set -u -o pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
cd "$REPO"

SMOKE=0
PAYLOAD=""
RESULTS=""
BUDGET=""
while (($#)); do
  case "$1" in
    --smoke) SMOKE=1 ;;
    --payload) PAYLOAD="$2"; shift ;;
    --results-dir) RESULTS="$2"; shift ;;
    --budget) BUDGET="$2"; shift ;;
    -h|--help) sed -n '2,25p' "$0"; exit 0 ;;
    *) echo "unknown option: $1 (see --help)" >&2; exit 2 ;;
  esac
  shift
done

PY="${PYTHON:-}"
if [[ -z "$PY" ]]; then PY="$(command -v python3 || command -v python)"; fi
export PYTHONPATH="$REPO${PYTHONPATH:+:$PYTHONPATH}"   # works with or without the editable install
BENCH=("$PY" -m bench.cli)

if ((SMOKE)); then
  RESULTS="${RESULTS:-$REPO/gpu_payload/gpu_check_smoke}"
  PAYLOAD="${PAYLOAD:-$RESULTS/payload}"
  BUDGET="${BUDGET:-240}"
else
  PAYLOAD="${PAYLOAD:-gpu_payload}"
  RESULTS="${RESULTS:-${OUT:-$PAYLOAD}/gpu_check}"
  BUDGET="${BUDGET:-450}"
fi
mkdir -p "$RESULTS"
RES="$RESULTS/results"
LOG="$RESULTS/log.txt"
exec > >(tee -a "$LOG") 2>&1

START=$SECONDS
RESERVE=15   # kept for the final bench show
STATUS=()
FAILED=0

# stage NAME LIMIT CMD...: run CMD under `timeout`, at most LIMIT s and at most what the budget leaves
stage() {
  local name="$1" limit="$2"; shift 2
  local left=$((BUDGET - (SECONDS - START) - RESERVE))
  [[ "$name" == "bench show" ]] && left=$((left + RESERVE))
  if ((left < 5)); then
    echo "== $name: SKIPPED (budget of ${BUDGET}s spent)"
    STATUS+=("$(printf '%-26s %-8s' "$name" SKIPPED)"); FAILED=1; return
  fi
  ((limit > left)) && limit=$left
  echo; echo "== $name (limit ${limit}s, $((SECONDS - START))s elapsed) =="
  local t0=$SECONDS rc
  timeout -k 10 "$limit" "$@"; rc=$?
  local how="ok"
  ((rc == 124 || rc == 137)) && how="TIMEOUT"
  ((rc != 0 && rc != 124 && rc != 137)) && how="FAILED"
  ((rc != 0)) && FAILED=1
  STATUS+=("$(printf '%-26s %-8s rc=%-3s %4ss (limit %ss)' "$name" "$how" "$rc" "$((SECONDS - t0))" "$limit")")
}

echo "gpu_check: $( ((SMOKE)) && echo SMOKE on the CPU || echo GPU) | repo $REPO | payload $PAYLOAD | results $RESULTS"
echo "budget ${BUDGET}s | $(date -u +%FT%TZ) | $($PY --version 2>&1) at $PY"

if ((SMOKE)); then
  DEVICE=cpu
  if [[ ! -f "$PAYLOAD/cifar10.npz" ]]; then
    stage "prepare (smoke data)" 60 "$PY" benchmarks/gpu_check/prepare.py --out "$PAYLOAD" --n-train 200 --n-test 2 --no-wheels
  fi
  PERF_ARGS=(--compression 0.5 --steps 1 --warmup 1 --repeats 2 --batch-size 8 --latency-batch 2
             --aa-points 2 --aa-version apgd-ce --threads 1)
  # --no-attacks: an untrained VGG16 on a CPU can spend minutes of FAB-T/Square on one robust point;
  # AutoAttack is exercised by the perf stage (APGD-CE).
  RUN_ARGS=(--epochs 0.1 --batch-size 16 --n-eval 2 --no-attacks --threads 1)
  RUN_TRACK=cifar10-vgg16   # the smoke payload has 200 training images, fewer than the subset track's 15,000
  STEP_ARGS=(--track digits-cnn --compression 0.5 --rounds 2 --threads 1 --stages --conditioner both)
  PERF_LIMIT=90; RUN_LIMIT=60; STEP_LIMIT=30
else
  DEVICE=cuda
  if [[ ! -f "$PAYLOAD/cifar10.npz" ]]; then
    echo "error: $PAYLOAD/cifar10.npz missing: run python benchmarks/gpu_check/prepare.py first and carry gpu_payload" >&2
    exit 2
  fi
  stage "gpu info" 30 bash -c "nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv || nvidia-smi || true"
  # Offline install: the carried wheels for what is missing, then the project itself (editable, no
  # dependencies, no build isolation). Either failing is not fatal: PYTHONPATH already has the repo
  # and an unpacked wheel is put on it below.
  stage "install" 90 bash -c '
    PY="$1"; W="$2/wheels"; missing=()
    "$PY" -c "import pyautoattack" 2>/dev/null || missing+=(pyautoattack)
    "$PY" -c "import tqdm" 2>/dev/null || missing+=(tqdm)
    if ((${#missing[@]})); then
      "$PY" -m pip install --no-deps --no-index --find-links "$W" "${missing[@]}" || {
        echo "pip could not install ${missing[*]}: unpacking the wheels into $2/site"
        for w in "$W"/*.whl; do "$PY" -m zipfile -e "$w" "$2/site"; done; }
    fi
    "$PY" -m pip install --no-deps --no-build-isolation --no-index -e . \
      || echo "editable install failed (setuptools/wheel missing?): running from PYTHONPATH instead"
  ' _ "$PY" "$PAYLOAD"
  if [[ -d "$PAYLOAD/site" ]]; then export PYTHONPATH="$PYTHONPATH:$(cd "$PAYLOAD/site" && pwd)"; fi
  # --cuda-graph: robust_lowrank also with its step replayed from a CUDA graph, as extra rows
  PERF_ARGS=(--compression 0.5 0.8 --steps 30 --warmup 5 --repeats 3 --aa-points 500 --aa-version standard --aa-rounds 2
             --cuda-graph)
  RUN_ARGS=(--compression 0.5 --epochs 5 --budget-seconds 25 --n-eval 1000)
  RUN_TRACK=cifar10-vgg16-subset   # its rows say "subset" in the track name
  STEP_ARGS=(--track cifar10-vgg16 --compression 0.5 0.8 --rounds 10 --stages --conditioner both)
  PERF_LIMIT=180; RUN_LIMIT=100; STEP_LIMIT=60
fi

stage "torch info" 60 "$PY" -c "
import torch, torchvision, sys
print('torch', torch.__version__, 'torchvision', torchvision.__version__, 'cuda', torch.version.cuda)
if torch.cuda.is_available():
    p = torch.cuda.get_device_properties(0)
    print('gpu', p.name, f'{p.total_memory / 2**30:.1f} GiB', 'capability', f'{p.major}.{p.minor}')
else:
    print('no CUDA device; CPU threads', torch.get_num_threads())
import bench.cli, pyautoattack
print('bench from', bench.cli.__file__, '| pyautoattack from', pyautoattack.__file__)
"

stage "bench perf" "$PERF_LIMIT" "${BENCH[@]}" perf --track cifar10-vgg16 --device "$DEVICE" --data-dir "$PAYLOAD" \
  --results-dir "$RES" "${PERF_ARGS[@]}"

# where the CondLR step's time goes on this device: projection, retraction, conditioning per bucket, with S
# conditioned by eigh (the default) and by Newton–Schulz products (conditioner="newton_schulz")
stage "condlr step" "$STEP_LIMIT" "$PY" benchmarks/condlr_step.py --device "$DEVICE" "${STEP_ARGS[@]}"

# the CondLR step captured in a CUDA graph and replayed (ManifoldSGD(experimental="cuda_graph"), conditioner
# newton_schulz): the step alone against the same step run eagerly, and whether both take the same
# step (the "bench perf" stage above has its training img/s as the "robust_lowrank (graph)" rows)
if ((SMOKE)); then
  echo; echo "== cuda graph stages: not run with --smoke (a CUDA graph needs a CUDA device) =="
else
  stage "condlr step cuda graph" 45 "$PY" benchmarks/condlr_step.py --device cuda --track cifar10-vgg16 \
    --compression 0.5 0.8 --rounds 10 --cuda-graph
fi

for m in dense robust_lowrank vanilla_lowrank pruning; do
  stage "run $m" "$RUN_LIMIT" "${BENCH[@]}" run --method "$m" --track "$RUN_TRACK" --device "$DEVICE" \
    --data-dir "$PAYLOAD" --results-dir "$RES" --quiet "${RUN_ARGS[@]}"
done

stage "bench show" 30 "${BENCH[@]}" show --results-dir "$RES" --all

echo
echo "== stages ($((SECONDS - START))s of ${BUDGET}s) =="
printf '%s\n' "${STATUS[@]}"
echo "rows: $RES (runs), $RES/_perf (bench perf); log: $LOG"
exit $FAILED
