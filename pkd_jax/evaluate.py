"""Full-slice inference and the paper's metrics (RMSE, SSIM, PSNR) per case and map.

Inference covers whole slices and the whole series by the window rule of
:mod:`pkd_jax.inference` (the mean of the maps of T-frame windows at 0, 4, 8 of the 40-frame
series degraded to the model's factor), the same rule as validation and prediction.

Metrics (the paper's, section 2 of DESIGN.md): maps clipped to [0, range] of the data source
(``config.data.map_ranges``), then per slice RMSE in the map's units, SSIM with a Gaussian window
(sigma 1.5, 11 x 11, dm-pix) and PSNR = 10 log10(range^2 / MSE), averaged over the slices of a
case. Per-case values are kept, so that methods can be compared case by case.

Reference rows, scored by the same :func:`score` (:func:`reference_rows`, in every job report):
the best classical pipeline (:func:`evaluate_classical_best`: smoothing and bSVD / oSVD tuned on
the validation split, with the true and with the automatically selected AIF) and two sanity
floors, the constant healthy-tissue predictor (:func:`evaluate_constant`) and the time-to-peak
Tmax (:func:`evaluate_ttp`), so a reader sees at once whether a network learned anything.
"""

from __future__ import annotations

from typing import Any, Sequence

import jax.numpy as jnp
import ml_collections
import numpy as np
from scipy import stats

from pkd_jax import deconvolution, inference, losses
from pkd_jax.data import pipeline, preprocess, temporal
from pkd_jax.data.case import TARGET_MAPS, TMAX_THRESHOLD_S
from pkd_jax.errors import InputError

METRICS = ("rmse", "ssim", "psnr")  # the paper's, over the whole slice
BRAIN_METRICS = ("mae", "pearson", "spearman")  # inside the brain mask
CBF_FRACTION = 0.3  # RAPID's core: CBF below 30% of the healthy (contralateral) hemisphere's


def slice_metrics(pred: np.ndarray, target: np.ndarray, data_range: float) -> dict[str, np.ndarray]:
  """RMSE, SSIM, PSNR of each slice (N, H, W), both clipped to [0, data_range]."""
  pred = np.clip(pred, 0.0, data_range).astype(np.float32)
  target = np.clip(target, 0.0, data_range).astype(np.float32)
  mse = np.mean((pred - target) ** 2, axis=(1, 2))
  ssim = np.asarray(losses.ssim(jnp.asarray(pred), jnp.asarray(target), data_range=data_range))
  with np.errstate(divide="ignore"):
    psnr = 10 * np.log10(data_range ** 2 / mse)
  return {"rmse": np.sqrt(mse), "ssim": ssim, "psnr": psnr}


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


def score(records: Sequence[dict[str, Any]], preds: dict[str, np.ndarray],
          ranges: dict[str, float], voxel_ml: Sequence[float]) -> dict[str, Any]:
  """Per-case metrics of predicted maps (N slices, H, W) against the records' ground truth.

  records: the source's slice records (pipeline), N of them, with "case"; voxel_ml: per case.
  Returns {"cases": [case positions], "per_case": {map: {metric: (num_cases,)}},
  "volumes": {name: {"predicted": (num_cases,), "truth": (num_cases,)}},
  "tmax_gt6_dice": the Dice of Tmax > 6 s inside the brain over all the slices' voxels}; the
  per-case Dice is per_case["tmax"]["gt6_dice"] (1 where neither has any such voxel).
  """
  cases = np.array([r["case"] for r in records])
  masks = np.stack([r["brain_mask"] for r in records]).astype(bool)
  truth = {k: np.stack([r[k] for r in records]) for k in TARGET_MAPS}
  per_case: dict[str, dict[str, list]] = {k: {m: [] for m in METRICS + BRAIN_METRICS}
                                          for k in TARGET_MAPS}
  volumes: dict[str, dict[str, list]] = {}
  slice_values = {k: slice_metrics(preds[k], truth[k], float(ranges[k])) for k in TARGET_MAPS}
  for pos, case in enumerate(np.unique(cases)):
    rows = cases == case
    for k in TARGET_MAPS:
      for m in METRICS:
        per_case[k][m].append(float(slice_values[k][m][rows].mean()))
      for m, v in brain_metrics(preds[k][rows], truth[k][rows], masks[rows]).items():
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


