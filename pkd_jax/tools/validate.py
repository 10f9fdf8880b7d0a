"""Read and validate every CTP case of a NIfTI dataset; one line per case:

    python -m pkd_jax.tools.validate ROOT [--layout isles2018|folder] [--pattern ROLE=GLOB ...]
        [--no-maps] [--frame-interval SECONDS] [--split training|testing] [--exclude CASE ...]

Every case folder is read, a bad one too: a good case prints its line on stdout, a bad one
``error: <path>: <problem>`` on stderr (a case folder lacking its scan or a required map
included), then a summary ("3 cases: 2 valid, 1 invalid ..." naming the folder and split read).
The exit status is 2 if any case is invalid or the dataset cannot be read at all, else 0. The
readers are pkd_jax.data.nifti.
"""

from __future__ import annotations

import argparse
import sys
from typing import Sequence

import numpy as np

from pkd_jax.data.case import Case
from pkd_jax.data.nifti import (LAYOUTS, ROLES, SPLITS, CaseFolders, find_cases, parse_patterns,
                                read_case)
from pkd_jax.errors import InputError, exit_on_input_error

# The end of the warning for a scan without a usable frame interval: this tool's own flag.
INTERVAL_ADVICE = "pass --frame-interval SECONDS to set it"


def _summary(case: Case) -> str:
  num_slices, num_frames, height, width = case.scan_hu.shape
  dz, dx, dy = case.spacing_mm
  maps = ", ".join(case.maps) or "none"
  masks = ", ".join(case.masks) or "none"
  return (f"{case.case_id}: (S, T, H, W) = ({num_slices}, {num_frames}, {height}, {width}), "
          f"frame interval {case.frame_interval_s:.4g} s ({case.params['frame_interval_source']}), "
          f"spacing {dz:.4g} x {dx:.4g} x {dy:.4g} mm, maps: {maps}, masks: {masks}")


def _totals(found: CaseFolders, num_valid: int, num_slices: int) -> str:
  """'3 cases: 2 valid, 1 invalid; 6 slices in the valid ones; read <folder> (split ...)'."""
  num_cases = len(found)
  text = (f"{num_cases} cases: {num_valid} valid, {num_cases - num_valid} invalid; {num_slices} "
          f"slices in the valid ones; read {found.folder}")
  if found.split is not None:
    others = [s for s in found.splits if s != found.split]
    text += f" (split {found.split}" + "".join(f"; --split {s} reads {SPLITS[s]}"
                                               for s in others) + ")"
  if found.excluded:
    text += f"; excluded: {', '.join(d.name for d in found.excluded)}"
  return text


@exit_on_input_error
def main(argv: Sequence[str] | None = None) -> None:
  parser = argparse.ArgumentParser(
      prog="python -m pkd_jax.tools.validate",
      description="Read and validate every CTP case under ROOT; print one line per case and a "
      "summary; exit status 2 if any case is invalid.")
  parser.add_argument("root", help="the data folder, holding one folder per case (or, as ISLES "
                      "2018 is distributed, TRAINING/ and TESTING/ holding them)")
  parser.add_argument("--layout", default="isles2018", choices=list(LAYOUTS))
  parser.add_argument("--pattern", action="append", default=[], metavar="ROLE=GLOB",
                      help=f"glob relative to a case folder for a role ({', '.join(ROLES)}); "
                      "repeatable; overrides the layout's preset")
  parser.add_argument("--no-maps", action="store_true",
                      help="do not require the tmax, cbv and cbf maps")
  parser.add_argument("--frame-interval", type=float, metavar="SECONDS",
                      help="seconds per frame, overriding the headers")
  parser.add_argument("--split", choices=list(SPLITS),
                      help="read ROOT/TRAINING or ROOT/TESTING (default: ROOT's own case folders, "
                      "or if it has none TRAINING, or TESTING if alone)")
  parser.add_argument("--exclude", action="append", default=[], metavar="CASE_FOLDER",
                      help="leave out the case folder of this name (e.g. case_7); repeatable")
  args = parser.parse_args(argv)
  patterns = parse_patterns(args.pattern)
  if args.frame_interval is not None and not (np.isfinite(args.frame_interval) and
                                              args.frame_interval > 0):
    raise InputError("--frame-interval", f"must be a positive number of seconds, got "
                     f"{args.frame_interval}")
  found = find_cases(args.root, args.layout, patterns, split=args.split, exclude=args.exclude,
                     require_maps=not args.no_maps, complete=False)
  num_valid = num_slices = 0
  for case_dir in found:
    try:
      case = read_case(case_dir, args.layout, patterns, require_maps=not args.no_maps,
                       frame_interval_s=args.frame_interval, interval_advice=INTERVAL_ADVICE)
    except InputError as e:
      print(f"error: {e}", file=sys.stderr, flush=True)
      continue
    num_valid += 1
    num_slices += case.num_slices
    print(_summary(case), flush=True)
  print(_totals(found, num_valid, num_slices), flush=True)
  if num_valid < len(found):
    sys.exit(2)


if __name__ == "__main__":
  main()
