"""The digital phantom for people: draw one case, or write cases as NIfTI in the ISLES 2018 layout.

    python -m pkd_jax.tools.phantom --show [--out phantom.png] [--case N] [--seed S]
    python -m pkd_jax.tools.phantom --write DIR [--num-cases N] [--size 256] [--frames 40]

The phantom itself is pkd_jax.data.phantom.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
from typing import Sequence

import numpy as np

from pkd_jax import fileio
from pkd_jax.data.case import Case
from pkd_jax.data.phantom import LABELS, PhantomConfig, generate_case
from pkd_jax.errors import InputError, exit_on_input_error



def _marked_voxels(case: Case, slice_index: int) -> dict[str, tuple[int, int]]:
  """One representative voxel per tissue class present in the slice: the one nearest its median CBF."""
  labels, cbf = case.labels[slice_index], case.maps["cbf"][slice_index]
  masks = case.masks
  healthy = masks["brain"][slice_index] & ~masks["core"][slice_index] & ~masks["penumbra"][slice_index]
  classes = {"gray matter": healthy & (labels == LABELS["gray_matter"]),
             "white matter": healthy & (labels == LABELS["white_matter"]),
             "penumbra": masks["penumbra"][slice_index], "core": masks["core"][slice_index]}
  marked = {}
  for name, mask in classes.items():
    if mask.sum() > 0:
      ys, xs = np.nonzero(mask)
      k = int(np.argmin(np.abs(cbf[ys, xs] - np.median(cbf[ys, xs]))))
      marked[name] = (int(ys[k]), int(xs[k]))
  return marked


def plot_case(case: Case, path: str, slice_index: int | None = None,
              clean_case: Case | None = None) -> str:
  """Writes a PNG of one case: frames, the AIF and marked tissue curves, and the true maps.

  clean_case, the same case without noise, adds the noise-free tissue curves as dashed lines.
  """
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  if slice_index is None:  # the slice with the most lesion, else the middle one
    lesion = (case.masks["core"] | case.masks["penumbra"]).sum(axis=(1, 2))
    slice_index = int(np.argmax(lesion)) if lesion.max() > 0 else case.num_slices // 2
  scan, times = case.scan_hu[slice_index], case.frame_times_s
  marked = _marked_voxels(case, slice_index)
  colours = {"gray matter": "tab:green", "white matter": "tab:blue", "penumbra": "tab:orange",
             "core": "tab:red"}
  fig = plt.figure(figsize=(15, 11), constrained_layout=True)
  grid = fig.add_gridspec(3, 4, height_ratios=[1, 0.8, 1])
  peak = int(np.argmax(case.aif_hu))
  for col, frame in enumerate(sorted({0, peak, min(peak + 4, case.num_frames - 1), case.num_frames - 1})):
    ax = fig.add_subplot(grid[0, col])
    ax.imshow(scan[frame], cmap="gray", vmin=0, vmax=100)
    for name, (y, x) in marked.items():
      ax.plot(x, y, "o", mfc="none", mec=colours[name], ms=8, mew=2)
    ax.set_title(f"frame {frame} (t = {times[frame]:.1f} s), HU window 0-100")
    ax.axis("off")
  ax = fig.add_subplot(grid[1, :])
  for name, (y, x) in marked.items():
    ax.plot(times, scan[:, y, x], "-o", ms=3, color=colours[name],
            label=f"{name}: CBF {case.maps['cbf'][slice_index, y, x]:.1f}, "
                  f"Tmax {case.maps['tmax'][slice_index, y, x]:.1f} s")
    if clean_case is not None:
      ax.plot(times, clean_case.scan_hu[slice_index, :, y, x], "--", color=colours[name], lw=1)
  ax.set_xlabel("time (s)")
  ax.set_ylabel("tissue attenuation (HU); dashed: noise-free")
  twin = ax.twinx()
  twin.plot(times, case.aif_hu, "k--", label="AIF (enhancement)")
  twin.set_ylabel("AIF enhancement (HU)")
  ax.legend(loc="upper right", fontsize=8)
  twin.legend(loc="upper left", fontsize=8)
  p = case.params
  ax.set_title(f"{case.case_id}: residue {p.get('residue_shape')}, frame interval "
               f"{case.frame_interval_s:.2f} s, {p.get('mas', 0):.0f} mAs "
               f"(noise sigma {p.get('noise_sigma_hu', 0):.1f} HU), {len(p.get('lesions', []))} lesion(s)")
  ranges = {"tmax": (0, 16, "Tmax (s)"), "cbv": (0, 6, "CBV (ml/100 g)"), "cbf": (0, 80, "CBF (ml/100 g/min)")}
  for col, (key, (low, high, title)) in enumerate(ranges.items()):
    ax = fig.add_subplot(grid[2, col])
    im = ax.imshow(case.maps[key][slice_index], cmap="jet" if key == "tmax" else "viridis", vmin=low, vmax=high)
    for mask, colour in ((case.masks["penumbra"], "white"), (case.masks["core"], "magenta")):
      if mask[slice_index].any():
        ax.contour(mask[slice_index], levels=[0.5], colors=colour, linewidths=0.8)
    ax.set_title(f"ground truth {title}")
    ax.axis("off")
    fig.colorbar(im, ax=ax, fraction=0.046)
  ax = fig.add_subplot(grid[2, 3])
  ax.imshow(case.labels[slice_index], cmap="tab10", vmin=0, vmax=9, interpolation="nearest")
  ax.set_title("tissue labels (contours: penumbra white, core magenta)")
  ax.axis("off")
  return fileio.save_figure(fig, path)


@exit_on_input_error
def main(argv: Sequence[str] | None = None) -> None:
  parser = argparse.ArgumentParser(prog="python -m pkd_jax.tools.phantom",
                                   description=__doc__.split("\n")[0])
  parser.add_argument("--show", action="store_true", help="write a PNG of one case")
  parser.add_argument("--out", default="phantom.png", help="PNG path for --show")
  parser.add_argument("--write", metavar="DIR", help="write cases in the ISLES 2018 layout to DIR")
  parser.add_argument("--num-cases", type=int, default=4, help="cases to write with --write")
  parser.add_argument("--seed", type=int, default=0)
  parser.add_argument("--case", type=int, default=0, help="case index (first index with --write)")
  parser.add_argument("--slices", type=int, default=PhantomConfig.num_slices)
  parser.add_argument("--size", type=int, default=256, help="in-plane size")
  parser.add_argument("--frames", type=int, default=40)
  parser.add_argument("--mas", type=float, help="fixed dose (mAs); default: drawn per case")
  args = parser.parse_args(argv)
  if not (args.show or args.write):
    parser.error("nothing to do: give --show and/or --write DIR")
  if args.write and args.num_cases < 1:
    raise InputError("--num-cases", f"must be at least 1 to write cases, got {args.num_cases}")
  kwargs = dict(height=args.size, width=args.size, num_frames=args.frames, num_slices=args.slices)
  if args.mas is not None:
    if args.mas <= 0:
      raise InputError("--mas", f"must be positive, got {args.mas}")
    kwargs["mas"] = (args.mas, args.mas)
  config = PhantomConfig(**kwargs)
  if args.show:
    out_dir = os.path.dirname(os.path.abspath(args.out))
    if not os.path.isdir(out_dir):
      raise InputError(args.out, "the folder for the figure does not exist")
    case = generate_case(config, args.seed, args.case)
    clean = generate_case(dataclasses.replace(config, noise=False), args.seed, args.case)
    print(f"wrote {plot_case(case, args.out, clean_case=clean)}")
  if args.write:
    from pkd_jax.data import nifti  # pylint: disable=import-outside-toplevel
    cases = (generate_case(config, args.seed, args.case + k) for k in range(args.num_cases))
    paths = nifti.write_isles_dataset(cases, args.write, start=args.case + 1)
    print(f"wrote {len(paths)} cases to {args.write}")


if __name__ == "__main__":
  main()
