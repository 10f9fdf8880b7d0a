"""Benchmark: the jitted train step at the "demo" and "paper" sizes, printed and written as JSON.

    python benchmarks/train_step.py [--sizes demo,paper] [--steps 5] [--paper_steps 1] [--out FILE]

For each size (configs/teacher.py:1,<size>): compile time, median step time over --steps steps
(after one warm-up step), samples per second, the process's peak memory (peak RSS on CPU, the
device's peak bytes in use on a GPU), the FLOPs of one step from XLA's cost analysis (of the
unoptimised program, which counts the convolutions on every backend) and the
achieved fraction of the machine's peak FLOP rate; at --student_sizes also the students' steps
(one frozen teacher's forward pass more, as PKD; three, as MTKD) over the teacher's step, timed in
the same run. On CPU the peak is estimated as cores x clock x
FLOPs per cycle per core (32 for AVX2 FMA in float32, 64 with AVX-512); on a GPU a table of
known dense float32 peaks is used. Inputs are random arrays of the right shapes: the step alone is
timed (benchmarks/phantom.py times the input pipeline).
"""

import functools
import json
import os
import platform
import resource
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np
from absl import app, flags

from configs import teacher
from pkd_jax import fileio, models, train
from pkd_jax.data.case import TARGET_MAPS
from pkd_jax.state import init_state, make_optimizer

_SIZES = flags.DEFINE_list("sizes", ["demo", "paper"], "config scales to measure")
_STEPS = flags.DEFINE_integer("steps", 5, "timed steps per size (after one warm-up step)")
_PAPER_STEPS = flags.DEFINE_integer("paper_steps", 1, "timed steps at the paper size")
_STUDENT_SIZES = flags.DEFINE_list("student_sizes", ["demo"],
                                   "sizes at which to time a PKD student's step too")
_OUT = flags.DEFINE_string("out", "benchmarks/results/train_step.json", "JSON output path")
# The peer-comparable step: exactly the work of shared/bench/torch_vnet.py (MAE of the three raw
# maps, Adam(0.5, 0.99)), at a shape given on the command line, for benchmarks/compare_torch.py.
_PEER = flags.DEFINE_boolean("peer-comparable", False,
                             "time the step torch_vnet.py times (MAE only) at --batch/--frames/"
                             "--size/--filters, print its JSON (last key median_step_s) and exit")
_BATCH = flags.DEFINE_integer("batch", 2, "peer-comparable: batch size")
_FRAMES = flags.DEFINE_integer("frames", 32, "peer-comparable: frames T")
_SIZE = flags.DEFINE_integer("size", 64, "peer-comparable: H = W")
_FILTERS = flags.DEFINE_integer("filters", 8, "peer-comparable: V-Net width F")
_IMPLS = flags.DEFINE_string("impls", "", "peer-comparable: down,up,conv implementations "
                             "(default: the teacher config's choice for this backend)")
_DTYPE = flags.DEFINE_enum("dtype", "float32", ["float32", "bfloat16"],
                          "peer-comparable: computation dtype (model.dtype)")
_PROFILE_DIR = flags.DEFINE_string("profile_dir", "", "peer-comparable: after timing, trace 3 "
                                   "more steps with jax.profiler into this folder (summarise the "
                                   "trace with benchmarks/profile_summary.py)")

# Dense float32 peak FLOP/s of some GPUs (vendor data sheets, no tensor cores / TF32).
GPU_PEAK_FP32 = {"H100": 67e12, "H200": 67e12, "A100": 19.5e12, "V100": 15.7e12, "T4": 8.1e12,
                 "L4": 30.3e12}


def cpu_peak_flops() -> tuple[float, str]:
  """An estimate of the CPU's float32 peak, from /proc/cpuinfo (Linux)."""
  try:
    with open("/proc/cpuinfo") as f:
      info = f.read()
  except OSError:
    return float("nan"), "unknown (no /proc/cpuinfo)"
  mhz = [float(line.split(":")[1]) for line in info.splitlines() if line.startswith("cpu MHz")]
  flags_line = next((line for line in info.splitlines() if line.startswith("flags")), "")
  per_cycle = 64 if "avx512f" in flags_line else 32 if "fma" in flags_line else 8
  cores = len(os.sched_getaffinity(0))
  clock = max(mhz) * 1e6 if mhz else float("nan")
  return cores * clock * per_cycle, f"{cores} cores x {clock / 1e9:.2f} GHz x {per_cycle} FLOP/cycle"


