#!/usr/bin/env bash
# The GPU checks of one sitting, in order of value, each stage cut off at a shared deadline:
#
#   OUT=results_dir TORCH_SCRIPT=path/to/torch_vnet.py [DEADLINE_S=540] [WHEELS=dir] \
#     bash benchmarks/gpu_check.sh
#
#  0. versions and nvidia-smi;
#  1. JAX / PyTorch step time at the paper size (2, 32, 128, 16), float32, both on the GPU,
#     ROUNDS alternating rounds (benchmarks/compare_torch.py --device=cuda); it is also the smoke
#     test: when its JAX side fails, nothing after it can work and the script stops;
#  2. step 1 in bfloat16 (one round);
#  3. the test suite on the GPU (pytest -n 8; PYTEST_S seconds, then interrupted so that pytest
#     still prints its summary of failures) and, side by side with it, the demo job
#     (configs/student.py:pkd,demo; DEMO_S seconds), GPU memory not preallocated by either;
#  4. whole-case inference latency, 16 slices of 256 x 256 x 40 (benchmarks/inference.py);
#  5. the full paper-size teacher step (all losses): FLOPs, fraction of peak, peak memory
#     (benchmarks/train_step.py; measured 2026-12-04: 0.215 s with the plain forms, 0.046 s auto);
#  6. the paper-size peer-comparable step with the plain lax forms (conv_transpose for the up
#     convolutions), against which the GPU's "auto" choice (depth_to_space, chosen from a profile:
#     benchmarks/gpu_profile.sh, pkd_jax.models.vnet.AUTO_IMPLS) is measured in step 1, then with
#     space_to_depth for the down convolutions as well.
# On the H200 of 2026-12-04 every JAX process took 60-90 s to start and compile (the first step
# of the (2, 32, 64, 8) step alone 28 s), the suite ran ~60% in 150 s with 8 workers, and the
# first compilation of the inference benchmark did not end in 74 s: give DEADLINE_S 540 and a
# run timeout above it. In the second sitting (the plain forms then) step 1 took 137 s, the suite
# 290 tests in 200 s before its cut-off (one error: no nbformat there), the demo two of its
# teachers in 150 s; nothing after the demo ran. One sitting does not reach the end. The third
# sitting (the auto forms) split it over two calls on one warm machine (STAGES): versions,
# torch_f32, torch_bf16, inference and train_step in 273 s (DEADLINE_S=555), then the suite and
# the demo side by side in 355 s (the whole suite 352 s, the demo 299 s); the forms not run.
# Everything is logged to $OUT/log.txt (the suite's and the demo's output to pytest.txt and
# demo.txt beside it, their ends copied into log.txt); JSON results land in $OUT. A wheel folder
# given as WHEELS (packages missing on the machine) is installed first into /tmp/site. For a
# machine with its own jax, flax and PyTorch but no network (the H200 of 2026-12-04: Python 3.12),
# the folder was made where pip works with
#   pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
#     --platform manylinux_2_28_x86_64 --platform manylinux_2_24_x86_64 \
#     --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 -d .whl \
#     nibabel ml_collections dm_pix grain tensorboardX flax optax orbax-checkpoint \
#     array_record portpicker importlib_resources etils
# (pin the versions of this machine's `pip list`).
set -u
DEADLINE_S=${DEADLINE_S:-540}
START=$(date +%s)
source "$(dirname "$0")/gpu_env.sh"
export JAX_COMPILATION_CACHE_DIR=/tmp/pkd_gpu_xla_cache

# STAGES (optional) names the stages to run, space-separated, among: versions torch_f32 torch_bf16
# pytest demo inference train_step forms; unset, all run. One sitting can then be split over two
# calls on the same warm machine.
want() { [ -z "${STAGES:-}" ] || [[ " $STAGES " == *" ${1%% *} "* ]]; }

