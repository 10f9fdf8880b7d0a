"""Read and validate every CTP case of a NIfTI dataset; one line per case:

    python -m pkd_jax.tools.validate ROOT [--layout isles2018|folder] [--pattern ROLE=GLOB ...]
        [--no-maps] [--frame-interval SECONDS]

The readers are pkd_jax.data.nifti.
"""

from __future__ import annotations

import argparse
from typing import Sequence

from pkd_jax.data.case import Case
from pkd_jax.data.nifti import LAYOUTS, ROLES, find_cases, parse_patterns, read_case
from pkd_jax.errors import exit_on_input_error


def _summary(case: Case) -> str:
  num_slices, num_frames, height, width = case.scan_hu.shape
  dz, dx, dy = case.spacing_mm
  maps = ", ".join(case.maps) or "none"
  masks = ", ".join(case.masks) or "none"
  return (f"{case.case_id}: (S, T, H, W) = ({num_slices}, {num_frames}, {height}, {width}), "
          f"frame interval {case.frame_interval_s:.4g} s ({case.params['frame_interval_source']}), "
          f"spacing {dz:.4g} x {dx:.4g} x {dy:.4g} mm, maps: {maps}, masks: {masks}")


@exit_on_input_error
def main(argv: Sequence[str] | None = None) -> None:
  parser = argparse.ArgumentParser(
      prog="python -m pkd_jax.tools.validate",
      description="Read and validate every CTP case under ROOT; print one line per case.")
  parser.add_argument("root", help="the data folder, holding one folder per case")
  parser.add_argument("--layout", default="isles2018", choices=list(LAYOUTS))
  parser.add_argument("--pattern", action="append", default=[], metavar="ROLE=GLOB",
                      help=f"glob relative to a case folder for a role ({', '.join(ROLES)}); "
                      "repeatable; overrides the layout's preset")
  parser.add_argument("--no-maps", action="store_true",
                      help="do not require the tmax, cbv and cbf maps")
  parser.add_argument("--frame-interval", type=float, metavar="SECONDS",
                      help="seconds per frame, overriding the headers")
  args = parser.parse_args(argv)
  patterns = parse_patterns(args.pattern)
  case_dirs = find_cases(args.root, args.layout, patterns)
  num_slices = 0
  for case_dir in case_dirs:
    case = read_case(case_dir, args.layout, patterns, require_maps=not args.no_maps,
                     frame_interval_s=args.frame_interval)
    num_slices += case.num_slices
    print(_summary(case), flush=True)
  print(f"{len(case_dirs)} cases, {num_slices} slices in {args.root}: all valid")


if __name__ == "__main__":
  main()