def split_records(config: ml_collections.ConfigDict, split: str = "test"):
  """(records, voxel volume in ml per case, case info per case) of every slice of a split."""
  source = pipeline.make_source(config.data, split)
  records = [source[i] for i in range(len(source))]
  num_cases = len({r["case"] for r in records})
  return (records, [source.voxel_ml(c) for c in range(num_cases)],
          [source.case_info(c) for c in range(num_cases)])


def evaluate_variables(config: ml_collections.ConfigDict, model, variables, factor: int,
                       split: str = "test", batch_size: int = 4, records=None) -> dict[str, Any]:
  """Scores a model on every slice of a split, at a temporal factor (see :func:`score`).

  Also returns, for figures, "example": the ground truth and prediction of the slice with the
  most brain, and "lesion_slices": per case, the Tmax truth and prediction of its slice with the
  largest true Tmax > 6 s region (:func:`lesion_slices`). records: the result of
  :func:`split_records`, to reuse across models.
  """
  records, voxel_ml, _ = split_records(config, split) if records is None else records
  inputs = np.stack([inference.slice_input(r["scan"], factor, config.data.input_norm)
                     for r in records])
  preds = inference.predict(model, variables, inputs, config.data.patch.num_frames,
                            config.data.window_stride, batch_size)
  result = score(records, preds, dict(config.data.map_ranges), voxel_ml)
  example = max(range(len(records)), key=lambda i: records[i]["brain_mask"].sum())
  result["example"] = {"truth": {k: records[example][k] for k in TARGET_MAPS},
                       "prediction": {k: preds[k][example] for k in TARGET_MAPS}}
  result["lesion_slices"] = [{"case": int(records[i]["case"]), "truth": records[i]["tmax"],
                              "prediction": preds["tmax"][i]} for i in lesion_slices(records)]
  return result


def lesion_slices(records) -> list[int]:
  """Per case (in order), the index of its slice with the most brain voxels of true Tmax > 6 s
  (the slice with the most brain if it has none): chosen by the ground truth alone, so a figure
  of them shows the lesions a network misses as plainly as those it finds."""
  best: dict[int, tuple[tuple[float, float], int]] = {}
  for i, r in enumerate(records):
    brain = r["brain_mask"] > 0
    key = (float(np.sum(brain & (r["tmax"] > TMAX_THRESHOLD_S))), float(np.sum(brain)))
    if r["case"] not in best or key > best[r["case"]][0]:
      best[r["case"]] = (key, i)
  return [best[c][1] for c in sorted(best)]


# ----------------------------------------------------------------------------------------------
# The classical reference and the sanity floors, scored like the networks.

# Search grid of the best classical pipeline (tuned on the validation split). Spatial Gaussian
# sigma in mm: 0 (none) to 20 mm, beyond the heavy end of what perfusion software applies (an
# in-plane Gaussian of a few pixels; on the demo phantom, Tmax RMSE falls up to ~14 mm).
CLASSICAL_SPATIAL_SIGMAS_MM = (0.0, 2.0, 4.0, 7.0, 10.0, 14.0, 20.0)
CLASSICAL_TEMPORAL_SIGMAS_S = (0.0, 1.5, 3.0)  # temporal Gaussian sigma, s (0-2 frames of 1.5 s)
# (method, parameter): bSVD thresholds 10-30% of the largest singular value (Wu et al. 2003: 10%
# noise-free, clinical software 10-20%); oSVD oscillation index bounds 0.035 (dsc-mri-toolbox),
# 0.095 (Wu et al. 2003) and 0.2 (a smoother residue).
CLASSICAL_SVD = (("bsvd", 0.1), ("bsvd", 0.2), ("bsvd", 0.3), ("osvd", 0.035), ("osvd", 0.095),
                 ("osvd", 0.2))