# stage NAME LIMIT_S COMMAND...: run COMMAND for at most LIMIT_S or until the deadline; at the limit
# it is interrupted (SIGINT: pytest still prints its summary of failures), killed 15 s later.
stage() {
  local name=$1 limit=$2; shift 2
  want "$name" || return 0
  local left=$((DEADLINE_S - ($(date +%s) - START)))
  if [ "$left" -lt 20 ]; then echo "== $name: skipped, deadline" | tee -a "$LOG"; return 1; fi
  [ "$limit" -gt "$left" ] && limit=$left
  echo "== $name (at most ${limit} s, $(( $(date +%s) - START )) s in)" | tee -a "$LOG"
  local t0; t0=$(date +%s)
  timeout -s INT -k 15 "$limit" "$@" >>"$LOG" 2>&1
  local rc=$?
  echo "== $name: exit $rc after $(( $(date +%s) - t0 )) s" | tee -a "$LOG"
  return $rc
}

stage versions 60 bash -c 'nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm \
  --format=csv; python3 -c "import jax, jaxlib, flax, optax, orbax.checkpoint as o, torch; \
print(\"jax\", jax.__version__, jaxlib.__version__, jax.devices(), \"flax\", flax.__version__, \
\"optax\", optax.__version__, \"torch\", torch.__version__)"'
SHAPE="2,32,128,16"
stage torch_f32 200 python3 benchmarks/compare_torch.py --device=cuda --torch_python=python3 \
  --torch_script="$TORCH_SCRIPT" --shapes="$SHAPE" --rounds=${ROUNDS:-1} --steps=10 \
  --out="$OUT/compare_torch_gpu.json" || { tail -60 "$LOG"; exit 1; }
stage torch_bf16 150 python3 benchmarks/compare_torch.py --device=cuda --dtype=bfloat16 \
  --torch_python=python3 --torch_script="$TORCH_SCRIPT" --shapes="$SHAPE" --rounds=1 --steps=10 \
  --out="$OUT/compare_torch_gpu_bf16.json"
# The suite and the demo side by side (the machine has 16 cores and the GPU room for both; neither
# preallocates GPU memory), each logging to its own file: the demo's wall time is then one shared
# with the suite's, an upper bound.
# tests/test_notebook.py needs nbformat, nbclient and a Jupyter kernel, which a bare GPU machine
# lacks: it is left out there (and said so) rather than carried.
NOTEBOOK=()
python3 -c "import nbformat, nbclient" 2>/dev/null || { NOTEBOOK=(--ignore=tests/test_notebook.py);
  echo "no nbformat/nbclient: tests/test_notebook.py left out" | tee -a "$LOG"; }
export XLA_PYTHON_CLIENT_PREALLOCATE=false
# PYTEST_ARGS (optional) picks tests, e.g. the three that failed on GPU nondeterminism in the third
# sitting (tests/conftest.py has made GPU programs deterministic since, not yet run there):
#   PYTEST_ARGS="tests/test_distill.py tests/test_train.py tests/test_unet_gan.py"
LOG="$OUT/pytest.txt" stage pytest ${PYTEST_S:-300} python3 -m pytest -q -n 8 -p no:cacheprovider \
  "${NOTEBOOK[@]}" ${PYTEST_ARGS:-} &
LOG="$OUT/demo.txt" stage demo ${DEMO_S:-300} python3 -m pkd_jax.main \
  --config=configs/student.py:pkd,demo --workdir=/tmp/runs/demo &
wait
unset XLA_PYTHON_CLIENT_PREALLOCATE
cp /tmp/runs/demo/results_pkd.md "$OUT/" 2>/dev/null
tail -5 "$OUT/pytest.txt" >> "$LOG" 2>/dev/null
grep -E "^== |100%|wall|results" "$OUT/demo.txt" 2>/dev/null | tail -20 >> "$LOG"
stage inference 180 python3 benchmarks/inference.py --out="$OUT/inference_gpu.json"
stage train_step 120 python3 benchmarks/train_step.py --sizes=paper --paper_steps=10 \
  --student_sizes= --out="$OUT/train_step_gpu.json"
for forms in conv,conv_transpose,conv3d space_to_depth,depth_to_space,conv3d; do
  stage "forms $forms" 90 bash -c "python3 benchmarks/train_step.py --peer-comparable --batch 2 \
    --frames 32 --size 128 --filters 16 --steps 10 --impls $forms > $OUT/peer_${forms//,/_}.json"
done
grep -E "^== |passed|failed|FAILED|ERROR|median_step_s\"|ratio|seconds_per" "$LOG" | tail -60
