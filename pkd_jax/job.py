"""The one-command student job: teachers found or trained, the student distilled, evaluated, reported.

Folder convention (WORKDIR is --workdir):

    WORKDIR/teachers/<name>/      a teacher: x8, x4, x2, x1 (x1_seed1, x1_seed2 for MTKD), and
                                  ta_x4, TAKD's teacher assistant (itself distilled from x1)
    WORKDIR/student_<strategy>/   the student's checkpoints, TensorBoard logs, schedule.json
    WORKDIR/results_<strategy>.md, .csv, .json, .png   the test-set table and figure

A teacher is looked for first in ``config.distill.teachers_dir`` (if set), then in
WORKDIR/teachers; one that is missing or unfinished is trained (or resumed) in WORKDIR/teachers.
Everything already trained is reused, so re-running the command only does what is left. Every
teacher found is checked against the configured architecture and factor before anything trains.
"""

from __future__ import annotations

import copy
import json
import os
from typing import Any

import ml_collections

from pkd_jax import baselines, checkpoints, distill, evaluate, fileio, models, report, runtime
from pkd_jax import train
from pkd_jax.distill import TeacherSpec


def teacher_config(config: ml_collections.ConfigDict, spec: TeacherSpec) -> ml_collections.ConfigDict:
  """The config of one teacher, derived from the student's (same data, model and loss settings).

  A plain teacher trains on the ground truth at its factor; the teacher assistant is a student of
  the full-resolution teacher (strategy kd) at its factor. A spec's seed changes only config.seed
  (initialisation, shuffling, crops): every teacher trains on the same phantom cases
  (config.data.seed), so MTKD's teachers differ by their initialisation alone.
  """
  t = copy.deepcopy(config)
  with t.unlocked():
    t.train.factor = spec.factor
    t.seed = config.seed + 1000 * spec.seed
    if config.distill.teacher_steps:
      t.train.steps = config.distill.teacher_steps
    if spec.assistant:
      t.distill.strategy = "kd"
      t.data.factors = (spec.factor, 1)
    else:
      t.role = "teacher"
      t.data.factors = (spec.factor,)
      del t["distill"]
  t.lock()
  return t


def _has_model(folder: str) -> bool:
  return os.path.exists(os.path.join(folder, checkpoints.MODEL_SPEC_FILE))


