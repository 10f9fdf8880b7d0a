"""Results tables (Markdown and CSV) and comparison figures."""

from __future__ import annotations

import csv
import io
from typing import Any, Sequence

import numpy as np

from pkd_jax import fileio
from pkd_jax.data.case import MAP_UNITS, TARGET_MAPS, TMAX_THRESHOLD_S
from pkd_jax.metrics import METRICS, paired_t_test

TITLES = {"tmax": "Tmax", "cbv": "CBV", "cbf": "CBF"}
BETTER = {"rmse": min, "ssim": max, "psnr": max}


def results_table(rows: Sequence[dict[str, Any]], ranges: dict[str, float],
                  reference: str | None = None) -> tuple[str, str]:
  """(Markdown, CSV) in the layout of the paper's Table 2.

  rows: {"method": str, "factor": int, "per_case": {map: {metric: (cases,)}}}. Rows are grouped
  by temporal factor (full resolution first); each cell is the mean +/- std over cases, the best
  per factor in bold. With a reference method (the PKD student), every other method at the same
  factor gets, per map, the p-value of a one-tailed paired t-test on per-case RMSE (H1: the
  reference's RMSE is lower).
  """
  rows = sorted(rows, key=lambda r: r["factor"])
  mean = lambda r, k, m: float(np.mean(r["per_case"][k][m]))
  best = {}
  for r in rows:
    for k in TARGET_MAPS:
      for m in METRICS:
        key = (r["factor"], k, m)
        best[key] = BETTER[m](best.get(key, mean(r, k, m)), mean(r, k, m))
  ref = {r["factor"]: r for r in rows if r["method"] == reference}
  header = (["method", "factor"] + [f"{TITLES[k]} {m.upper()}" for k in TARGET_MAPS for m in METRICS]
            + [f"p {TITLES[k]} RMSE" for k in TARGET_MAPS])
  lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
  out = io.StringIO()
  writer = csv.writer(out)
  writer.writerow(["method", "factor"] + [f"{k}_{m}_{s}" for k in TARGET_MAPS for m in METRICS
                                          for s in ("mean", "std")]
                  + [f"{k}_rmse_p" for k in TARGET_MAPS])
  for r in rows:
    cells, values = [r["method"], f"1/{r['factor']}" if r["factor"] > 1 else "full"], []
    for k in TARGET_MAPS:
      for m in METRICS:
        value, std = mean(r, k, m), float(np.std(r["per_case"][k][m]))
        text = f"{value:.3f} ± {std:.3f}"
        cells.append(f"**{text}**" if value == best[(r["factor"], k, m)] else text)
        values += [f"{value:.5f}", f"{std:.5f}"]
    p_values = []
    for k in TARGET_MAPS:
      other = ref.get(r["factor"])
      p = (paired_t_test(other["per_case"][k]["rmse"], r["per_case"][k]["rmse"], "less")
           if other is not None and other is not r else float("nan"))
      p_values.append(p)
      cells.append("—" if np.isnan(p) else f"{p:.3g}")
    lines.append("| " + " | ".join(cells) + " |")
    writer.writerow([r["method"], r["factor"], *values, *[f"{p:.5g}" for p in p_values]])
  units = ", ".join(f"{TITLES[k]} [0, {ranges[k]:g}] {MAP_UNITS[k]}" for k in TARGET_MAPS)
  cases = len(rows[0]["per_case"]["tmax"]["rmse"]) if rows else 0
  lines.append("")
  lines.append(f"Mean ± standard deviation over {cases} test cases; RMSE in the maps' units, "
               f"SSIM (Gaussian sigma 1.5) and PSNR with maps clipped to the ranges {units}. "
               "Best per temporal factor in bold."
               + (f" p: one-tailed paired t-test of per-case RMSE, H1: {reference} is lower."
                  if reference else ""))
  return "\n".join(lines) + "\n", out.getvalue()


