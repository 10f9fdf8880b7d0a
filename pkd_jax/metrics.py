"""The paper's metrics and the statistics that compare methods, as pure functions of predicted and
true maps (numpy).

Metrics (the paper's, section 2 of DESIGN.md): maps clipped to [0, range] of the data source
(``config.data.map_ranges``), then per slice RMSE in the map's units, SSIM with a Gaussian window
(sigma 1.5, 11 x 11, dm-pix) and PSNR = 10 log10(range^2 / MSE), averaged over the slices of a
case. Per-case values are kept (:func:`score`), so that methods can be compared case by case
(:func:`paired_t_test`). Inside the brain also MAE and correlations, the Dice of the Tmax > 6 s
region and RAPID-style lesion volumes.
"""

from __future__ import annotations

from typing import Any, Sequence

import jax
import numpy as np
from scipy import stats

from pkd_jax import losses
from pkd_jax.data.case import TARGET_MAPS, TMAX_THRESHOLD_S

METRICS = ("rmse", "ssim", "psnr")  # the paper's, over the whole slice
BRAIN_METRICS = ("mae", "pearson", "spearman")  # inside the brain mask
CBF_FRACTION = 0.3  # RAPID's core: CBF below 30% of the healthy (contralateral) hemisphere's


def slice_metrics(pred: np.ndarray, target: np.ndarray, data_range: float,
                  names: Sequence[str] = METRICS) -> dict[str, np.ndarray]:
  """RMSE, SSIM, PSNR (those in ``names``) of each slice (N, H, W), both clipped to
  [0, data_range]."""
  _check_names(names, METRICS)
  pred = np.clip(pred, 0.0, data_range).astype(np.float32)
  target = np.clip(target, 0.0, data_range).astype(np.float32)
  mse = np.mean((pred - target) ** 2, axis=(1, 2))
  out = {"rmse": np.sqrt(mse)}
  if "ssim" in names:
    out["ssim"] = np.asarray(_ssim(pred, target, data_range=data_range))
  if "psnr" in names:
    with np.errstate(divide="ignore"):
      out["psnr"] = 10 * np.log10(data_range ** 2 / mse)
  return {k: out[k] for k in names}


# Jitted once per (shape, range): run eagerly, dm_pix's vmapped filters are traced on every call.
_ssim = jax.jit(losses.ssim, static_argnames=("data_range",))


def _check_names(names: Sequence[str], valid: Sequence[str]) -> None:
  unknown = sorted(set(names) - set(valid))
  if unknown:
    raise ValueError(f"unknown metric(s) {unknown}; valid: {', '.join(valid)}")


def brain_metrics(pred: np.ndarray, target: np.ndarray, mask: np.ndarray) -> dict[str, float]:
  """MAE (map units) and Pearson / Spearman correlation over the voxels of a mask (any shape)."""
  p, t = pred[mask.astype(bool)], target[mask.astype(bool)]
  if p.size < 3 or np.ptp(p) == 0 or np.ptp(t) == 0:  # constant: no correlation (np.std of a
    # constant float32 array can come out as a rounding residue, not 0)
    return {"mae": float(np.mean(np.abs(p - t))) if p.size else float("nan"),
            "pearson": float("nan"), "spearman": float("nan")}
  return {"mae": float(np.mean(np.abs(p - t))), "pearson": float(stats.pearsonr(p, t)[0]),
          "spearman": float(stats.spearmanr(p, t)[0])}


def lesion_volumes_ml(tmax: np.ndarray, cbf: np.ndarray, mask: np.ndarray,
                      voxel_ml: float) -> dict[str, float]:
  """The volumes radiologists read from RAPID, for one case ((S, H, W) maps, brain mask).

  hypoperfusion: Tmax > 6 s. core: CBF below 30% of the healthy CBF, taken as the median CBF of
  the hemisphere (column half) with the smaller Tmax > 6 s volume, i.e. the contralateral side.
  """
  mask = mask.astype(bool)
  hypo = mask & (tmax > TMAX_THRESHOLD_S)
  half = tmax.shape[-1] // 2
  sides = [np.zeros_like(mask), np.zeros_like(mask)]
  sides[0][..., :half], sides[1][..., half:] = True, True
  healthy = min(sides, key=lambda side: (hypo & side).sum()) & mask
  reference = np.median(cbf[healthy]) if healthy.any() else 0.0
  core = mask & (cbf < CBF_FRACTION * reference)
  return {"tmax_gt_6s_ml": float(hypo.sum() * voxel_ml), "cbf_lt_30pct_ml": float(core.sum() * voxel_ml)}


