"""The competitors beside the V-Net at the "mini" scale: UniToBrain and UNET-GAN-Assisted.

    python experiments/competitors_mini.py [--runs=runs] [--factors=1,16] [--scale=mini]

1. Trains (or resumes, or reuses) at the mini scale, each for the same steps on the same phantom
   cases: the full-resolution V-Net teacher (RUNS/teacher_mini, as teacher_mini.py's default),
   and UniToBrain and UNET-GAN-Assisted at each of --factors (RUNS/unitobrain_xF_mini,
   RUNS/unet_gan_xF_mini: trained directly on the degraded input, no distillation).
2. Scores every network and the reference rows (pkd_jax.baselines) by the same evaluation code
   (pkd_jax.evaluate, the window rule) on the 16 held-out test cases.
3. Writes experiments/results/competitors_mini.{md,csv,json}: the table in the paper's layout
   (the V-Net the reference of the one-tailed paired t-tests at full resolution), the wall time of
   each training, the command, date and machine.
"""

from __future__ import annotations

import os
import sys
import time

from absl import app, flags

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

# pylint: disable=wrong-import-position
from configs import teacher as teacher_config
from configs import unet_gan as unet_gan_config
from configs import unitobrain as unitobrain_config
from experiments.common import provenance, summary, train_timed
from pkd_jax import baselines, checkpoints, evaluate, fileio, models, report

_RUNS = flags.DEFINE_string("runs", "runs", "folder of the run folders")
_FACTORS = flags.DEFINE_list("factors", ["1", "16"], "temporal factors of the competitors")
_OUT = flags.DEFINE_string("out", os.path.join(os.path.dirname(__file__), "results"),
                           "folder for competitors_SCALE.{md,csv,json}")
_SCALE = flags.DEFINE_enum("scale", "mini", ["test", "demo", "mini"],
                           "config scale (test: seconds, to check the script)")

VNET = "V-Net (teacher)"
COMPETITORS = {"UniToBrain": ("unitobrain", unitobrain_config),
               "UNET-GAN-Assisted": ("unet_gan", unet_gan_config)}


def networks(runs: str, factors, scale: str) -> list[tuple[str, int, object, str]]:
  """(method, factor, config, workdir) of every network of the table."""
  out = [(VNET, 1, teacher_config.get_config(f"1,{scale}"), os.path.join(runs, f"teacher_{scale}"))]
  for method, (name, module) in COMPETITORS.items():
    for factor in factors:
      out.append((method, factor, module.get_config(f"{factor},{scale}"),
                  os.path.join(runs, f"{name}_x{factor}_{scale}")))
  return out


def main(argv):
  del argv
  command = " ".join(["python"] + sys.argv)
  factors = [int(f) for f in _FACTORS.value]
  plan = networks(_RUNS.value, factors, _SCALE.value)
  train_s = {}
  for method, factor, config, workdir in plan:
    print(f"== {method} at factor {factor}: {config.train.steps} steps in {workdir}", flush=True)
    os.makedirs(workdir, exist_ok=True)
    train_s[f"{method} x{factor}"] = round(train_timed(config, workdir), 1)
  start = time.perf_counter()
  base_config = plan[0][2]
  records = evaluate.split_records(base_config, "test")
  rows, summaries = [], {}
  for method, factor, config, workdir in plan:
    result = evaluate.evaluate_variables(config, models.from_config(config),
                                         checkpoints.load_variables(workdir, config, "best"),
                                         factor, records=records)
    rows.append(dict(method=method, factor=factor, per_case=result["per_case"]))
    summaries[f"{method} x{factor}"] = summary(result["per_case"], result["tmax_gt6_dice"])
  for row in baselines.reference_rows(base_config, sorted(set(factors) | {1}), records=records):
    rows.append(row)
    summaries[f"{row['method']} x{row['factor']}"] = summary(row["per_case"],
                                                             row["tmax_gt6_dice"])
  markdown, csv_text = report.results_table(rows, dict(base_config.data.map_ranges),
                                            reference=VNET)
  os.makedirs(_OUT.value, exist_ok=True)
  stem = os.path.join(_OUT.value, f"competitors_{_SCALE.value}")
  notes = baselines.reference_notes(rows)
  fileio.write_text(stem + ".md", markdown + ("\n" + notes if notes else ""))
  fileio.write_text(stem + ".csv", csv_text)
  fileio.write_json(stem + ".json", dict(
      command=command, **provenance(),
      steps={f"{m} x{f}": int(c.train.steps) for m, f, c, _ in plan},
      train_wall_s=train_s, evaluate_wall_s=round(time.perf_counter() - start, 1),
      num_test_cases=len(rows[0]["per_case"]["tmax"]["rmse"]), rows=summaries))
  print(markdown)


if __name__ == "__main__":
  app.run(main)
