"""Where a traced step spends its time: the busiest events of each line of a jax.profiler trace.

    python benchmarks/profile_summary.py TRACE_DIR_OR_XPLANE_PB [--top 25] [--out FILE]

Reads the trace's .xplane.pb (the newest under the folder) with jax.profiler.ProfileData and, for
every line of every device plane (on a GPU its streams, with kernel names, and an "XLA Ops" line
with HLO op names where the trace has one), sums the events' durations by name and by kind (the
name without its numbers: "fusion.12" and "fusion.7" are one kind, and so are a cuDNN kernel's
tile-size variants). Prints (and writes with --out) JSON: per line its total milliseconds and the
top names and kinds with their milliseconds, share of the line and count. On CPU there is no
device plane; the host's XLA threads are summarised instead, where events nest
(ThunkExecutor::Execute encloses the ops it runs) and the work handed to YNNPACK's own threads is
not traced: there the shares say how the ops compare, not what fraction of the wall time they
take. A GPU stream's kernels do not nest.
"""

import argparse
import collections
import glob
import json
import os
import re

from jax.profiler import ProfileData

from pkd_jax import fileio


def find_xplane(path: str) -> str:
  if os.path.isfile(path):
    return path
  found = sorted(glob.glob(os.path.join(path, "**", "*.xplane.pb"), recursive=True),
                 key=os.path.getmtime)
  if not found:
    raise SystemExit(f"{path}: no .xplane.pb trace under this folder")
  return found[-1]


def kind(name: str) -> str:
  """An event name without its numbers: "input_reduce_fusion.3" -> "input_reduce_fusion"."""
  return re.sub(r"[._]?\d+", "", name)


def ranked(totals, counts, whole: int, top: int) -> list[dict]:
  return [{"name": name[:160], "ms": round(ns / 1e6, 3), "share": round(ns / whole, 4),
           "count": counts[name]} for name, ns in totals.most_common(top)]


def summarise(xplane: str, top: int) -> dict:
  data = ProfileData.from_file(xplane)
  planes = [p for p in data.planes if p.name.startswith("/device:")]
  if not planes:  # CPU: XLA's own threads on the host plane
    planes = [p for p in data.planes if p.name == "/host:CPU"]
  lines = {}
  for plane in planes:
    for line in plane.lines:
      if plane.name == "/host:CPU" and not line.name.startswith("tf_XLA"):
        continue
      totals, counts = collections.Counter(), collections.Counter()
      kind_totals, kind_counts = collections.Counter(), collections.Counter()
      for event in line.events:
        name, ns = event.name, event.duration_ns
        totals[name] += ns
        counts[name] += 1
        kind_totals[kind(name)] += ns
        kind_counts[kind(name)] += 1
      whole = sum(totals.values())
      if not whole:
        continue
      lines[f"{plane.name} {line.name}"] = {
          "total_ms": round(whole / 1e6, 3),
          "top_kinds": ranked(kind_totals, kind_counts, whole, top),
          "top": ranked(totals, counts, whole, top)}
  return {"xplane": xplane, "lines": lines}


def main(argv=None):
  # argparse, not absl flags: the tests import this module next to others that define --out
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("trace", help="a trace folder (jax.profiler.trace's) or an .xplane.pb file")
  parser.add_argument("--top", type=int, default=25, help="events listed per line")
  parser.add_argument("--out", default="", help="also write the JSON here")
  args = parser.parse_args(argv)
  summary = summarise(find_xplane(args.trace), args.top)
  print(json.dumps(summary, indent=1))
  if args.out:
    fileio.write_json(args.out, summary)


if __name__ == "__main__":
  main()
