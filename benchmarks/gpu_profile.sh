#!/usr/bin/env bash
# Why the JAX step is slower than PyTorch's on a GPU: one short sitting, for a device lent briefly.
#
#   OUT=results_dir TORCH_SCRIPT=path/to/torch_vnet.py [WHEELS=dir] [IMPLS=down,up,conv] \
#     bash benchmarks/gpu_profile.sh
#
# (IMPLS: the V-Net's convolution forms, default the backend's "auto" choice; SHAPE: train_step.py
# flags, default the paper size.)
#  1. the peer-comparable step at the paper size (2, 32, 128, 16), float32, timed and then traced
#     with jax.profiler (benchmarks/train_step.py --profile_dir), the optimised HLO dumped
#     (XLA_FLAGS --xla_dump_to), the trace summarised by benchmarks/profile_summary.py: which
#     kernels take the step's time;
#  2. the same step in bfloat16 (model.dtype), JAX then PyTorch (autocast), not traced.
# On the H200 of 2026-12-04, with the plain forms then chosen there, the float32 step was 0.215 s
# in JAX against 0.056 s in PyTorch, 67% of it in the transposed convolutions (results in
# benchmarks/results/gpu_profile_h200_2026-12-04/); the bfloat16 step's first compilation did not
# end in 65 s. Each JAX process there takes 60-90 s to start and compile.
# Wheels as in gpu_check.sh.
set -u
source "$(dirname "$0")/gpu_env.sh"
SHAPE=${SHAPE:-"--batch 2 --frames 32 --size 128 --filters 16"}
PEER="--peer-comparable $SHAPE --steps 10 ${IMPLS:+--impls $IMPLS}"
echo "== f32 traced $(date +%T)" | tee -a "$LOG"
XLA_FLAGS="--xla_dump_to=$OUT/hlo --xla_dump_hlo_module_re=.*train_step.* --xla_dump_hlo_as_text" \
  timeout -k 5 ${F32_S:-110} python3 benchmarks/train_step.py $PEER --profile_dir=/tmp/trace_f32 \
  > "$OUT/peer_f32.json" 2>>"$LOG"
echo "== exit $? $(date +%T)" | tee -a "$LOG"
find "$OUT/hlo" -type f ! -name "*after_optimizations.txt" -delete 2>/dev/null
find "$OUT/hlo" -type d -empty -delete 2>/dev/null
timeout -k 5 30 python3 benchmarks/profile_summary.py /tmp/trace_f32 --top 30 \
  --out="$OUT/profile_f32.json" > /dev/null 2>>"$LOG"
# the trace itself comes back too when it is small enough to (the device returns 64 MiB at most)
[ "$(du -sm /tmp/trace_f32 | cut -f1)" -lt 30 ] &&
  tar -czf "$OUT/trace_f32.tar.gz" -C /tmp trace_f32
echo "== bf16 $(date +%T)" | tee -a "$LOG"
timeout -k 5 ${BF16_S:-70} python3 benchmarks/train_step.py $PEER --dtype bfloat16 \
  > "$OUT/peer_bf16.json" 2>>"$LOG"
echo "== exit $? $(date +%T)" | tee -a "$LOG"
for dtype in float32 bfloat16; do
  timeout -k 5 25 python3 benchmarks/torch_device.py --torch_script "$TORCH_SCRIPT" --device cuda \
    --dtype $dtype $SHAPE --steps 10 \
    > "$OUT/torch_$dtype.json" 2>>"$LOG"
done
python3 -c "import torch; print('cudnn.allow_tf32', torch.backends.cudnn.allow_tf32, \
'matmul.allow_tf32', torch.backends.cuda.matmul.allow_tf32)" >> "$LOG" 2>&1
tail -n 3 "$OUT"/*.json "$LOG" | cut -c1-400
