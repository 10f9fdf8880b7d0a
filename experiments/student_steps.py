"""Do the 1/16 students of the mini Table 2 learn Tmax with more steps? w/o PKD and PKD, longer.

    python experiments/student_steps.py --runs=runs/table2_mini [--steps=2400]
        [--strategies=none,pkd] [--seed=0] [--set=FIELD=VALUE ...] [--noreport]

At the mini scale of experiments/table2.py the 1/16 students (600 steps) do not beat the constant
healthy-tissue predictor on Tmax (README, Results), so the table cannot test the paper's claims.
This trains the same students (experiments/table2.py's mini configs, the same seed) for --steps
instead, against the mini table's own teachers (RUNS/teachers, which must be trained), into
RUNS/student_steps/<strategy>_x16_seed<seed>_steps<steps>; each is resumable and skipped
once finished. Then (unless --noreport) it scores them and the constant predictor on the table's
16 test cases and writes experiments/results/student_steps_mini_STEPS.{md,json} (per-case values,
the one-tailed paired t-test of PKD against w/o PKD, wall times) and the validation curves
(student_steps_mini_STEPS_curves.png, with PKD's teacher switches).
--set (repeatable) changes config fields of these students, an ablation: e.g.
``--set=model.scale_outputs=True --set="data.random_offset_factors=(16,)"`` (values are Python
literals); the folders and the outputs are then named by the changes too, and by the seed
(``_seed1``) when it is not 0.
Two processes may train two strategies at once (``--strategies=none --noreport`` beside
``--strategies=pkd --noreport``, e.g. each pinned with taskset), then one more writes the report.
"""

from __future__ import annotations

import ast
import os
import sys
from typing import Any

from absl import app, flags
from scipy import stats

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

# pylint: disable=wrong-import-position
from experiments import table2
from experiments.common import provenance, recorded_train_s, summary
from pkd_jax import baselines, checkpoints, evaluate, fileio, models, report, runtime
from pkd_jax.data.case import TARGET_MAPS

_STEPS = flags.DEFINE_integer("steps", 2400, "training steps of each student")
_STRATEGIES = flags.DEFINE_list("strategies", ["none", "pkd"], "students to train (1/16)")
_SEED = flags.DEFINE_integer("seed", 0, "the students' seed")
_SET = flags.DEFINE_multi_string("set", [], "a config field of the students, FIELD=VALUE (a "
                                  "Python literal); repeat for more")
# --runs (the mini table's runs folder, default runs/table2_mini), --out (experiments/results)
# and --[no]report are experiments/table2.py's flags, with the same meaning.

FACTOR = 16


def parse_settings(settings) -> tuple[tuple[str, Any], ...]:
  """("a.b", value) pairs of "a.b=VALUE" strings, each VALUE a Python literal."""
  pairs = []
  for setting in settings:
    field, sep, value = setting.partition("=")
    if not sep or not field:
      raise ValueError(f"--set: expected FIELD=VALUE, got {setting!r}")
    try:
      pairs.append((field, ast.literal_eval(value)))
    except (ValueError, SyntaxError) as e:
      raise ValueError(f"--set {setting!r}: {value!r} is not a Python literal") from e
  return tuple(pairs)


def settings_suffix(settings: tuple[tuple[str, Any], ...]) -> str:
  """The name part of a set of config changes ("" for none), e.g. "_model.scale_outputs=True";
  a sequence's items joined by "-" ("_data.random_offset_factors=16" for (16,))."""
  def text(value):
    return "-".join(map(str, value)) if isinstance(value, (tuple, list)) else str(value)
  return "".join(f"_{field}={text(value)}" for field, value in settings)


def student_units(table: table2.Table2, strategies, steps: int, seed: int,
                  settings: tuple[tuple[str, Any], ...] = ()) -> list[table2.Unit]:
  """The table's 1/16 student units for ``strategies`` with ``steps`` steps and the config
  changes ``settings``, in their own folders under RUNS/student_steps (the table's own students
  are left as they are)."""
  units = []
  for strategy in strategies:
    cfg = table2.apply_settings(table.student_config(strategy, FACTOR, seed),
                                (("train.steps", steps),) + settings)
    name = f"student_steps/{strategy}_x{FACTOR}_seed{seed}_steps{steps}{settings_suffix(settings)}"
    units.append(table2.Unit(name, "student", table2.METHOD_NAMES[strategy], FACTOR, seed, cfg,
                             table2._student_trainer(cfg, os.path.join(table.runs, name))))  # pylint: disable=protected-access
  return units