def volumes_table(rows: Sequence[dict[str, Any]]) -> str:
  """Markdown: the RAPID-style volumes per method, predicted against ground truth (ml).

  rows: {"method", "factor", "volumes": {name: {"predicted": (cases,), "truth": (cases,)}}}.
  """
  names = {"tmax_gt_6s_ml": "Tmax > 6 s", "cbf_lt_30pct_ml": "CBF < 30%"}
  header = ["method", "factor"] + [f"{label} {what}" for label in names.values()
                                   for what in ("predicted (ml)", "truth (ml)", "mean abs. error (ml)")]
  lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
  for r in rows:
    cells = [r["method"], f"1/{r['factor']}" if r["factor"] > 1 else "full"]
    for name in names:
      v = r["volumes"][name]
      cells += [f"{np.mean(v['predicted']):.2f}", f"{np.mean(v['truth']):.2f}",
                f"{np.mean(np.abs(v['predicted'] - v['truth'])):.2f}"]
    lines.append("| " + " | ".join(cells) + " |")
  return "\n".join(lines) + "\n"


def _label_panel(ax, title: str, ylabel: str) -> None:
  """An image panel of a figure grid: no ticks; a column title and a row label where given."""
  ax.set_xticks([])
  ax.set_yticks([])
  if title:
    ax.set_title(title)
  if ylabel:
    ax.set_ylabel(ylabel)


def comparison_figure(truth: dict[str, np.ndarray], predictions: dict[str, dict[str, np.ndarray]],
                      ranges: dict[str, float], path: str, title: str = "",
                      threshold_s: float = TMAX_THRESHOLD_S) -> str:
  """A Figure 2 style PNG: rows ground truth and methods, columns Tmax, CBV, CBF; the last row is
  the first method's absolute error. Each column has its colour bar, with units, under its maps
  (and another under its error), and every panel outlines the true Tmax > threshold_s region, so
  what a method found and missed shows at once."""
  import matplotlib  # pylint: disable=import-outside-toplevel
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=import-outside-toplevel

  first = next(iter(predictions))
  rows = [("ground truth", truth)] + list(predictions.items())
  rows.append((f"|{first} - truth|", {k: np.abs(predictions[first][k] - truth[k]) for k in truth}))
  lesion = np.asarray(truth["tmax"]) > threshold_s
  fig, axes = plt.subplots(len(rows), 3, figsize=(9, 2.6 * len(rows) + 1.0), squeeze=False,
                           constrained_layout=True)
  for col, key in enumerate(TARGET_MAPS):
    for row, (name, maps) in enumerate(rows):
      ax = axes[row, col]
      error_row = row == len(rows) - 1
      image = ax.imshow(maps[key], cmap="magma" if error_row else ("jet" if key == "tmax" else "viridis"),
                        vmin=0, vmax=ranges[key] * (0.5 if error_row else 1))
      if lesion.any():
        ax.contour(lesion, levels=[0.5], colors="white", linewidths=0.8)
      _label_panel(ax, TITLES[key] if row == 0 else "", name if col == 0 else "")
      if row == len(rows) - 2:  # the maps' scale, under the column's last map
        fig.colorbar(image, ax=axes[:-1, col], location="bottom", shrink=0.9, aspect=25,
                     label=f"{TITLES[key]} ({MAP_UNITS[key]})")
      elif error_row:
        fig.colorbar(image, ax=ax, location="bottom", shrink=0.9, aspect=25,
                     label=f"|error| ({MAP_UNITS[key]})")
  outline = f"white: the true Tmax > {threshold_s:g} s region" if lesion.any() else \
      f"no true Tmax > {threshold_s:g} s region in this slice"
  fig.suptitle(f"{title}\n{outline}" if title else outline)
  return fileio.save_figure(fig, path)