class Job:
  """Plans, checks, trains and reports one strategy's student (see the module docstring)."""

  def __init__(self, config: ml_collections.ConfigDict, workdir: str):
    self.config, self.workdir = config, workdir
    self.strategy = config.distill.strategy
    self.specs = distill.get_strategy(self.strategy).teacher_specs(config.train.factor,
                                                                     config.distill.mtkd_seeds)

  def teacher_dir(self, spec: TeacherSpec) -> str:
    """Where a teacher is: the user's teachers_dir if it has it, else WORKDIR/teachers/<name>."""
    if self.config.distill.teachers_dir:
      candidate = os.path.join(self.config.distill.teachers_dir, spec.name)
      if _has_model(candidate):
        return candidate
    return os.path.join(self.workdir, "teachers", spec.name)

  def all_teachers(self) -> list[TeacherSpec]:
    """The strategy's teachers, with the teacher assistant's own teacher first."""
    specs = []
    for spec in self.specs:
      if spec.assistant:
        specs.append(TeacherSpec(1))
      specs.append(spec)
    return list(dict.fromkeys(specs))

  def check(self) -> None:
    """Clear errors before any training: a teacher of another architecture or factor."""
    for spec in self.all_teachers():
      folder = self.teacher_dir(spec)
      cfg = teacher_config(self.config, spec)
      train.check_config(cfg)
      if _has_model(folder):
        checkpoints.check_workdir_spec(folder, checkpoints.model_spec(cfg))
    train.check_config(self.config)

  def load_teachers(self, specs) -> dict[str, Any]:
    return {s.name: checkpoints.load_variables(self.teacher_dir(s), teacher_config(self.config, s))
            for s in specs}

  def train_teachers(self) -> None:
    for spec in self.all_teachers():
      cfg, folder = teacher_config(self.config, spec), self.teacher_dir(spec)
      if checkpoints.is_finished(folder, cfg):  # reuse what is already trained
        print(f"teacher {spec.name}: trained already, in {folder}")
        continue
      if spec.assistant:  # distilled from the full-resolution teacher
        full = TeacherSpec(1)
        teaching = distill.Teaching("kd", [full], self.load_teachers([full]), cfg.seed)
        train.train_and_evaluate(cfg, folder, teaching)
      else:
        train.train_and_evaluate(cfg, folder)

  def make_teaching(self) -> distill.Teaching | None:
    if not self.specs:
      return None
    d = self.config.distill
    return distill.Teaching(self.strategy, self.specs, self.load_teachers(self.specs),
                            self.config.seed, patience=d.patience, min_delta=d.min_delta,
                            max_epochs_per_stage=d.max_epochs_per_stage, dgkd_drop=d.dgkd_drop)

  def student_dir(self) -> str:
    return os.path.join(self.workdir, f"student_{self.strategy}")

  def report(self) -> dict[str, str]:
    """Scores the student and its teachers on the test split; writes the table and figure."""
    rows, predictions, truth, lesions = [], {}, None, {}
    entries = [(f"student ({self.strategy})", self.config, self.student_dir())]
    entries += [(f"teacher {s.name}", teacher_config(self.config, s), self.teacher_dir(s))
                for s in self.specs]
    records = evaluate.split_records(self.config, "test")
    for name, cfg, folder in entries:
      model = models.from_config(cfg)
      variables = checkpoints.load_variables(folder, cfg)
      result = evaluate.evaluate_variables(cfg, model, variables, cfg.train.factor, records=records)
      rows.append(dict(method=name, factor=cfg.train.factor, per_case=result["per_case"],
                       volumes=result["volumes"]))
      predictions[f"{name}, 1/{cfg.train.factor}"] = result["example"]["prediction"]
      truth = result["example"]["truth"]
      lesions[f"{name}, 1/{cfg.train.factor}"] = result["lesion_slices"]
    # The best classical pipeline (smoothing and SVD tuned on the validation split; true and
    # selected AIF) and the sanity floors (TTP Tmax, constant healthy maps), at both factors.
    rows += baselines.reference_rows(self.config, sorted({self.config.train.factor, 1}),
                                    records=records)
    ranges = dict(self.config.data.map_ranges)
    markdown, csv_text = report.results_table(rows, ranges, reference=rows[0]["method"])
    markdown += "\nLesion volumes (RAPID's thresholds), mean over test cases:\n\n"
    markdown += report.volumes_table(rows)
    markdown += "\n" + baselines.reference_notes(rows)
    stem = os.path.join(self.workdir, f"results_{self.strategy}")
    fileio.write_text(stem + ".md", markdown)
    fileio.write_text(stem + ".csv", csv_text)
    as_lists = lambda tree: {k: as_lists(v) if isinstance(v, dict) else [float(x) for x in v]
                             for k, v in tree.items()}
    summary = [dict(method=r["method"], factor=r["factor"], per_case=as_lists(r["per_case"]),
                    volumes=as_lists(r["volumes"]),
                    **{k: r[k] for k in ("key", "settings") if k in r}) for r in rows]
    schedule_path = os.path.join(self.student_dir(), "schedule.json")
    schedule = []
    if os.path.exists(schedule_path):
      with open(schedule_path) as f:
        schedule = json.load(f)
    fileio.write_json(stem + ".json", dict(strategy=self.strategy, map_ranges=ranges, rows=summary,
                                           schedule=schedule, environment=runtime.environment()))
    report.comparison_figure(truth, predictions, ranges, stem + ".png",
                             title=f"test slice: student ({self.strategy}) and its teachers")
    report.lesion_figure(lesions, ranges["tmax"], stem + "_lesions.png",
                         title=f"Tmax of each test case's slice with the largest true Tmax > 6 s "
                               f"region (white): student ({self.strategy}) and its teachers")
    print(markdown)
    return {"table": stem + ".md", "figure": stem + ".png", "lesions": stem + "_lesions.png"}


def evaluate_teacher(config: ml_collections.ConfigDict, workdir: str) -> dict[str, str]:
  """Scores one network trained on the ground truth (a teacher's or a competitor's workdir) on the
  test split; writes its report (the row is "teacher xF" for the V-Net, else the model's name)."""
  model, variables = models.from_config(config), checkpoints.load_variables(workdir, config)
  result = evaluate.evaluate_variables(config, model, variables, config.train.factor)
  name = "teacher" if config.model.name == "vnet" else config.model.name
  rows = [dict(method=f"{name} x{config.train.factor}", factor=config.train.factor,
               per_case=result["per_case"])]
  markdown, csv_text = report.results_table(rows, dict(config.data.map_ranges))
  stem = os.path.join(workdir, "results")
  fileio.write_text(stem + ".md", markdown)
  fileio.write_text(stem + ".csv", csv_text)
  print(markdown)
  return {"table": stem + ".md"}


def run_student_job(config: ml_collections.ConfigDict, workdir: str) -> dict[str, str]:
  """Finds or trains the teachers, trains the student, evaluates it and writes its results."""
  job = Job(config, workdir)
  job.check()
  job.train_teachers()
  train.train_and_evaluate(config, job.student_dir(), job.make_teaching())
  return job.report()