# The search minimises the mean over validation cases of the range-normalised RMSE summed over
# these maps (CBV does not depend on the SVD; Tmax alone would pick the worst CBF settings).
CLASSICAL_OBJECTIVE_MAPS = ("tmax", "cbf")
AIF_MODES = {"true": "true AIF", "select": "selected AIF"}
# NIfTI sources: in-plane pixel taken as this field of view over the preprocessed width (the
# phantom's, and a typical head CT's; ISLES 2018's 256 px are ~0.9 mm); phantom: its own.
ASSUMED_FIELD_OF_VIEW_MM = 230.0
# TTP floor: light smoothing, fixed (not tuned): 4 mm in-plane, one 1.5 s frame in time.
TTP_SPATIAL_SIGMA_MM = 4.0
TTP_TEMPORAL_SIGMA_S = 1.5
# Constant predictor: the median over the brain voxels of this many training cases (the median
# is a healthy value: lesions cover well under half of the brain).
HEALTHY_REFERENCE_CASES = 16


def pixel_mm(config: ml_collections.ConfigDict) -> float:
  """In-plane pixel size (mm) of the preprocessed slices: the phantom's, or assumed for NIfTI."""
  data = config.data
  if data.source == "phantom":
    fov = data.phantom.get("field_of_view_mm", ASSUMED_FIELD_OF_VIEW_MM)
    return float(fov) / float(data.phantom.width)
  return ASSUMED_FIELD_OF_VIEW_MM / float(data.width)


def _cases(records_tuple, factor: int, aif_mode: str):
  """Per case: (record rows, degraded scan (S, T, H, W) HU, brain mask, frame times, degraded
  AIF)."""
  records, _, infos = records_tuple
  cases = np.array([r["case"] for r in records])
  for pos, case in enumerate(np.unique(cases)):
    rows = np.nonzero(cases == case)[0]
    scan = np.stack([records[i]["scan"] for i in rows]) * preprocess.HU_SCALE
    scan = temporal.degrade_np(scan, factor, axis=1)
    mask = np.stack([records[i]["brain_mask"] for i in rows]).astype(bool)
    times = infos[pos]["frame_times_s"]
    if aif_mode == "true":
      if infos[pos]["aif_hu"] is None:
        raise InputError("aif", "the data source has no true AIF; use the selected AIF ('select')")
      aif = temporal.degrade_np(np.asarray(infos[pos]["aif_hu"], np.float32), factor, axis=0)
    elif aif_mode == "select":
      aif, _ = deconvolution.select_aif(scan, mask, frame_times_s=times)
    else:
      raise InputError("aif", f"unknown AIF mode {aif_mode!r}; valid: {sorted(AIF_MODES)}")
    yield rows, scan, mask, times, aif


def _empty_preds(records) -> dict[str, np.ndarray]:
  return {k: np.zeros((len(records), *records[0][k].shape), np.float32) for k in TARGET_MAPS}


def _score(config, records_tuple, preds) -> dict[str, Any]:
  records, voxel_ml, _ = records_tuple
  return score(records, preds, dict(config.data.map_ranges), voxel_ml)


def _objective(result, ranges, maps) -> float:
  return float(np.mean(sum(result["per_case"][k]["rmse"] / float(ranges[k]) for k in maps)))


def _has_true_aif(records_tuple) -> bool:
  return all(info["aif_hu"] is not None for info in records_tuple[2])