def machine_peak() -> tuple[float, str]:
  device = jax.devices()[0]
  if device.platform == "gpu":
    for name, peak in GPU_PEAK_FP32.items():
      if name in device.device_kind:
        return peak, f"{device.device_kind} dense fp32 data sheet"
    return float("nan"), f"{device.device_kind}: unknown peak"
  return cpu_peak_flops()


def peak_memory_bytes() -> int:
  device = jax.devices()[0]
  stats = device.memory_stats() if device.platform == "gpu" else None
  if stats and "peak_bytes_in_use" in stats:
    return int(stats["peak_bytes_in_use"])
  return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux reports KiB


def step_flops(step_fn, *args, **static) -> float:
  """FLOPs of one step, from XLA's cost analysis of the program lowered for the CPU, unoptimised.

  The same count on every backend, and the one that can be had there: on a GPU the compiled
  program's convolutions are cuDNN custom calls that the cost analysis counts as nothing (9.65
  GFLOPs for the paper-size step on an H200, 2026-12-04, against 2,276), and the program lowered
  for the GPU gave no count at all (NaN, the third sitting). On CPU the compiled and unoptimised
  counts agree within 2% (the demo size: 8.20 and 8.30 GFLOPs with the fast forms, 7.77 and 7.83
  with plain convolutions); the paper-size step counts 2,275.6 GFLOPs with conv_transpose or
  depth_to_space for the up convolutions alike. Arguments are traced as shapes only, so arrays
  committed to another device do not matter.
  """
  shapes = jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype), args)
  lowered = step_fn.trace(*shapes, **static).lower(lowering_platforms=("cpu",))
  cost = lowered.cost_analysis()
  cost = cost[0] if isinstance(cost, (list, tuple)) else cost
  return float(cost.get("flops", float("nan"))) if cost else float("nan")


def time_steps(step, state, batch, teachers, perceptual, steps: int) -> float:
  """Median seconds of `steps` calls of a jitted train step, after one warm-up call."""
  state, metrics = step(state, batch, teachers, perceptual)
  jax.block_until_ready(metrics)
  times = []
  for _ in range(steps):
    start = time.perf_counter()
    state, metrics = step(state, batch, teachers, perceptual)
    jax.block_until_ready(metrics)
    times.append(time.perf_counter() - start)
  return statistics.median(times)


def measure(scale: str, steps: int) -> dict:
  config = teacher.get_config(f"1,{scale}")
  model, tx = models.from_config(config), make_optimizer(config)
  loss_config = train.LossConfig.from_config(config)
  perceptual = train.make_perceptual(config)
  state = init_state(config, model, tx, 0)
  num_params = models.count_params(state.params)
  p, b = config.data.patch, config.data.batch_size
  rng = np.random.default_rng(0)
  batch = {"x": rng.normal(size=(b, p.num_frames, p.height, p.width, 1)).astype(np.float32)}
  for k, top in config.data.map_ranges.items():
    batch[k] = rng.uniform(0, top, size=(b, p.height, p.width)).astype(np.float32)
  start = time.perf_counter()
  lowered = train.train_step_fn(model).lower(state, batch, None, perceptual, model=model, tx=tx,
                                             loss_config=loss_config)
  compiled = lowered.compile()  # the timed program: compiled once, not again by jit's cache
  compile_s = time.perf_counter() - start
  flops = step_flops(train.train_step_fn(model), state, batch, None, perceptual, model=model,
                     tx=tx, loss_config=loss_config)
  median = time_steps(compiled, state, batch, None, perceptual, steps)
  peak, peak_source = machine_peak()
  student = {}
  if scale in _STUDENT_SIZES.value:
    # Students' steps: the same network plus frozen teachers' forward passes, one teacher (PKD,
    # KD, TAKD) and three (MTKD's full-resolution teachers; DGKD has four).
    teacher_state = init_state(config, model, tx, 2)  # `state` was donated to the steps
    teacher_vars = {"params": teacher_state.params, "batch_stats": teacher_state.batch_stats}
    student_config = train.LossConfig(loss_config.weights, loss_config.ranges)
    kd_step = functools.partial(train.train_step_fn(model), model=model, tx=tx,
                                loss_config=student_config)
    for key, k in (("pkd_student", 1), ("three_teacher_student", 3)):
      teachers = {"variables": jax.tree.map(lambda a: np.stack([a] * k), teacher_vars),  # pylint: disable=cell-var-from-loop
                  "weights": np.full((k,), 1 / k, np.float32)}
      student_batch = dict(batch, teacher_x=np.stack([batch["x"]] * k))
      student_median = time_steps(kd_step, init_state(config, model, tx, 1), student_batch,
                                  teachers, perceptual, steps)
      student[f"{key}_median_step_s"] = round(student_median, 4)
      student[f"{key}_over_teacher_step"] = round(student_median / median, 3)
  return {
      "scale": scale, "batch": b, "patch_t_h_w": [p.num_frames, p.height, p.width],
      "filters": config.model.filters,
      "impls": list(models.impls_from_config(config).values()),
      "perceptual_weight": config.loss.perceptual,
      "params": num_params,
      "compile_s": round(compile_s, 2), "median_step_s": round(median, 4),
      "timed_steps": steps, "samples_per_s": round(b / median, 3),
      "peak_memory_gib": round(peak_memory_bytes() / 2**30, 2),
      "gflops_per_step": round(flops / 1e9, 2),
      "achieved_gflops_per_s": round(flops / median / 1e9, 2),
      "machine_peak_gflops_per_s": round(peak / 1e9, 1), "machine_peak_source": peak_source,
      "fraction_of_peak": round(flops / median / peak, 4),
      **student,
  }


