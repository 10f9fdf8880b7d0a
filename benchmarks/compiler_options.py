"""Benchmark: a V-Net's train step compiled with and without pkd-jax's XLA options, alternating.

    python benchmarks/compiler_options.py [--shapes "demo;2,32,64,8;1,32,128,16"] [--rounds 8]
        [--json benchmarks/results/compiler_options.json]

For each shape ("demo": the demo's teacher step, its loss included; "B,T,S,F": the peer-comparable
step of benchmarks/train_step.py) the same lowered step is compiled twice in one process: with
XLA's defaults and with pkd_jax.models.vnet.XLA_CONVOLUTIONS (XLA's own convolutions, YNNPACK for
the matmuls and reductions only). The two run alternately, step by step, so a shared, noisy machine slows both
alike; the JSON holds each one's step times, medians, compile times and the ratio
default / options (above 1: the options are faster). pkd_jax.models.vnet sets the options only
for V-Nets of width >= XLA_CONVOLUTIONS_MIN_FILTERS on a CPU, from these figures.
"""

import json
import os
import platform
import statistics
import sys
import time

from absl import app, flags

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

# pylint: disable=wrong-import-position
import jax  # noqa: E402
import numpy as np  # noqa: E402

import train_step as peer  # noqa: E402  (defines its own flags)
from configs import teacher  # noqa: E402
from pkd_jax import fileio, models, train  # noqa: E402
from pkd_jax.data.case import TARGET_MAPS  # noqa: E402
from pkd_jax.models import vnet  # noqa: E402
from pkd_jax.state import init_state, make_optimizer  # noqa: E402

_SHAPES = flags.DEFINE_string("shapes", "demo;2,32,64,8;1,32,128,16",
                              "';'-separated: demo, or B,T,S,F (peer-comparable)")
_ROUNDS = flags.DEFINE_integer("rounds", 8, "timed steps of each variant (after one warm-up)")
_OUT_JSON = flags.DEFINE_string("json", "benchmarks/results/compiler_options.json",
                                "JSON output path")


def measure(shape: str, rounds: int) -> dict:
  if shape == "demo":
    config = teacher.get_config("1,demo")
  else:
    b, t, s, f = (int(v) for v in shape.split(","))
    config = peer.peer_config(b, t, s, f)
  model, tx = models.from_config(config), make_optimizer(config)
  loss_config = train.LossConfig.from_config(config)
  p, b = config.data.patch, config.data.batch_size
  rng = np.random.default_rng(0)
  batch = {"x": rng.normal(size=(b, p.num_frames, p.height, p.width, 1)).astype(np.float32)}
  for k in TARGET_MAPS:
    batch[k] = rng.uniform(0, config.data.map_ranges[k], size=(b, p.height, p.width)).astype(
        np.float32)
  lowered = train.train_step.lower(init_state(config, model, tx, 0), batch, None, None,
                                   model=model, tx=tx, loss_config=loss_config)
  variants = {"default": {}, "options": dict(vnet.XLA_CONVOLUTIONS)}
  compiled, compile_s, states, times = {}, {}, {}, {k: [] for k in variants}
  for name, options in variants.items():
    start = time.perf_counter()
    compiled[name] = lowered.compile(compiler_options=options or None)
    compile_s[name] = round(time.perf_counter() - start, 2)
    states[name] = init_state(config, model, tx, 0)
  for r in range(rounds + 1):
    for name in variants:
      start = time.perf_counter()
      states[name], metrics = compiled[name](states[name], batch, None, None)
      jax.block_until_ready(metrics)
      if r:
        times[name].append(round(time.perf_counter() - start, 4))
  medians = {k: statistics.median(v) for k, v in times.items()}
  return {"shape": shape, "filters": config.model.filters,
          "patch_t_h_w": [p.num_frames, p.height, p.width], "batch": b,
          "compile_s": compile_s, "step_s": times,
          "median_step_s": {k: round(v, 4) for k, v in medians.items()},
          "default_over_options": round(medians["default"] / medians["options"], 3),
          "chosen_by_pkd_jax": bool(vnet.compiler_options(jax.default_backend(),
                                                          config.model.filters))}


def main(argv):
  del argv
  result = {"benchmark": "compiler_options", "date": time.strftime("%Y-%m-%d"),
            "machine": f"{platform.machine()}, {os.cpu_count()} cores", "jax": jax.__version__,
            "backend": jax.default_backend(), "options": vnet.XLA_CONVOLUTIONS,
            "rounds": _ROUNDS.value, "shapes": []}
  for shape in _SHAPES.value.split(";"):
    result["shapes"].append(measure(shape, _ROUNDS.value))
    print(json.dumps(result["shapes"][-1]), flush=True)
  fileio.write_json(_OUT_JSON.value, result)
  print(f"wrote {_OUT_JSON.value}", file=sys.stderr)


if __name__ == "__main__":
  app.run(main)