def lesion_figure(slices: dict[str, Sequence[dict[str, Any]]], tmax_range: float, path: str,
                  threshold_s: float = TMAX_THRESHOLD_S, title: str = "") -> str:
  """Tmax of one slice per test case (columns) for the ground truth and each method (rows), with
  the true Tmax > threshold_s region outlined in white on every panel.

  slices: row name -> per case {"case", "truth", "prediction"} (evaluate.lesion_slices' choice);
  the first row drawn is the ground truth of the first entry.
  """
  import matplotlib  # pylint: disable=import-outside-toplevel
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=import-outside-toplevel

  first = next(iter(slices.values()))
  rows = [("ground truth", [s["truth"] for s in first])]
  rows += [(name, [s["prediction"] for s in per_case]) for name, per_case in slices.items()]
  fig, axes = plt.subplots(len(rows), len(first), figsize=(2.3 * len(first) + 1, 2.3 * len(rows)),
                           squeeze=False, constrained_layout=True)
  for row, (name, images) in enumerate(rows):
    for col, image in enumerate(images):
      ax = axes[row, col]
      shown = ax.imshow(image, cmap="jet", vmin=0, vmax=tmax_range)
      truth = first[col]["truth"]
      if np.any(truth > threshold_s):
        ax.contour(truth > threshold_s, levels=[0.5], colors="white", linewidths=0.8)
      _label_panel(ax, f"case {first[col]['case']}" if row == 0 else "", name if col == 0 else "")
  fig.colorbar(shown, ax=axes, shrink=0.6, label=f"{TITLES['tmax']} ({MAP_UNITS['tmax']})")
  fig.suptitle(title or f"Tmax; white: the true Tmax > {threshold_s:g} s region")
  return fileio.save_figure(fig, path)


def learning_curves(history, path: str, title: str = "",
                    floors: dict[str, dict[str, float]] | None = None,
                    switches: Sequence[tuple[int, str]] = ()) -> str:
  """The learning curves of a run (its validation.json), or of several ({name: history}):
  validation RMSE of each map in its units and the Dice of Tmax > 6 s over steps, one panel each;
  floors: optional horizontal lines {name: {"tmax_rmse": ..., "cbv_rmse": ..., "cbf_rmse": ...,
  "tmax_gt6_dice": ...}}; switches: vertical lines (step, label), e.g. PKD's teacher switches."""
  import matplotlib  # pylint: disable=import-outside-toplevel
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=import-outside-toplevel

  histories = history if isinstance(history, dict) else {"network": history}
  if not histories or not all(histories.values()):
    raise ValueError("learning_curves: a history holds no validation")
  panels = [(f"{k}/rmse_units", f"{k}_rmse", f"{TITLES[k]} RMSE ({MAP_UNITS[k]})")
            for k in TARGET_MAPS] + [("tmax_gt6/dice", "tmax_gt6_dice", "Tmax > 6 s Dice")]
  fig, axes = plt.subplots(1, len(panels), figsize=(3.6 * len(panels), 3.2),
                           constrained_layout=True)
  for ax, (key, floor_key, label) in zip(axes, panels):
    for i, (name, runs) in enumerate(histories.items()):
      ax.plot([h["step"] for h in runs], [h[key] for h in runs], marker="o", markersize=3,
              color=f"C{i}", label=name)
    for i, (name, values) in enumerate((floors or {}).items()):
      if floor_key in values:
        ax.axhline(values[floor_key], color=f"C{len(histories) + i}", linestyle="--", label=name)
    for step, text in switches:
      ax.axvline(step, color="grey", linestyle=":", linewidth=1)
      ax.annotate(text, (step, 1.0), xycoords=("data", "axes fraction"), rotation=90,
                  fontsize="x-small", va="top", ha="right", color="grey")
    ax.set_xlabel("step")
    ax.set_title(label)
  axes[0].legend(fontsize="small")
  if title:
    fig.suptitle(title)
  return fileio.save_figure(fig, path)
