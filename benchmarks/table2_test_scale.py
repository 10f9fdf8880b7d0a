"""Benchmark: where the time of a test-scale Table 2 run goes, printed and written as JSON.

    python benchmarks/table2_test_scale.py [--json_out FILE]

Runs experiments/table2.py's whole "test" scale twice in one process, each time into new run
folders: "cold" with an empty persistent XLA compilation cache (as on a clean CI machine), then
"warm" (the same programs again: the in-process and persistent caches hold them, so this run's
wall time is the floor that compiling faster cannot lower). For each: the wall time, and from
jax.monitoring the XLA compilations (count, backend compile seconds), tracing seconds and the
orbax checkpoint reads and writes (count, seconds). Issue 11 asks for this run in under a minute.
"""

import collections
import json
import os
import platform
import sys
import tempfile
import time

from absl import app, flags

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

# pylint: disable=wrong-import-position
import jax  # noqa: E402
from jax import monitoring  # noqa: E402

from experiments import table2  # noqa: E402  (defines --out, --scale, ... of its own)
from pkd_jax import fileio  # noqa: E402

_JSON_OUT = flags.DEFINE_string("json_out", "benchmarks/results/table2_test_scale.json",
                                "JSON output path")

# jax.monitoring duration events reported (name in the JSON -> event).
_DURATIONS = {
    "xla_backend_compile": "/jax/core/compile/backend_compile_duration",
    "jaxpr_trace": "/jax/core/compile/jaxpr_trace_duration",
    "checkpoint_read": "/jax/orbax/read/total_duration_secs",
    "checkpoint_write_async": "/jax/orbax/write/async/total_duration_secs",
}


def main(argv):
  del argv
  jax.config.update("jax_compilation_cache_dir", tempfile.mkdtemp(prefix="xla_cache_"))
  jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.5)
  seconds, counts = collections.defaultdict(float), collections.Counter()

  def on_duration(name, secs, **kwargs):
    del kwargs
    seconds[name] += secs
    counts[name] += 1

  monitoring.register_event_duration_secs_listener(on_duration)

  runs = {}
  for label in ("cold", "warm"):
    seconds.clear()
    counts.clear()
    start = time.perf_counter()
    table2.run("test", tempfile.mkdtemp(prefix="runs_"), tempfile.mkdtemp(prefix="out_"))
    runs[label] = dict(
        wall_s=round(time.perf_counter() - start, 1),
        **{f"{key}_s": round(seconds[event], 1) for key, event in _DURATIONS.items()},
        **{f"{key}_count": counts[event] for key, event in _DURATIONS.items()})
    print(json.dumps({label: runs[label]}), flush=True)
  result = dict(
      benchmark="table2_test_scale", date=time.strftime("%Y-%m-%d"),
      machine=f"{platform.machine()}, {os.cpu_count()} cores", jax=jax.__version__,
      backend=jax.default_backend(), runs=runs)
  fileio.write_json(_JSON_OUT.value, result)
  print(json.dumps(result, indent=2))


if __name__ == "__main__":
  app.run(main)