def peer_config(batch: int, frames: int, size: int, filters: int, impls: str = "",
                dtype: str = "float32"):
  """The teacher config reduced to torch_vnet.py's work: MAE of the raw maps, no other term."""
  config = teacher.get_config("1,test")
  with config.unlocked():
    config.data.batch_size, config.model.filters = batch, filters
    config.data.patch.num_frames, config.data.patch.height, config.data.patch.width = (
        frames, size, size)
    config.loss.mae, config.loss.ssim, config.loss.perceptual, config.loss.mse = 1.0, 0.0, 0.0, 0.0
    config.data.map_ranges = {"tmax": 1.0, "cbv": 1.0, "cbf": 1.0}  # MAE of the maps as they are
    config.train.steps = 1_000_000  # a learning rate that stays ~1e-3, like torch_vnet.py's
    config.model.dtype = dtype
    if impls:
      config.model.down_impl, config.model.up_impl, config.model.conv_impl = impls.split(",")
  return config


def measure_peer(steps: int) -> dict:
  """Median step time of the peer-comparable step (printed last as "median_step_s")."""
  config = peer_config(_BATCH.value, _FRAMES.value, _SIZE.value, _FILTERS.value, _IMPLS.value,
                       _DTYPE.value)
  model, tx = models.from_config(config), make_optimizer(config)
  loss_config = train.LossConfig.from_config(config)
  state = init_state(config, model, tx, 0)
  num_params = models.count_params(state.params)
  b, t, s = _BATCH.value, _FRAMES.value, _SIZE.value
  rng = np.random.default_rng(0)
  batch = {"x": rng.normal(size=(b, t, s, s, 1)).astype(np.float32)}
  batch.update({k: rng.uniform(size=(b, s, s)).astype(np.float32) for k in TARGET_MAPS})
  step = functools.partial(train.train_step_fn(model), model=model, tx=tx, loss_config=loss_config)
  start = time.perf_counter()
  state, metrics = step(state, batch, None, None)
  jax.block_until_ready(metrics)
  first = time.perf_counter() - start
  median = time_steps(step, state, batch, None, None, steps)
  if _PROFILE_DIR.value:
    state = init_state(config, model, tx, 0)  # time_steps donated the other one
    with jax.profiler.trace(_PROFILE_DIR.value):
      for _ in range(3):
        state, metrics = step(state, batch, None, None)
        jax.block_until_ready(metrics)
  return {"impl": "jax", "jax": jax.__version__, "device": str(jax.devices()[0].device_kind),
          "batch": b, "frames": t, "size": s, "filters": _FILTERS.value, "dtype": _DTYPE.value,
          "impls": list(models.impls_from_config(config).values()),
          "params": num_params,
          "first_step_s": round(first, 3), "median_step_s": round(median, 4)}


def main(argv):
  del argv
  if _PEER.value:
    print(json.dumps(measure_peer(_STEPS.value)), flush=True)
    return
  results = {"benchmark": "train_step", "device": str(jax.devices()[0].device_kind),
             "machine": f"{platform.machine()}, {os.cpu_count()} cores", "jax": jax.__version__,
             "sizes": []}
  for scale in _SIZES.value:
    steps = _PAPER_STEPS.value if scale == "paper" else _STEPS.value
    results["sizes"].append(measure(scale, steps))
    print(json.dumps(results["sizes"][-1], indent=2), flush=True)
  fileio.write_json(_OUT.value, results)
  print(f"wrote {_OUT.value}")


if __name__ == "__main__":
  jnp.zeros(())  # initialise the backend before timing anything
  app.run(main)