def classical_search(config: ml_collections.ConfigDict, factor: int, aif_mode: str = "true",
                     split: str = "validation", records=None,
                     spatial_sigmas_mm: Sequence[float] | None = None,
                     temporal_sigmas_s: Sequence[float] | None = None,
                     svd_variants: Sequence[tuple[str, float]] | None = None,
                     objective_maps: Sequence[str] | None = None) -> list[dict[str, Any]]:
  """Every pipeline of the grid scored on a split: one row per (spatial sigma, temporal sigma,
  method, parameter) with its objective (see CLASSICAL_OBJECTIVE_MAPS), mean RMSE per map and
  the Tmax > 6 s Dice (pooled over the split, :func:`score`).

  Each smoothing is run once per case; the SVD variants share one deconvolution
  (deconvolution.perfusion_maps_variants). The AIF (true or selected from the unsmoothed,
  degraded scan) is smoothed in time like the scan. A grid argument left None takes the module's
  default (CLASSICAL_SPATIAL_SIGMAS_MM, CLASSICAL_TEMPORAL_SIGMAS_S, CLASSICAL_SVD,
  CLASSICAL_OBJECTIVE_MAPS).
  """
  if spatial_sigmas_mm is None:
    spatial_sigmas_mm = CLASSICAL_SPATIAL_SIGMAS_MM
  if temporal_sigmas_s is None:
    temporal_sigmas_s = CLASSICAL_TEMPORAL_SIGMAS_S
  svd_variants = CLASSICAL_SVD if svd_variants is None else svd_variants
  objective_maps = CLASSICAL_OBJECTIVE_MAPS if objective_maps is None else objective_maps
  records_tuple = split_records(config, split) if records is None else records
  records = records_tuple[0]
  ranges = dict(config.data.map_ranges)
  px = pixel_mm(config)
  cases = list(_cases(records_tuple, factor, aif_mode))
  rows = []
  for spatial_mm in spatial_sigmas_mm:
    for temporal_s in temporal_sigmas_s:
      preds = [_empty_preds(records) for _ in svd_variants]
      for case_rows, scan, mask, times, aif in cases:
        frames = float(temporal_s) / deconvolution.frame_interval_from_times(times, scan.shape[1])
        smoothed = deconvolution.smooth_series(scan, mask, float(spatial_mm) / px, frames)
        variants = deconvolution.perfusion_maps_variants(
            smoothed, deconvolution.smooth_curve(aif, frames), times, mask, svd_variants)
        for pred, maps in zip(preds, variants):
          for k in TARGET_MAPS:
            pred[k][case_rows] = maps[k]
      for (method, param), pred in zip(svd_variants, preds):
        result = _score(config, records_tuple, pred)
        rows.append(dict(
            method=method, svd_param=float(param), spatial_sigma_mm=float(spatial_mm),
            spatial_sigma_px=float(spatial_mm) / px, temporal_sigma_s=float(temporal_s),
            objective=_objective(result, ranges, objective_maps),
            **{f"{k}_rmse": float(np.mean(result["per_case"][k]["rmse"])) for k in TARGET_MAPS},
            tmax_gt6_dice=float(result["tmax_gt6_dice"])))
  return rows


def evaluate_classical(config: ml_collections.ConfigDict, factor: int, settings: dict[str, Any],
                       aif_mode: str = "true", split: str = "test", records=None) -> dict[str, Any]:
  """Scores one classical pipeline (deconvolution.classical_maps with settings: method,
  svd_param, spatial_sigma_px, temporal_sigma_s) like a model (:func:`score`)."""
  records_tuple = split_records(config, split) if records is None else records
  preds = _empty_preds(records_tuple[0])
  for case_rows, scan, mask, times, aif in _cases(records_tuple, factor, aif_mode):
    maps = deconvolution.classical_maps(
        scan, aif, times, mask, method=settings["method"], svd_param=settings["svd_param"],
        spatial_sigma_px=settings["spatial_sigma_px"],
        temporal_sigma_s=settings["temporal_sigma_s"])
    for k in TARGET_MAPS:
      preds[k][case_rows] = maps[k]
  return _score(config, records_tuple, preds)


