"""Does the full-resolution teacher learn? The "mini" scale, against the floors and the clinic.

    python experiments/teacher_mini.py [--workdir=runs/teacher_mini]

1. Trains the full-resolution teacher at the "mini" scale (configs/teacher.py:1,mini), or resumes
   it; the wall time of the training is recorded (in WORKDIR/train_time.json, so that a re-run that
   only evaluates reports the time the training took).
2. Scores it on the held-out test split (16 phantom cases) by the window rule, beside the floors
   and the best classical pipeline (pkd_jax.baselines): the constant healthy predictor, the
   time-to-peak Tmax and smoothed oSVD / bSVD deconvolution with the true AIF, its smoothing and
   threshold tuned on the validation split.
3. Writes experiments/results/teacher_mini.json: per method Tmax / CBV / CBF RMSE (mean over
   cases) and the Tmax > 6 s Dice (over all test voxels in the brain), the one-tailed paired
   t-tests (over cases) of the teacher against the classical pipeline, the command, date, machine
   and wall times; and the learning curves (validation RMSE per map and Dice over steps) as
   experiments/results/teacher_mini_curves.png.
"""

from __future__ import annotations

import json
import os
import sys
import time

from absl import app, flags

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

# pylint: disable=wrong-import-position
from configs import teacher as teacher_config

from experiments.common import provenance, summary, train_timed
from pkd_jax import baselines, checkpoints, evaluate, fileio, metrics, models, report, train
from pkd_jax.data.case import TARGET_MAPS

_WORKDIR = flags.DEFINE_string("workdir", "runs/teacher_mini", "the teacher's run folder")
_OUT = flags.DEFINE_string("out", os.path.join(os.path.dirname(__file__), "results"),
                           "folder for teacher_mini.json and the learning curves")


def comparison(config, workdir: str) -> dict:
  """The teacher (best validation checkpoint) and the reference rows on the test split, with the
  one-tailed paired t-tests over cases (H1: the teacher's RMSE is lower)."""
  records = evaluate.split_records(config, "test")
  model = models.from_config(config)
  variables = checkpoints.load_variables(workdir, config, "best")
  teacher = evaluate.evaluate_variables(config, model, variables, 1, records=records)
  rows = {"teacher_x1": summary(teacher["per_case"], teacher["tmax_gt6_dice"])}
  settings = {}
  for row in baselines.reference_rows(config, (1,), records=records):
    rows[row["key"]] = summary(row["per_case"], row["tmax_gt6_dice"])
    settings[row["key"]] = row.get("settings")
  tests = {}
  for other in ("classical_best_true_aif", "classical_best_selected_aif", "constant_healthy"):
    for k in TARGET_MAPS:
      tests[f"{k}_rmse_teacher_lt_{other}_p"] = metrics.paired_t_test(
          teacher["per_case"][k]["rmse"], rows[other]["per_case"][f"{k}_rmse"], "less")
  return dict(rows, paired_t_tests=tests, reference_settings=settings,
              num_test_cases=len(teacher["cases"]))


def main(argv):
  del argv
  command = " ".join(["python"] + sys.argv)
  config = teacher_config.get_config("1,mini")
  os.makedirs(_WORKDIR.value, exist_ok=True)
  train_s = train_timed(config, _WORKDIR.value)
  start = time.perf_counter()
  rows = comparison(config, _WORKDIR.value)
  result = dict(
      command=command, **provenance(),
      train_wall_s=round(train_s, 1), evaluate_wall_s=round(time.perf_counter() - start, 1),
      config="configs/teacher.py:1,mini", maps=list(TARGET_MAPS), **rows)
  os.makedirs(_OUT.value, exist_ok=True)
  fileio.write_json(os.path.join(_OUT.value, "teacher_mini.json"), result)
  history = json.load(open(os.path.join(_WORKDIR.value, train.VALIDATION_HISTORY_FILE)))
  report.learning_curves(history, os.path.join(_OUT.value, "teacher_mini_curves.png"),
                         title="full-resolution teacher, mini scale: validation")
  print(json.dumps({k: v for k, v in result.items() if isinstance(v, dict)}, indent=1))


if __name__ == "__main__":
  app.run(main)