def paired_t_test(a: Sequence[float], b: Sequence[float], alternative: str = "less") -> float:
  """One-tailed paired t-test p-value (scipy.stats.ttest_rel); "less": H1 mean(a - b) < 0."""
  a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
  if len(a) < 2 or np.allclose(a, b):
    return float("nan")
  return float(stats.ttest_rel(a, b, alternative=alternative).pvalue)


def holm(p_values: Sequence[float]) -> list[float]:
  """Holm-Bonferroni adjusted p-values (Holm 1979) of one family of tests: the i-th smallest of m
  is multiplied by m - i + 1, made monotone and capped at 1; NaNs (tests not done) are left out
  of the family and stay NaN. Written here: scipy has no Holm (statsmodels is not a dependency).
  """
  p = np.asarray(p_values, np.float64)
  out = np.full(p.shape, np.nan)
  done = np.flatnonzero(~np.isnan(p))
  order = done[np.argsort(p[done], kind="stable")]
  m, running = len(order), 0.0
  for i, j in enumerate(order):
    running = max(running, min(1.0, (m - i) * p[j]))
    out[j] = running
  return [float(x) for x in out]


def score(records: Sequence[dict[str, Any]], preds: dict[str, np.ndarray],
          ranges: dict[str, float], voxel_ml: Sequence[float],
          names: Sequence[str] = METRICS + BRAIN_METRICS) -> dict[str, Any]:
  """Per-case metrics of predicted maps (N slices, H, W) against the records' ground truth.

  records: the source's slice records (pipeline), N of them, with "case"; voxel_ml: per case;
  names: the metrics to compute (of METRICS and BRAIN_METRICS; a parameter search needs only
  RMSE, and SSIM and the correlations were most of its time).
  Returns {"cases": [case positions], "per_case": {map: {metric: (num_cases,)}},
  "volumes": {name: {"predicted": (num_cases,), "truth": (num_cases,)}},
  "tmax_gt6_dice": the Dice of Tmax > 6 s inside the brain over all the slices' voxels}; the
  per-case Dice is per_case["tmax"]["gt6_dice"] (1 where neither has any such voxel).
  """
  cases = np.array([r["case"] for r in records])
  masks = np.stack([r["brain_mask"] for r in records]).astype(bool)
  truth = {k: np.stack([r[k] for r in records]) for k in TARGET_MAPS}
  _check_names(names, METRICS + BRAIN_METRICS)
  on_slices = [m for m in METRICS if m in names]
  in_brain = any(m in names for m in BRAIN_METRICS)
  per_case: dict[str, dict[str, list]] = {k: {m: [] for m in names} for k in TARGET_MAPS}
  volumes: dict[str, dict[str, list]] = {}
  slice_values = {k: slice_metrics(preds[k], truth[k], float(ranges[k]), on_slices)
                  for k in TARGET_MAPS}
  for pos, case in enumerate(np.unique(cases)):
    rows = cases == case
    for k in TARGET_MAPS:
      for m in on_slices:
        per_case[k][m].append(float(slice_values[k][m][rows].mean()))
      if in_brain:
        for m, v in brain_metrics(preds[k][rows], truth[k][rows], masks[rows]).items():
          if m in names:
            per_case[k][m].append(v)
    per_case["tmax"].setdefault("gt6_dice", []).append(
        tmax_dice(preds["tmax"][rows], truth["tmax"][rows], masks[rows]))
    for which, maps in (("predicted", preds), ("truth", truth)):
      for name, v in lesion_volumes_ml(maps["tmax"][rows], maps["cbf"][rows], masks[rows],
                                       voxel_ml[pos]).items():
        volumes.setdefault(name, {"predicted": [], "truth": []})[which].append(v)
  return {"cases": [int(c) for c in np.unique(cases)],
          "per_case": {k: {m: np.array(v) for m, v in d.items()} for k, d in per_case.items()},
          "volumes": {n: {w: np.array(v) for w, v in d.items()} for n, d in volumes.items()},
          "tmax_gt6_dice": tmax_dice(preds["tmax"], truth["tmax"], masks)}


def tmax_dice(pred: np.ndarray, target: np.ndarray, mask: np.ndarray) -> float:
  """Dice of the Tmax > 6 s regions (RAPID's hypoperfusion) inside a mask; 1 when both are empty."""
  p = mask & (pred > TMAX_THRESHOLD_S)
  t = mask & (target > TMAX_THRESHOLD_S)
  total = p.sum() + t.sum()
  return float(2 * (p & t).sum() / total) if total else 1.0