def evaluate_classical_best(config: ml_collections.ConfigDict, factor: int, split: str = "test",
                            tune_split: str = "validation", aif_modes: Sequence[str] | None = None,
                            records=None, tune_records=None, **grid) -> dict[str, dict[str, Any]]:
  """The best classical pipeline a clinic would run, tuned on one split and scored on another.

  For each AIF mode ('true': the source's AIF, phantom only; 'select':
  deconvolution.select_aif on the degraded scan; default: both where the source has a true
  AIF, else 'select'), :func:`classical_search` scores the grid (keyword arguments
  spatial_sigmas_mm, temporal_sigmas_s, svd_variants, objective_maps override the defaults) on
  ``tune_split`` at the temporal factor; the pipeline with the lowest objective (the first on a
  tie) is then scored on ``split``.

  Returns {mode: result}: :func:`score`'s dict (per-case values, for paired t-tests) plus
  "method" (a row name, e.g. "classical oSVD (true AIF)"), "settings" (the chosen pipeline) and
  "search" (every grid row on the tuning split).
  """
  records = split_records(config, split) if records is None else records
  tune_records = split_records(config, tune_split) if tune_records is None else tune_records
  if aif_modes is None:
    aif_modes = ("true", "select") if _has_true_aif(records) else ("select",)
  out = {}
  for mode in aif_modes:
    if mode not in AIF_MODES:
      raise InputError("aif", f"unknown AIF mode {mode!r}; valid: {sorted(AIF_MODES)}")
    search = classical_search(config, factor, mode, records=tune_records, **grid)
    best = min(search, key=lambda row: row["objective"])
    settings = {k: best[k] for k in ("method", "svd_param", "spatial_sigma_mm", "spatial_sigma_px",
                                     "temporal_sigma_s")}
    result = evaluate_classical(config, factor, settings, mode, records=records)
    name = {"bsvd": "bSVD", "osvd": "oSVD"}[settings["method"]]
    result.update(method=f"classical {name} ({AIF_MODES[mode]})", settings=settings,
                  search=search, tune_split=tune_split)
    out[mode] = result
  return out


def healthy_values(config: ml_collections.ConfigDict, split: str = "train",
                   max_cases: int = HEALTHY_REFERENCE_CASES) -> dict[str, float]:
  """Healthy-tissue value of each map: the median of the ground truth over the brain voxels of
  the first ``max_cases`` cases of a split (default the training split: nothing of the test
  split leaks into the constant predictor)."""
  source = pipeline.make_source(config.data, split)
  values = {k: [] for k in TARGET_MAPS}
  for i in range(len(source)):
    record = source[i]
    if record["case"] >= max_cases:
      break
    brain = record["brain_mask"] > 0
    for k in TARGET_MAPS:
      values[k].append(record[k][brain])
  return {k: float(np.median(np.concatenate(v))) for k, v in values.items()}


def constant_maps(records, values: dict[str, float]) -> dict[str, np.ndarray]:
  """Maps (N, H, W) of the records' slices: values[map] inside the brain mask, 0 outside."""
  masks = np.stack([r["brain_mask"] for r in records]) > 0
  return {k: np.where(masks, np.float32(values[k]), np.float32(0)) for k in TARGET_MAPS}


def evaluate_constant(config: ml_collections.ConfigDict, split: str = "test", records=None,
                      values: dict[str, float] | None = None) -> dict[str, Any]:
  """Sanity floor: every map its healthy-tissue value inside the brain, 0 outside.

  values: per map (default :func:`healthy_values`, the training split's median in the brain).
  Returns :func:`score`'s dict plus "values".
  """
  records_tuple = split_records(config, split) if records is None else records
  values = healthy_values(config) if values is None else dict(values)
  result = _score(config, records_tuple, constant_maps(records_tuple[0], values))
  result["values"] = values
  return result


def evaluate_ttp(config: ml_collections.ConfigDict, factor: int, split: str = "test",
                 records=None, values: dict[str, float] | None = None, aif_mode: str | None = None,
                 spatial_sigma_mm: float = TTP_SPATIAL_SIGMA_MM,
                 temporal_sigma_s: float = TTP_TEMPORAL_SIGMA_S) -> dict[str, Any]:
  """Sanity floor for Tmax: tissue time-to-peak minus the AIF's (deconvolution.ttp_tmax) on the
  degraded scan after light smoothing. It gives no CBV or CBF: those maps are the constant
  predictor's (values as :func:`evaluate_constant`), so only its Tmax columns mean anything.
  aif_mode: 'true' (default where the source has one) or 'select'.
  Returns :func:`score`'s dict plus "aif_mode" and "values".
  """
  records_tuple = split_records(config, split) if records is None else records
  if aif_mode is None:
    aif_mode = "true" if _has_true_aif(records_tuple) else "select"
  values = healthy_values(config) if values is None else dict(values)
  preds = constant_maps(records_tuple[0], values)
  for case_rows, scan, mask, times, aif in _cases(records_tuple, factor, aif_mode):
    preds["tmax"][case_rows] = deconvolution.ttp_tmax(scan, aif, times, mask,
                                                      spatial_sigma_mm / pixel_mm(config),
                                                      temporal_sigma_s)
  result = _score(config, records_tuple, preds)
  result.update(aif_mode=aif_mode, values=values)
  return result


