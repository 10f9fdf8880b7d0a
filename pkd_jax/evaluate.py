"""Evaluation: a trained model's full-slice predictions on a split, scored by pkd_jax.metrics.

Inference covers whole slices and the whole series by the window rule of
:mod:`pkd_jax.inference` (the mean of the maps of T-frame windows at 0, 4, 8 of the 40-frame
series degraded to the model's factor), the same rule as validation and prediction. The reference
rows every report carries (the best classical pipeline and the sanity floors) are in
:mod:`pkd_jax.baselines`. Prediction is data parallel over all devices
(:func:`pkd_jax.inference.predict`: the slices split over them, the last batch padded); with
several processes every process scores every slice.
"""

from __future__ import annotations

from typing import Any

import ml_collections
import numpy as np

from pkd_jax import inference, metrics
from pkd_jax.data import pipeline
from pkd_jax.data.case import TARGET_MAPS, TMAX_THRESHOLD_S


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
  result = metrics.score(records, preds, dict(config.data.map_ranges), voxel_ml)
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
