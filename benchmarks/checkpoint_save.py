"""Benchmark: writing a train state's checkpoint from device arrays, from host copies and flat.

    python benchmarks/checkpoint_save.py [--config_arg=1,test] [--rounds 4]
        [--json benchmarks/results/checkpoint_save.json]

Writes the fresh state of a teacher (configs/teacher.py with --config_arg) through
pkd_jax.checkpoints' manager, alternately (each round into a new folder): "device", orbax given the
state's tree of device arrays (how the loop wrote it until 2026-12-03); "host", the same tree as
numpy copies (until 2026-12-04); "flat", pkd_jax.checkpoints.save (the copies packed into a few 1-D
arrays: orbax's cost is per array). Each time is from the save call to the end of orbax's
background write. The JSON holds the times, their medians and the ratios of the older ways to
"flat" (above 1: flat is faster).
"""

import json
import os
import platform
import statistics
import sys
import tempfile
import time

from absl import app, flags

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

# pylint: disable=wrong-import-position
import jax  # noqa: E402
import orbax.checkpoint as ocp  # noqa: E402

from configs import teacher  # noqa: E402
from pkd_jax import checkpoints, fileio, models, parallel  # noqa: E402
from pkd_jax.state import init_state, make_optimizer  # noqa: E402

_CONFIG_ARG = flags.DEFINE_string("config_arg", "1,test", "configs/teacher.py's FACTOR,SCALE")
_ROUNDS = flags.DEFINE_integer("rounds", 4, "checkpoints written by each variant")
_OUT_JSON = flags.DEFINE_string("json", "benchmarks/results/checkpoint_save.json",
                                "JSON output path")


def _device_save(manager, state):
  """The loop's checkpoint as it was written before pkd_jax.checkpoints.save: device arrays."""
  manager.save(1, args=ocp.args.Composite(
      state=ocp.args.StandardSave(state), data=ocp.args.JsonSave({}),
      teaching=ocp.args.JsonSave({})), metrics={"val_loss": 1.0})


def _host_save(manager, state):
  """As it was written until 2026-12-04: the tree of host copies."""
  _device_save(manager, parallel.to_host(state))


def _flat_save(manager, state):
  checkpoints.save(manager, 1, state, {}, {}, val_loss=1.0)


def main(argv):
  del argv
  config = teacher.get_config(_CONFIG_ARG.value)
  model, tx = models.from_config(config), make_optimizer(config)
  state = jax.block_until_ready(init_state(config, model, tx, 0))
  variants = {"device": _device_save, "host": _host_save, "flat": _flat_save}
  times = {k: [] for k in variants}
  with tempfile.TemporaryDirectory() as root:
    for r in range(_ROUNDS.value + 1):  # round 0 warms orbax up
      for name, save in variants.items():
        manager = checkpoints.checkpoint_manager(os.path.join(root, f"{name}{r}"), 1)
        start = time.perf_counter()
        save(manager, state)
        manager.wait_until_finished()
        if r:
          times[name].append(round(time.perf_counter() - start, 3))
        manager.close()
  medians = {k: statistics.median(v) for k, v in times.items()}
  result = {"benchmark": "checkpoint_save", "date": time.strftime("%Y-%m-%d"),
            "machine": f"{platform.machine()}, {os.cpu_count()} cores", "jax": jax.__version__,
            "orbax": ocp.__version__, "config_arg": _CONFIG_ARG.value,
            "arrays": len(jax.tree.leaves(state)), "seconds": times,
            "median_s": {k: round(v, 3) for k, v in medians.items()},
            "device_over_flat": round(medians["device"] / medians["flat"], 2),
            "host_over_flat": round(medians["host"] / medians["flat"], 2)}
  fileio.write_json(_OUT_JSON.value, result)
  print(json.dumps(result))


if __name__ == "__main__":
  app.run(main)
