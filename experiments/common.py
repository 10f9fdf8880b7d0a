"""What the experiments share: resumable, timed training and a summary of per-case scores."""

from __future__ import annotations

import json
import os
import time

import numpy as np

from pkd_jax import checkpoints, fileio, train
from pkd_jax.data.case import TARGET_MAPS

TRAIN_TIME_FILE = "train_time.json"


def train_timed(config, workdir: str) -> float:
  """Trains (or resumes) config's network in workdir; the seconds the whole training took
  (recorded in WORKDIR/train_time.json, so a re-run that only evaluates reports it too)."""
  path = os.path.join(workdir, TRAIN_TIME_FILE)
  recorded = {"seconds": 0.0}
  if os.path.exists(path):
    with open(path) as f:
      recorded = json.load(f)
  if checkpoints.is_finished(workdir, config):
    return float(recorded["seconds"])  # trained already
  start = time.perf_counter()
  train.train_and_evaluate(config, workdir)
  recorded["seconds"] += time.perf_counter() - start  # a resumed run adds its part
  fileio.write_json(path, recorded)
  return float(recorded["seconds"])


def summary(per_case: dict, tmax_gt6_dice: float) -> dict:
  """Mean over test cases of each map's RMSE, the pooled Dice and the per-case values."""
  out = {f"{k}_rmse": float(np.mean(per_case[k]["rmse"])) for k in TARGET_MAPS}
  out["tmax_gt6_dice"] = float(tmax_gt6_dice)
  out["tmax_gt6_dice_case_mean"] = float(np.mean(per_case["tmax"]["gt6_dice"]))
  out["per_case"] = {f"{k}_rmse": [round(float(v), 4) for v in per_case[k]["rmse"]]
                     for k in TARGET_MAPS}
  return out