def main(argv):
  del argv
  runtime.enable_compilation_cache()
  runs = flags.FLAGS.runs or os.path.join("runs", "table2_mini")
  table = table2.Table2("mini", runs, flags.FLAGS.out)
  missing = [u.name for u in table.units if u.kind == "teacher" and not table.finished(u)]
  if missing:
    raise SystemExit(f"{runs}: the mini table's teachers are not all trained "
                     f"(missing: {', '.join(missing)}); run experiments/table2.py --scale=mini "
                     f"--runs={runs} --only=teachers first")
  settings = parse_settings(_SET.value)
  units = student_units(table, _STRATEGIES.value, _STEPS.value, _SEED.value, settings)
  for unit in units:
    if table.finished(unit):
      print(f"{unit.name}: trained", flush=True)
      continue
    print(f"{unit.name}: training, {_STEPS.value} steps", flush=True)
    unit.train()
  if not flags.FLAGS.report:
    return
  records = table.test_records
  rows, per_case = {}, {}
  for unit in units:
    folder = table.folder(unit)
    result = evaluate.evaluate_variables(unit.config, models.from_config(unit.config),
                                         checkpoints.load_variables(folder, unit.config, "best"),
                                         FACTOR, records=records)
    per_case[unit.method] = result["per_case"]
    rows[unit.method] = dict(summary(result["per_case"], result["tmax_gt6_dice"]),
                             steps=_STEPS.value, train_s=recorded_train_s(folder))
  constant = baselines.evaluate_constant(table.base_config(), records=records)
  rows["constant healthy"] = summary(constant["per_case"], constant["tmax_gt6_dice"])
  p = {}
  if "PKD" in per_case and "w/o PKD" in per_case:
    for k in TARGET_MAPS:
      a, b = per_case["PKD"][k]["rmse"], per_case["w/o PKD"][k]["rmse"]
      p[k] = float(stats.ttest_rel(a, b, alternative="less").pvalue)
  changes = ", ".join(f"{f} = {v!r}" for f, v in settings)
  lines = [f"# 1/16 students of the mini Table 2 with {_STEPS.value} steps (seed {_SEED.value})"
           + (f", {changes}" if changes else ""),
           "", "| method | steps | Tmax RMSE (s) | CBV RMSE | CBF RMSE | Tmax > 6 s Dice |",
           "|---|---|---|---|---|---|"]
  for method, r in rows.items():
    lines.append(f"| {method} | {r.get('steps', '—')} | {r['tmax_rmse']:.3f} | "
                 f"{r['cbv_rmse']:.3f} | {r['cbf_rmse']:.3f} | {r['tmax_gt6_dice']:.2f} |")
  if p:
    lines += ["", "PKD against w/o PKD, one-tailed paired t-test over the test cases (H1: PKD "
              "lower): " + ", ".join(f"{k} p = {v:.3g}" for k, v in p.items())]
  stem = os.path.join(flags.FLAGS.out,
                      f"student_steps_mini_{_STEPS.value}{settings_suffix(settings)}"
                      + (f"_seed{_SEED.value}" if _SEED.value else ""))
  os.makedirs(flags.FLAGS.out, exist_ok=True)
  fileio.write_text(stem + ".md", "\n".join(lines) + "\n")
  fileio.write_json(stem + ".json", dict(
      command=" ".join(["python"] + sys.argv), **provenance(),
      steps=_STEPS.value, seed=_SEED.value, settings=dict(settings),
      num_test_cases=len(records[1]), rows=rows, p_pkd_below_none=p))
  histories, switches = table2.validation_histories(
      {unit.method: table.folder(unit) for unit in units})
  report.learning_curves(histories, stem + "_curves.png",
                         switches=switches,
                         title=f"1/16 students, {_STEPS.value} steps: validation")
  print("\n".join(lines))


if __name__ == "__main__":
  app.run(main)
