"""Results tables (Markdown and CSV) and comparison figures."""

from __future__ import annotations

import csv
import io
import os
from typing import Any, Sequence

import numpy as np

from pkd_jax.data.case import MAP_UNITS, TARGET_MAPS
from pkd_jax.evaluate import METRICS

TITLES = {"tmax": "Tmax", "cbv": "CBV", "cbf": "CBF"}
BETTER = {"rmse": min, "ssim": max, "psnr": max}


def write_text_atomic(path: str, text: str | bytes) -> None:
  tmp = f"{path}.tmp"
  with open(tmp, "wb" if isinstance(text, bytes) else "w") as f:
    f.write(text)
  os.replace(tmp, path)


def results_table(rows: Sequence[dict[str, Any]], ranges: dict[str, float]) -> tuple[str, str]:
  """(Markdown, CSV) of methods x {map x metric}: mean +/- std over cases, best marked in bold.

  rows: {"method": str, "factor": int, "per_case": {map: {metric: (cases,)}}}.
  """
  means = [{(k, m): float(np.mean(r["per_case"][k][m])) for k in TARGET_MAPS for m in METRICS}
           for r in rows]
  best = {key: BETTER[key[1]](mean[key] for mean in means) for key in means[0]} if rows else {}
  header = ["method", "factor"] + [f"{TITLES[k]} {m.upper()}" for k in TARGET_MAPS for m in METRICS]
  lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
  out = io.StringIO()
  writer = csv.writer(out)
  writer.writerow(["method", "factor"] + [f"{k}_{m}_{s}" for k in TARGET_MAPS for m in METRICS
                                          for s in ("mean", "std")])
  for row, mean in zip(rows, means):
    cells, values = [row["method"], f"1/{row['factor']}" if row["factor"] > 1 else "full"], []
    for k in TARGET_MAPS:
      for m in METRICS:
        std = float(np.std(row["per_case"][k][m]))
        text = f"{mean[(k, m)]:.3f} ± {std:.3f}"
        cells.append(f"**{text}**" if mean[(k, m)] == best[(k, m)] else text)
        values += [f"{mean[(k, m)]:.5f}", f"{std:.5f}"]
    lines.append("| " + " | ".join(cells) + " |")
    writer.writerow([row["method"], row["factor"], *values])
  units = ", ".join(f"{TITLES[k]} [0, {ranges[k]:g}] {MAP_UNITS[k]}" for k in TARGET_MAPS)
  cases = len(next(iter(rows[0]["per_case"]["tmax"].values()))) if rows else 0
  lines.append("")
  lines.append(f"Mean ± standard deviation over {cases} test cases; RMSE in the maps' units, "
               f"SSIM (Gaussian sigma 1.5) and PSNR with maps clipped to the ranges {units}. "
               "Best per column in bold.")
  return "\n".join(lines) + "\n", out.getvalue()


def comparison_figure(truth: dict[str, np.ndarray], predictions: dict[str, dict[str, np.ndarray]],
                      ranges: dict[str, float], path: str, title: str = "") -> str:
  """A Figure 2 style PNG: rows ground truth and methods, columns Tmax, CBV, CBF, one colour
  scale per column; the last row is the first method's absolute error."""
  import matplotlib  # pylint: disable=import-outside-toplevel
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=import-outside-toplevel

  first = next(iter(predictions))
  rows = [("ground truth", truth)] + list(predictions.items())
  rows.append((f"|{first} - truth|", {k: np.abs(predictions[first][k] - truth[k]) for k in truth}))
  fig, axes = plt.subplots(len(rows), 3, figsize=(9, 2.8 * len(rows)), squeeze=False,
                           constrained_layout=True)
  for col, key in enumerate(TARGET_MAPS):
    for row, (name, maps) in enumerate(rows):
      ax = axes[row, col]
      error_row = row == len(rows) - 1
      image = ax.imshow(maps[key], cmap="magma" if error_row else ("jet" if key == "tmax" else "viridis"),
                        vmin=0, vmax=ranges[key] * (0.5 if error_row else 1))
      ax.set_xticks([])
      ax.set_yticks([])
      if row == 0:
        ax.set_title(f"{TITLES[key]} ({MAP_UNITS[key]})")
      if col == 0:
        ax.set_ylabel(name)
      if row in (0, len(rows) - 1):
        fig.colorbar(image, ax=axes[:-1, col] if row == 0 else ax, shrink=0.8)
  if title:
    fig.suptitle(title)
  tmp = f"{path}.tmp.png"
  fig.savefig(tmp, dpi=80)
  plt.close(fig)
  os.replace(tmp, path)
  return path
