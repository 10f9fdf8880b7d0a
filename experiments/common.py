"""What the experiments share: resumable, timed training and a summary of per-case scores."""

from __future__ import annotations

import datetime
import json
import os
import platform
import time

import numpy as np

from pkd_jax import checkpoints, fileio, runtime, train
from pkd_jax.data.case import TARGET_MAPS

TRAIN_TIME_FILE = "train_time.json"


def provenance() -> dict:
  """Where an experiment's numbers were made, for its JSON: the date, the machine and what else
  they depend on (pkd_jax.runtime.environment: package versions, backend, CPU, XLA flags)."""
  return dict(date=datetime.date.today().isoformat(),
              machine=f"{platform.machine()}, {os.cpu_count()} cores, {platform.platform()}",
              environment=runtime.environment())


def train_timed(config, workdir: str, hook=None) -> float:
  """Trains (or resumes) config's network in workdir (with pkd_jax.train's hook, e.g. a
  distillation's teaching); the seconds the whole training took, over all sittings (recorded in
  WORKDIR/train_time.json, so a re-run that only evaluates reports it too)."""
  before = recorded_train_s(workdir) or 0.0
  if checkpoints.is_finished(workdir, config):
    return before  # trained already
  start = time.perf_counter()
  train.train_and_evaluate(config, workdir, hook)
  seconds = before + time.perf_counter() - start  # a resumed run adds its part
  # The environment of the sitting that finished the unit (a unit resumed elsewhere mixes two).
  fileio.write_json(os.path.join(workdir, TRAIN_TIME_FILE),
                    {"seconds": seconds, "environment": runtime.environment()})
  return seconds


def recorded_train_s(workdir: str) -> float | None:
  """The training seconds train_timed recorded in workdir; None if it recorded none."""
  record = _train_record(workdir)
  return None if record is None else float(record["seconds"])


def recorded_environment(workdir: str) -> dict | None:
  """The environment (pkd_jax.runtime.environment) in which train_timed finished workdir's
  training; None if it recorded none (not trained, or trained before it was recorded)."""
  record = _train_record(workdir)
  return None if record is None else record.get("environment")


def _train_record(workdir: str) -> dict | None:
  path = os.path.join(workdir, TRAIN_TIME_FILE)
  if not os.path.exists(path):
    return None
  with open(path) as f:
    return json.load(f)


def group_environments(environments: dict[str, dict | None]) -> list[dict]:
  """``{unit: environment}`` -> ``[{"environment": e, "units": [...]}, ...]``, one entry per
  distinct environment (None: not recorded), in order of first appearance: a table whose units
  were trained on several machines (or with other packages or XLA flags) says so."""
  groups: dict[str, dict] = {}
  for unit, env in environments.items():
    key = json.dumps(env, sort_keys=True)
    groups.setdefault(key, {"environment": env, "units": []})["units"].append(unit)
  return list(groups.values())


def summary(per_case: dict, tmax_gt6_dice: float) -> dict:
  """Mean over test cases of each map's RMSE, the pooled Dice and the per-case values."""
  out = {f"{k}_rmse": float(np.mean(per_case[k]["rmse"])) for k in TARGET_MAPS}
  out["tmax_gt6_dice"] = float(tmax_gt6_dice)
  out["tmax_gt6_dice_case_mean"] = float(np.mean(per_case["tmax"]["gt6_dice"]))
  out["per_case"] = {f"{k}_rmse": [round(float(v), 4) for v in per_case[k]["rmse"]]
                     for k in TARGET_MAPS}
  return out