def reference_rows(config: ml_collections.ConfigDict, factors: Sequence[int], records=None,
                   tune_records=None) -> list[dict[str, Any]]:
  """Report rows of the classical reference and the sanity floors at each temporal factor.

  Per factor: the best classical pipeline per AIF mode (:func:`evaluate_classical_best`, key
  "classical_best_true_aif" / "classical_best_selected_aif"), the TTP floor ("ttp_tmax") and the
  constant healthy predictor ("constant_healthy", the same maps at every factor). Each row:
  method, key, factor, per_case, volumes, tmax_gt6_dice (pooled) and, where there are any,
  settings.
  """
  records = split_records(config, "test") if records is None else records
  values = healthy_values(config)
  constant = evaluate_constant(config, records=records, values=values)
  rows = []
  for factor in factors:
    best = evaluate_classical_best(config, factor, records=records, tune_records=tune_records)
    for mode, result in best.items():
      key = "classical_best_" + AIF_MODES[mode].replace(" ", "_").lower()
      rows.append(dict(method=result["method"], key=key, factor=factor,
                       per_case=result["per_case"], volumes=result["volumes"],
                       tmax_gt6_dice=result["tmax_gt6_dice"], settings=result["settings"]))
    ttp = evaluate_ttp(config, factor, records=records, values=values)
    rows.append(dict(method=f"TTP Tmax ({AIF_MODES[ttp['aif_mode']]})", key="ttp_tmax",
                     factor=factor, per_case=ttp["per_case"], volumes=ttp["volumes"],
                     tmax_gt6_dice=ttp["tmax_gt6_dice"],
                     settings=dict(spatial_sigma_mm=TTP_SPATIAL_SIGMA_MM,
                                   temporal_sigma_s=TTP_TEMPORAL_SIGMA_S)))
    rows.append(dict(method="constant healthy", key="constant_healthy", factor=factor,
                     per_case=constant["per_case"], volumes=constant["volumes"],
                     tmax_gt6_dice=constant["tmax_gt6_dice"], settings=dict(values=values)))
  return rows


def reference_notes(rows: Sequence[dict[str, Any]]) -> str:
  """Markdown: what the reference rows of :func:`reference_rows` ran (settings per row)."""
  lines = [f"Classical pipelines tuned on the validation split (grid: spatial Gaussian sigma "
           f"{', '.join(f'{s:g}' for s in CLASSICAL_SPATIAL_SIGMAS_MM)} mm in the brain mask, "
           f"temporal {', '.join(f'{s:g}' for s in CLASSICAL_TEMPORAL_SIGMAS_S)} s, "
           + ", ".join(f"{'bSVD threshold' if m == 'bsvd' else 'oSVD OI'} {p:g}"
                       for m, p in CLASSICAL_SVD)
           + "; minimising the mean of "
           + " + ".join(f"{k} RMSE / range" for k in CLASSICAL_OBJECTIVE_MAPS)
           + " over cases). Settings of the reference rows:", ""]
  for r in rows:
    s = r.get("settings") or {}
    factor = "full" if r["factor"] == 1 else f"1/{r['factor']}"
    if r.get("key", "").startswith("classical_best"):
      param = "threshold" if s["method"] == "bsvd" else "OI bound"
      text = (f"{param} {s['svd_param']:g}, spatial sigma {s['spatial_sigma_mm']:g} mm "
              f"({s['spatial_sigma_px']:.2f} px), temporal sigma {s['temporal_sigma_s']:g} s")
    elif r.get("key") == "ttp_tmax":
      text = (f"TTP(tissue) - TTP(AIF) after spatial {s['spatial_sigma_mm']:g} mm / temporal "
              f"{s['temporal_sigma_s']:g} s smoothing; its CBV and CBF are the constant's")
    elif r.get("key") == "constant_healthy":
      text = ("the training split's median in the brain: "
              + ", ".join(f"{k} {v:.3g}" for k, v in s["values"].items()))
    else:
      continue
    lines.append(f"- {r['method']}, {factor}: {text}")
  return "\n".join(lines) + "\n"
