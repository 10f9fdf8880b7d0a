"""Benchmark: phantom generation and input pipeline throughput, printed and written as JSON.

    python benchmarks/phantom.py [--slices 16] [--batches 10] [--workers 2] [--out FILE]

Measures, at the paper's geometry (256 x 256 x 40 slices; batches of 2 patches of 128 x 128 x 32
at the five temporal factors):
* slices_per_s: phantom slices generated per second (noise included), one process;
* batches_per_s: batches per second from the grain pipeline generating slices on demand, in the
  main process and with --workers worker processes;
* cached_batches_per_s: the same with generated slices cached, i.e. the pipeline's own cost.
Generation must not bound training: compare with the training step rate (benchmarks/train_step.py).
"""

import json
import os
import platform
import time

from absl import app, flags

from pkd_jax import fileio
from pkd_jax.data import phantom, pipeline

_SLICES = flags.DEFINE_integer("slices", 16, "slices to generate for slices_per_s")
_BATCHES = flags.DEFINE_integer("batches", 10, "batches to time per pipeline setting")
_WORKERS = flags.DEFINE_integer("workers", 2, "grain worker processes for the multi-process row")
_OUT = flags.DEFINE_string("out", "benchmarks/results/phantom.json", "JSON output path")


def _time_batches(dataset, num_batches: int, num_workers: int) -> float:
  iterator = pipeline.make_iterator(dataset, num_workers=num_workers)
  next(iterator)  # start-up (worker processes, first slice) is not throughput
  start = time.perf_counter()
  for _ in range(num_batches):
    next(iterator)
  return num_batches / (time.perf_counter() - start)


def main(argv):
  del argv
  config = phantom.PhantomConfig()  # 256 x 256 x 40, 8 slices, noise on
  params = phantom.case_parameters(config, 0, 0)
  phantom.generate_slice(config, 0, 0, 0, params)  # warm-up
  start = time.perf_counter()
  for k in range(_SLICES.value):
    phantom.generate_slice(config, 0, k // config.num_slices, k % config.num_slices)
  slices_per_s = _SLICES.value / (time.perf_counter() - start)

  def dataset(cache: bool, num_cases: int = 16):
    source = pipeline.PhantomSlices(config, seed=0, split="train", num_cases=num_cases, cache=cache)
    return pipeline.make_dataset(source, factors=(16, 8, 4, 2, 1), patch=pipeline.PatchSpec(),
                                 batch_size=2, seed=0)

  results = {
      "benchmark": "phantom",
      "machine": f"{platform.machine()}, {os.cpu_count()} cores, {platform.python_version()}",
      "geometry": "256x256x40 slices; batch 2 x (5 factors x 32 x 128 x 128)",
      "slices_per_s": round(slices_per_s, 2),
      "batches_per_s": round(_time_batches(dataset(False), _BATCHES.value, 0), 2),
      f"batches_per_s_{_WORKERS.value}_workers": round(
          _time_batches(dataset(False), _BATCHES.value, _WORKERS.value), 2),
  }
  cached = dataset(True, num_cases=2)
  _time_batches(cached, 2 * config.num_slices, 0)  # fill the cache: two epochs of 16 slices
  results["cached_batches_per_s"] = round(_time_batches(cached, _BATCHES.value * 5, 0), 2)
  text = json.dumps(results, indent=2)
  print(text)
  fileio.write_text(_OUT.value, text + "\n")


if __name__ == "__main__":
  app.run(main)
