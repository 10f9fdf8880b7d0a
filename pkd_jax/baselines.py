"""Reference rows scored like the networks (pkd_jax.metrics.score), in every report.

The best classical pipeline (:func:`evaluate_classical_best`: smoothing and bSVD / oSVD tuned on
the validation split, with the true and with the automatically selected AIF) and two sanity
floors, the constant healthy-tissue predictor (:func:`evaluate_constant`) and the time-to-peak
Tmax (:func:`evaluate_ttp`), so a reader sees at once whether a network learned anything
(:func:`reference_rows`).
"""

from __future__ import annotations

from typing import Any, Sequence

import ml_collections
import numpy as np

from pkd_jax import deconvolution, metrics
from pkd_jax.data import pipeline, preprocess, temporal
from pkd_jax.data.case import TARGET_MAPS
from pkd_jax.errors import InputError
from pkd_jax.evaluate import split_records


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
# Named grids (config.reference.classical_grid): the whole grid above, or the "test" scale's two
# pipelines (a job's reference rows in seconds instead of ~40 s).
CLASSICAL_GRIDS = {
    "full": {},
    "small": dict(spatial_sigmas_mm=(0.0, 10.0), temporal_sigmas_s=(0.0,),
                  svd_variants=(("osvd", 0.095),)),
}
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


def _score(config, records_tuple, preds, names=metrics.METRICS + metrics.BRAIN_METRICS
           ) -> dict[str, Any]:
  records, voxel_ml, _ = records_tuple
  return metrics.score(records, preds, dict(config.data.map_ranges), voxel_ml, names)


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
        result = _score(config, records_tuple, pred, names=("rmse",))  # all a row needs
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
                   tune_records=None, **grid) -> list[dict[str, Any]]:
  """Report rows of the classical reference and the sanity floors at each temporal factor.

  Per factor: the best classical pipeline per AIF mode (:func:`evaluate_classical_best`, key
  "classical_best_true_aif" / "classical_best_selected_aif"), the TTP floor ("ttp_tmax") and the
  constant healthy predictor ("constant_healthy", the same maps at every factor). Each row:
  method, key, factor, per_case, volumes, tmax_gt6_dice (pooled) and, where there are any,
  settings. grid: the classical search grid (:func:`classical_search`'s keywords); none given:
  the config's named grid (``config.reference.classical_grid``, :data:`CLASSICAL_GRIDS`).
  """
  if not grid:
    name = config.reference.classical_grid
    if name not in CLASSICAL_GRIDS:
      raise InputError("config.reference.classical_grid",
                       f"unknown grid {name!r}; valid: {', '.join(CLASSICAL_GRIDS)}")
    grid = CLASSICAL_GRIDS[name]
  records = split_records(config, "test") if records is None else records
  values = healthy_values(config)
  constant = evaluate_constant(config, records=records, values=values)
  rows = []
  for factor in factors:
    best = evaluate_classical_best(config, factor, records=records, tune_records=tune_records,
                                   **grid)
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
