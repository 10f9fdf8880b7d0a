#!/usr/bin/env bash
# A GPU sitting for experiments/table2.py: the table at SCALE (default mini) trained on the GPU by
# TABLE_WORKERS processes on the first cores, beside tests pinned to the last TEST_CORES cores,
# then (time left) the paper-size teacher and student steps that size the "gpu" scale:
#
#   OUT=results_dir [WHEELS=dir] [SCALE=mini] [TABLE_WORKERS=4] [TABLE_S=420] [DEADLINE_S=560] \
#     [PYTEST_ARGS="tests/..."] [TEST_CORES=4] bash benchmarks/gpu_table2.sh
#
# The runs folder is runs/table2_gpu_$SCALE in the repository (ignored by git, so it stays on a
# warm machine between calls): the same command again resumes an interrupted table. The table's
# own files (Markdown, CSV, JSON, figures) land in $OUT/table2_$SCALE_gpu, the log in
# $OUT/log.txt, the tests' output in $OUT/pytest.txt. The extended Table 2 test
# (PKD_EXTENDED_TESTS=1) runs among the tests. On the H200 of 2026-12-04 (16 cores) the mini table
# took two calls on one warm machine: TABLE_S=470 DEADLINE_S=555 (30 of 37 units, 501 s in all),
# then TABLE_S=300 DEADLINE_S=315 PYTEST_ARGS=tests/test_configs.py TEST_CORES=2 (the rest and
# the report in 89 s, then the student steps; 220 s): README, Results, The mini table on a GPU.
set -u
DEADLINE_S=${DEADLINE_S:-560}
START=$(date +%s)
source "$(dirname "$0")/gpu_env.sh"
export JAX_COMPILATION_CACHE_DIR=/tmp/pkd_gpu_xla_cache
export XLA_PYTHON_CLIENT_PREALLOCATE=false  # the tests, the workers and the steps share the GPU
SCALE=${SCALE:-mini}
CORES=$(nproc)
TEST_CORES=${TEST_CORES:-4}
TABLE_CPUS="0-$((CORES - TEST_CORES - 1))"
TEST_CPUS="$((CORES - TEST_CORES))-$((CORES - 1))"
left() { echo $((DEADLINE_S - ($(date +%s) - START))); }
{ nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
  python3 -c "import jax, flax
print('jax', jax.__version__, jax.devices(), 'flax', flax.__version__)"
} >>"$LOG" 2>&1
echo "table on cores $TABLE_CPUS, tests on $TEST_CPUS, $(left) s left" | tee -a "$LOG"

PYTEST_ARGS=${PYTEST_ARGS:-"tests/test_distill.py tests/test_train.py tests/test_unet_gan.py \
tests/test_table2.py"}
( t0=$(date +%s)
  PKD_EXTENDED_TESTS=1 timeout -s INT -k 15 "${PYTEST_S:-$(( $(left) - 30 ))}" \
    taskset -c "$TEST_CPUS" python3 -m pytest -q -n "$TEST_CORES" -p no:cacheprovider \
    --durations=5 $PYTEST_ARGS >"$OUT/pytest.txt" 2>&1
  echo "== tests: exit $? after $(( $(date +%s) - t0 )) s" >>"$OUT/pytest.txt" ) &
TESTS=$!

t0=$(date +%s)
timeout -s INT -k 20 "${TABLE_S:-420}" taskset -c "$TABLE_CPUS" python3 experiments/table2.py \
  --scale="$SCALE" --runs="runs/table2_gpu_$SCALE" --out="$OUT/table2_${SCALE}_gpu" \
  --workers="${TABLE_WORKERS:-4}" >"$OUT/table2.txt" 2>&1
echo "== table2 $SCALE: exit $? after $(( $(date +%s) - t0 )) s" | tee -a "$LOG"
tr '\r' '\n' <"$OUT/table2.txt" | grep -E "^(w[0-9]+ )?\[[0-9]+/[0-9]+\]|Error|error|wrote" \
  | tail -60 >>"$LOG"

if [ "$(left)" -gt 100 ]; then
  t0=$(date +%s)
  timeout -s INT -k 15 $(( $(left) - 20 )) taskset -c "$TABLE_CPUS" python3 \
    benchmarks/train_step.py --sizes=paper --paper_steps=10 --student_sizes=paper \
    --out="$OUT/train_step_gpu_students.json" >>"$LOG" 2>&1
  echo "== train_step: exit $? after $(( $(date +%s) - t0 )) s" | tee -a "$LOG"
fi
wait $TESTS
tail -12 "$OUT/pytest.txt" >>"$LOG"
du -sh "runs/table2_gpu_$SCALE" >>"$LOG" 2>&1
echo "== done after $(( $(date +%s) - START )) s" | tee -a "$LOG"
tail -40 "$LOG"
