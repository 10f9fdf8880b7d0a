"""The paper's Table 2, with statistics: every distillation strategy at 1/16, PKD at 1/8, the
teachers, the competitors and the reference rows, on one held-out test set.

    python experiments/table2.py --scale=mini [--runs=runs/table2_mini] [--only=PATTERN,...]
        [--workers=N]

Scales (:data:`SCALES`): "test" (seconds, for the test suite), "mini" (2 CPU cores; about two hours
with --workers=2, measured in the README: resume it over sittings, or share the runs folder between
processes), "gpu" (the mini sizes with 2-4x the steps and 32 test cases, for one H100-class GPU
with --workers=4; sized from the mini table's 9.4 minutes on an H200, not yet run) and "paper" (the
paper's sizes and 80,000 iterations).

What it trains (each a "unit" with a folder under RUNS; what is finished is never retrained, an
interrupted unit resumes from its last checkpoint, and scores are cached in RUNS/scores):

* ``teachers/x8, x4, x2, x1``: the V-Net on the ground truth at each factor; ``x1_seed1``,
  ``x1_seed2``: MTKD's extra full-resolution teachers; ``ta_x4``: TAKD's assistant, distilled
  from x1 (pkd_jax.job's conventions).
* ``students/<strategy>_x16_seed<s>`` for none (w/o PKD), kd, takd, mtkd, dgkd, pkd and
  ``students/<none|pkd>_x8_seed<s>``, with seeds 0 .. num_seeds - 1 (the initialisation, the
  shuffling and the crops; the data and the teachers are the same for every seed).
* ``competitors/<unitobrain|unet_gan>_x16_seed<s>``.

Then it scores every unit and the reference rows (best classical pipeline, TTP, constant) with
pkd_jax.evaluate / pkd_jax.baselines on the test split and writes, under --out:

* ``table2_<scale>.md`` / ``.csv``: the table in the paper's layout, each cell the mean over seeds
  of the per-seed mean over test cases, +/- the standard deviation over seeds (over test cases
  for the single-seed rows: teachers and references); the p-value of PKD against each row;
* ``table2_<scale>.json``: every number (per seed and per case), ``rows`` with ``method``,
  ``factor``, ``kind``, ``metrics`` and ``p_vs_pkd``; ``num_seeds``, ``num_test_cases``, the
  command, date, machine and wall times, and the reading;
* ``table2_<scale>_maps.png`` (Figure 2 style: one test slice, every method, seed 0) and
  ``table2_<scale>_curves.png`` (validation curves of the 1/16 students, seed 0, PKD's teacher
  switches marked).

Statistics: per map and metric, one-tailed paired t-tests over test cases of PKD against every
other row at the same factor (H1: PKD's RMSE lower, its SSIM and PSNR higher), each on the
per-case values averaged over seeds; the p-values of a map and metric form one family, adjusted
by Holm-Bonferroni (``p_holm``).
"""

from __future__ import annotations

import dataclasses
import fnmatch
import functools
import json
import os
import signal
import subprocess
import sys
import time
from typing import Any, Callable

import numpy as np
from absl import app, flags

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

# pylint: disable=wrong-import-position
from configs import student as student_config
from configs import unet_gan as unet_gan_config
from configs import unitobrain as unitobrain_config
from experiments.common import group_environments, provenance, recorded_environment
from experiments.common import recorded_train_s, train_timed
from pkd_jax import baselines, checkpoints, distill, evaluate, fileio, job, metrics, models, report
from pkd_jax import runtime, train
from pkd_jax.data.case import TARGET_MAPS

STUDENT_STRATEGIES = tuple(distill.STRATEGIES)  # none, kd, takd, mtkd, dgkd, pkd at 1/16
STRATEGIES_AT_8 = ("none", "pkd")
COMPETITORS = {"unitobrain": ("UniToBrain", unitobrain_config),
               "unet_gan": ("UNET-GAN-Assisted", unet_gan_config)}
METHOD_NAMES = {"none": "w/o PKD", "kd": "KD", "takd": "TAKD", "mtkd": "MTKD", "dgkd": "DGKD",
                "pkd": "PKD"}
HIGHER_IS_BETTER = {"rmse": False, "ssim": True, "psnr": True}


@dataclasses.dataclass(frozen=True)
class Scale:
  """The sizes of one scale of the experiment (on top of the configs' own scale)."""

  config_scale: str  # the configs' scale (configs/base.py)
  num_seeds: int
  teacher_steps: int
  student_steps: int
  competitor_steps: int
  eval_every: int
  overrides: tuple[tuple[str, Any], ...] = ()  # config fields, "a.b" -> value, for every unit
  vnet_overrides: tuple[tuple[str, Any], ...] = ()  # for the V-Nets (students and teachers)


SCALES = {
    # Tiny networks, 2 steps each, one seed (compiling each kind of step dominates: minutes on 2
    # CPU cores); 3 test cases so that the t-tests have values. Slices of 32 x 32 (the patch) and
    # 3 windows (starts 0, 12, 24 of the 40 frames: every frame still seen) instead of the test
    # config's 48 x 48 and 4: validation and scoring compute a third of the voxels (the extended
    # test 110 s against 121 s cold, one after the other, 2026-12-04).
    "test": Scale("test", 1, 2, 2, 2, 2, overrides=(
        ("data.num_cases.test", 3), ("data.phantom.height", 32), ("data.phantom.width", 32),
        ("data.window_stride", 12))),
    # 2 CPU cores: 7 teachers of 1,500 steps, 24 students of 600 steps, 6 competitors of 1,500
    # on the demo's 32 x 32 x 32 patches, F = 4; 16 test cases. Measured (README, Results, with
    # --workers=2, one core each): a teacher 558-802 s, a student 239-463 s, a competitor 85-127
    # s: 124 minutes in two sittings, 111.5 in one (2026-12-04); the 1/16 students do not beat
    # the constant predictor on Tmax.
    # MSE 100 as the demo, whose teachers find lesions in 500 steps with it (README, ablations);
    # PKD epochs of 8 steps with a cap of 15 epochs, as the demo.
    "mini": Scale("mini", 3, 1500, 600, 1500, 300,
                  vnet_overrides=(("loss.mse", 100.0), ("distill.epoch_steps", 8),
                                  ("distill.max_epochs_per_stage", 15))),
    # One H100-class GPU with --workers=4 (16 CPU cores): the mini sizes with more steps
    # (teachers and competitors 3,000, students 2,400; PKD's epochs 32 steps, cap 15: 80% of the
    # steps in the progression, as mini) and 32 test cases. Sized from the mini table measured on
    # an H200 (README, Results: 37 units and the report in 9.4 minutes with 4 workers; a unit's
    # steps bound by fixed per-step costs, 15-80 steps/s a worker, not arithmetic): about 18 minutes
    # estimated; not yet run. At the paper's sizes one GPU is busy (teacher step 0.046 s, a
    # student's 0.069-0.101 s on the H200), so such steps there take hours: that is "paper".
    "gpu": Scale("mini", 3, 3000, 2400, 3000, 600, overrides=(("data.num_cases.test", 32),),
                 vnet_overrides=(("loss.mse", 100.0), ("distill.epoch_steps", 32),
                                 ("distill.max_epochs_per_stage", 15))),
    "paper": Scale("paper", 3, 80_000, 80_000, 80_000, 1000,
                   overrides=(("data.num_cases.test", 16),)),
}


@dataclasses.dataclass
class Unit:
  """One network of the table: where it lives, its config and how it trains."""

  name: str  # "teachers/x8", "students/pkd_x16_seed0", "competitors/unet_gan_x16_seed1"
  kind: str  # "teacher", "student", "competitor"
  method: str  # the table's row name
  factor: int
  seed: int
  config: Any
  train: Callable[[], None]
  needs: tuple[str, ...] = ()  # units that must be trained first (a student's teachers)
  # Units with equal ``program`` run the same XLA programs (:func:`program_key`): once one of them
  # has trained, the others find its programs in the compilation cache.
  program: tuple = ()


def program_key(config, teachers_per_step: int = 0, combine: str = "") -> tuple:
  """What decides a unit's compiled programs: its network and how many teachers its train step
  stacks, combined how (pkd_jax.train._kd); not the temporal factor (every network sees
  ``data.patch.num_frames`` frames) nor the seed."""
  return (config.model.name, teachers_per_step, combine if teachers_per_step else "")


def apply_settings(config, overrides):
  """config with fields ("a.b", value) set; a field that does not exist is a KeyError."""
  with config.unlocked():
    for dotted, value in overrides:
      node = config
      *path, leaf = dotted.split(".")
      for key in path:
        node = node[key]
      if leaf not in node:
        raise KeyError(f"table2: no config field {dotted!r}")
      node[leaf] = value
  return config


class Table2:
  """The plan (units), training, scoring and the report, for one scale and runs folder."""

  def __init__(self, scale: str, runs: str, out: str):
    if scale not in SCALES:
      raise ValueError(f"unknown scale {scale!r}; valid: {', '.join(SCALES)}")
    self.scale_name, self.scale, self.runs, self.out = scale, SCALES[scale], runs, out
    self.teachers_dir = os.path.join(runs, "teachers")
    self.units = self._plan()

  # ------------------------------------------------------------------ the plan

  def student_config(self, strategy: str, factor: int, seed: int):
    s = self.scale
    config = student_config.get_config(f"{strategy},{s.config_scale}")
    apply_settings(config, s.overrides + s.vnet_overrides + (
        ("train.steps", s.student_steps), ("train.eval_every", s.eval_every),
        ("distill.teacher_steps", s.teacher_steps)))
    with config.unlocked():
      config.seed = seed
      config.train.factor = factor
      config.distill.teachers_dir = self.teachers_dir
    return config

  def _plan(self) -> list[Unit]:
    units, seeds = [], range(self.scale.num_seeds)
    # The teachers, trained (as the student job would) into RUNS/teachers by the first job that
    # needs each: the ladder, MTKD's seeds and TAKD's assistant.
    seen = set()
    for strategy in ("pkd", "mtkd", "takd"):
      owner = job.Job(self.student_config(strategy, 16, 0), self.runs)
      for spec in owner.all_teachers():
        if spec.name in seen:
          continue
        seen.add(spec.name)
        cfg = job.teacher_config(owner.config, spec)
        kind_name = "TA" if spec.assistant else "teacher"
        # The assistant is distilled from the full-resolution teacher (_teacher_trainer).
        needs = (f"teachers/{distill.TeacherSpec(1).name}",) if spec.assistant else ()
        units.append(Unit(f"teachers/{spec.name}", "teacher",
                          f"{kind_name} {spec.name}", spec.factor, 0, cfg,
                          _teacher_trainer(owner, spec), needs,
                          program_key(cfg, int(spec.assistant), "targets")))
    for factor, strategies in ((16, STUDENT_STRATEGIES), (8, STRATEGIES_AT_8)):
      for strategy in strategies:
        for seed in seeds:
          cfg = self.student_config(strategy, factor, seed)
          name = f"students/{strategy}_x{factor}_seed{seed}"
          rule = distill.get_strategy(strategy)
          specs = rule.teacher_specs(factor, cfg.distill.mtkd_seeds)
          needs = tuple(f"teachers/{t.name}" for t in specs)
          units.append(Unit(name, "student", METHOD_NAMES[strategy], factor, seed, cfg,
                            _student_trainer(cfg, os.path.join(self.runs, name)), needs,
                            program_key(cfg, len(rule.active(specs, 0)), rule.combine)))
    for key, (label, module) in COMPETITORS.items():
      for seed in seeds:
        cfg = module.get_config(f"16,{self.scale.config_scale}")
        apply_settings(cfg, self.scale.overrides + (
            ("train.steps", self.scale.competitor_steps),
            ("train.eval_every", self.scale.eval_every)))
        with cfg.unlocked():
          cfg.seed = seed
        name = f"competitors/{key}_x16_seed{seed}"
        units.append(Unit(name, "competitor", label, 16, seed, cfg,
                          _plain_trainer(cfg, os.path.join(self.runs, name)),
                          program=program_key(cfg)))
    return units

  def folder(self, unit: Unit) -> str:
    return os.path.join(self.runs, unit.name)

  def select(self, only: list[str] | None) -> list[Unit]:
    """The units whose name matches one of the patterns (fnmatch; a group name selects it all)."""
    if not only:
      return list(self.units)
    chosen = [u for u in self.units
              if any(fnmatch.fnmatch(u.name, p) or u.name.startswith(p.rstrip("/") + "/")
                     for p in only)]
    if not chosen:
      raise ValueError(f"--only {only} matches no unit; units are e.g. "
                       f"{', '.join(u.name for u in self.units[:3])}, ...")
    return chosen

  # ------------------------------------------------------------------ training and scoring

  def finished(self, unit: Unit) -> bool:
    return checkpoints.is_finished(self.folder(unit), unit.config)

  def claim_path(self, unit: Unit) -> str:
    return os.path.join(self.runs, "claims", _flat(unit.name) + ".lock")

  def train(self, units: list[Unit], wait: bool = False, after_each=None,
            poll_s: float = 5.0, tag: str = "") -> list[str]:
    """Trains the units not finished yet, in order; the names of those left to other processes.

    Several processes may share one runs folder (e.g. ``--only=competitors`` beside the full
    run, or the workers of ``--workers``): each unit is claimed while it trains (RUNS/claims).
    A unit another process is training, or whose teachers it is training, is skipped with a line
    saying so; with ``wait`` it is waited for instead: the first unit that can start does (in
    the order of :meth:`preferred`), and when none can the process sleeps ``poll_s`` seconds and
    looks again, until every unit is finished. ``after_each(unit)`` runs after each unit this
    process trained (a worker scores it); ``tag`` starts each progress line (the worker's
    name)."""
    pending, skipped, said = list(units), [], set()
    while pending:
      for unit in self.preferred(pending) if wait else list(pending):
        head = (f"{tag}[{self.units.index(unit) + 1}/{len(self.units)}] {unit.name} "
                f"({unit.method}, 1/{unit.factor})")
        state, why = self._attempt(unit, head, pending if wait else [])
        if state != "busy":
          if state == "finished":
            print(f"{head}: trained", flush=True)
          pending.remove(unit)
          if state == "trained":
            if after_each is not None:
              after_each(unit)
            if wait:
              break  # look again from the top: units earlier in the plan may be free now
        elif not wait:
          print(f"{head}: skipped, {why}", flush=True)
          skipped.append(unit.name)
          pending.remove(unit)
        elif (unit.name, why) not in said:
          print(f"{head}: waiting, {why}", flush=True)
          said.add((unit.name, why))
          break  # news (another process took a unit, or one's teachers): rank the units again
      else:  # a whole pass without training: wait for the others (without wait, nothing is left)
        if pending:
          time.sleep(poll_s)
    if skipped:
      print(f"{len(skipped)} unit(s) left to other processes: {', '.join(skipped)}; the report "
            "covers what is finished", flush=True)
    return skipped

  def preferred(self, pending: list[Unit]) -> list[Unit]:
    """The order in which a waiting process (a worker of ``--workers``) tries the pending units:
    first those whose programs nobody has compiled or is compiling (the longest work first:
    compiling a program took 15-26 s of a core at the test scale, training a unit whose
    programs are cached 2-5 s), then those whose programs are compiled (a unit of the same
    :attr:`Unit.program` has finished: the compilation cache holds them), then those whose
    programs another process is compiling now (one of its units is claimed); the plan's order
    within each. Two workers that took the plan in order started with the same teacher and
    compiled the same programs side by side, and then the same students' programs again."""
    compiled = {u.program for u in self.units if self.finished(u)}
    compiling = {u.program for u in self.units if fileio.claim_holder(self.claim_path(u))}
    return sorted(pending, key=lambda u: (1 if u.program in compiled else
                                          2 if u.program in compiling else 0))

  def _attempt(self, unit: Unit, head: str, pending: list[Unit]) -> tuple[str, str]:
    """Trains unit unless it is finished or busy: ("finished" | "trained" | "busy", why busy).

    A teacher the unit needs that is neither finished nor claimed is an error, unless it is in
    ``pending`` (a waiting process's own list: it will train it, or another process is about to
    claim it)."""
    if self.finished(unit):
      return "finished", ""
    missing = [u for u in self.units if u.name in unit.needs and not self.finished(u)]
    busy = [u.name for u in missing if fileio.claim_holder(self.claim_path(u))]
    if busy:
      return "busy", (f"its teachers are being trained by another process ({', '.join(busy)}); "
                      "run again when they are done")
    if any(u in pending for u in missing):
      return "busy", f"its teachers are not trained yet ({', '.join(u.name for u in missing)})"
    if missing:
      raise ValueError(f"{unit.name} needs the teachers, not all trained yet: "
                       f"{', '.join(u.name for u in missing)}; train them first "
                       "(--only=teachers)")
    with fileio.claim(self.claim_path(unit)) as owner:
      if owner is None and self.finished(unit):  # finished while we looked
        return "finished", ""
      if owner is None:
        print(f"{head}: training, {unit.config.train.steps} steps", flush=True)
        unit.train()
        return "trained", ""
      return "busy", f"being trained by {owner}"

  def score_path(self, unit: Unit) -> str:
    return os.path.join(self.runs, "scores", _flat(unit.name) + ".json")

  def score(self, units: list[Unit], records) -> dict[str, dict]:
    """Per-case metrics of every unit (cached in RUNS/scores; a unit trained again is rescored)."""
    scores = {}
    for unit in units:
      path = self.score_path(unit)
      folder = self.folder(unit)
      if not self.finished(unit):
        continue
      stamp = os.path.getmtime(os.path.join(folder, "checkpoints"))
      if os.path.exists(path):
        with open(path) as f:
          cached = json.load(f)
        if cached.get("stamp") == stamp:
          scores[unit.name] = cached
          continue
      print(f"scoring {unit.name}", flush=True)
      result = evaluate.evaluate_variables(
          unit.config, models.from_config(unit.config),
          checkpoints.load_variables(folder, unit.config, "best"), unit.factor, records=records)
      scores[unit.name] = dict(
          stamp=stamp, per_case=_lists(result["per_case"]), tmax_gt6_dice=result["tmax_gt6_dice"],
          example={k: np.asarray(v).tolist() for k, v in result["example"]["prediction"].items()})
      fileio.write_json(path, scores[unit.name])
    return scores

  def references(self, records) -> list[dict]:
    path = os.path.join(self.runs, "scores", "references.json")
    if os.path.exists(path):
      with open(path) as f:
        return json.load(f)
    print("scoring the reference rows (classical pipeline tuned on validation, floors)",
          flush=True)
    rows = baselines.reference_rows(self.base_config(), (1, 8, 16), records=records)
    out = [dict(method=r["method"], factor=r["factor"], key=r["key"],
                per_case=_lists(r["per_case"]), tmax_gt6_dice=r["tmax_gt6_dice"]) for r in rows]
    fileio.write_json(path, out)
    return out

  def base_config(self):
    return self.student_config("pkd", 16, 0)

  @functools.cached_property
  def test_records(self):
    """The held-out test split every row is scored on (pkd_jax.evaluate.split_records), built on
    first use: a worker that only waits never builds it."""
    return evaluate.split_records(self.base_config(), "test")


def _teacher_trainer(owner: job.Job, spec) -> Callable[[], None]:
  def run():
    cfg, folder = job.teacher_config(owner.config, spec), owner.teacher_dir(spec)
    os.makedirs(folder, exist_ok=True)
    if spec.assistant:
      full = distill.TeacherSpec(1)
      teaching = distill.Teaching("kd", [full], owner.load_teachers([full]), cfg.seed)
      train_timed(cfg, folder, teaching)
    else:
      train_timed(cfg, folder)
  return run


def _student_trainer(cfg, folder: str) -> Callable[[], None]:
  def run():
    student_job = job.Job(cfg, folder)
    student_job.check()
    os.makedirs(folder, exist_ok=True)
    train_timed(cfg, folder, student_job.make_teaching())
  return run


def _plain_trainer(cfg, folder: str) -> Callable[[], None]:
  def run():
    os.makedirs(folder, exist_ok=True)
    train_timed(cfg, folder)
  return run


def _flat(name: str) -> str:
  """A unit's name as one file name: "students/pkd_x16_seed0" -> "students__pkd_x16_seed0"."""
  return name.replace("/", "__")


def _lists(tree):
  return {k: _lists(v) if isinstance(v, dict) else [float(x) for x in np.ravel(v)]
          for k, v in tree.items()}


# ---------------------------------------------------------------------- aggregation


def aggregate(units: list[Unit], scores: dict[str, dict], references: list[dict]) -> list[dict]:
  """Table rows: one per (method, factor), seeds pooled (see the module docstring)."""
  groups: dict[tuple[str, int, str], list[Unit]] = {}
  for unit in units:
    if unit.name in scores:
      groups.setdefault((unit.method, unit.factor, unit.kind), []).append(unit)
  rows = []
  for (method, factor, kind), members in groups.items():
    per_seed = [scores[u.name]["per_case"] for u in members]
    row = dict(method=method, factor=factor, kind=kind, seeds=[u.seed for u in members],
               units=[u.name for u in members], metrics={})
    for k in TARGET_MAPS:
      row["metrics"][k] = {}
      for m in metrics.METRICS:
        values = np.array([s[k][m] for s in per_seed])  # (seeds, cases)
        seed_means = values.mean(axis=1)
        spread = (seed_means.std(ddof=1) if len(members) > 1 else values[0].std(ddof=1)
                  if values.shape[1] > 1 else 0.0)
        row["metrics"][k][m] = dict(mean=float(seed_means.mean()), std=float(spread),
                                    spread_over="seeds" if len(members) > 1 else "cases",
                                    per_seed=[float(x) for x in seed_means],
                                    per_case=[float(x) for x in values.mean(axis=0)])
    row["tmax_gt6_dice"] = float(np.mean([scores[u.name]["tmax_gt6_dice"] for u in members]))
    rows.append(row)
  for r in references:
    row = dict(method=r["method"], factor=r["factor"], kind="reference", seeds=[], units=[],
               metrics={}, tmax_gt6_dice=r["tmax_gt6_dice"])
    for k in TARGET_MAPS:
      row["metrics"][k] = {}
      for m in metrics.METRICS:
        values = np.array(r["per_case"][k][m])
        row["metrics"][k][m] = dict(mean=float(values.mean()),
                                    std=float(values.std(ddof=1)) if len(values) > 1 else 0.0,
                                    spread_over="cases", per_seed=[],
                                    per_case=[float(x) for x in values])
    rows.append(row)
  order = {"student": 0, "teacher": 1, "competitor": 2, "reference": 3}
  strategy_order = {name: i for i, name in enumerate(METHOD_NAMES.values())}
  rows.sort(key=lambda r: (-r["factor"], order[r["kind"]], strategy_order.get(r["method"], 99),
                           r["method"]))
  add_p_values(rows)
  return rows


def add_p_values(rows: list[dict]) -> None:
  """p_vs_pkd[map][metric] = {p, p_holm} for every row at a factor where PKD has a row."""
  pkd = {r["factor"]: r for r in rows if r["method"] == METHOD_NAMES["pkd"]}
  for k in TARGET_MAPS:
    for m in metrics.METRICS:
      family = []
      for r in rows:
        ref = pkd.get(r["factor"])
        if ref is None or ref is r:
          continue
        a, b = ref["metrics"][k][m]["per_case"], r["metrics"][k][m]["per_case"]
        p = metrics.paired_t_test(a, b, "greater" if HIGHER_IS_BETTER[m] else "less")
        family.append((r, p))
      adjusted = metrics.holm([p for _, p in family])
      for (r, p), p_holm in zip(family, adjusted):
        r.setdefault("p_vs_pkd", {}).setdefault(k, {})[m] = dict(p=p, p_holm=p_holm)


def markdown_table(rows: list[dict], num_cases: int, num_seeds: int) -> str:
  titles = {"tmax": "Tmax", "cbv": "CBV", "cbf": "CBF"}
  header = (["method", "factor", "seeds"]
            + [f"{titles[k]} {m.upper()}" for k in TARGET_MAPS for m in metrics.METRICS]
            + [f"p {titles[k]} RMSE (Holm)" for k in TARGET_MAPS])
  lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
  best = {}
  for r in rows:
    for k in TARGET_MAPS:
      for m in metrics.METRICS:
        v = r["metrics"][k][m]["mean"]
        key = (r["factor"], k, m)
        best[key] = (max if HIGHER_IS_BETTER[m] else min)(best.get(key, v), v)
  for r in rows:
    cells = [r["method"], "full" if r["factor"] == 1 else f"1/{r['factor']}",
             str(len(r["seeds"])) if r["seeds"] else "—"]
    for k in TARGET_MAPS:
      for m in metrics.METRICS:
        cell = r["metrics"][k][m]
        text = f"{cell['mean']:.3f} ± {cell['std']:.3f}"
        cells.append(f"**{text}**" if cell["mean"] == best[(r["factor"], k, m)] else text)
    for k in TARGET_MAPS:
      p = r.get("p_vs_pkd", {}).get(k, {}).get("rmse")
      cells.append("—" if p is None or np.isnan(p["p"]) else f"{p['p']:.3g} ({p['p_holm']:.3g})")
    lines.append("| " + " | ".join(cells) + " |")
  lines.append("")
  lines.append(f"Students and competitors: mean over {num_seeds} seeds of each seed's mean over "
               f"{num_cases} test cases, ± the standard deviation over seeds; teachers and "
               "references (one run): mean ± standard deviation over test cases. RMSE in the "
               "maps' units; SSIM and PSNR as the paper. Best per factor in bold. p: one-tailed "
               "paired t-test over test cases (per-case values averaged over seeds) of PKD "
               "against the row at the same factor, H1: PKD's RMSE is lower; in brackets Holm-"
               "Bonferroni adjusted over the rows compared for that map and metric (the JSON "
               "has SSIM and PSNR too).")
  return "\n".join(lines) + "\n"


def _find(rows, method, factor):
  return next((r for r in rows if r["method"] == method and r["factor"] == factor), None)


def reading(rows: list[dict]) -> str:
  """A plain-language reading of the table against the paper's three claims, from its numbers."""
  out = []
  pkd, none = _find(rows, "PKD", 16), _find(rows, "w/o PKD", 16)
  full = _find(rows, "teacher x1", 1)
  if pkd is None:
    return "PKD at 1/16 has not been trained yet: no reading."

  def rmse(r, k):
    return r["metrics"][k]["rmse"]["mean"]

  def p(r, k, metric="rmse"):
    return r.get("p_vs_pkd", {}).get(k, {}).get(metric, {}).get("p_holm", float("nan"))

  floor = _find(rows, "constant healthy", 16)
  if floor is not None:  # before any claim: did the 1/16 networks learn at all?
    learners = [r for r in rows if r["factor"] == 16 and r["kind"] in ("student", "competitor")]
    below = {k: [r["method"] for r in learners if rmse(r, k) < rmse(floor, k)]
             for k in TARGET_MAPS}
    out.append(
        "0. The floor first: the constant healthy-tissue predictor (the same maps for every case, "
        "no network) has RMSE " + " / ".join(f"{rmse(floor, k):.3f}" for k in TARGET_MAPS)
        + " (Tmax / CBV / CBF) at 1/16. Networks at 1/16 below it: "
        + "; ".join(f"{k} {', '.join(below[k]) or 'none'}" for k in TARGET_MAPS)
        + f" (PKD against it, Holm p Tmax {p(floor, 'tmax'):.2g}). "
        + ("No network at 1/16 predicts Tmax better than this constant: at this scale the 1/16 "
           "networks have not learned Tmax beyond the population's healthy values, so the "
           "differences between them below are differences between networks that have not "
           "learned, not a test of the paper's claims." if not below["tmax"] else
           "PKD is below it for Tmax." if "PKD" in below["tmax"] else
           "PKD is not below it for Tmax."))
  if none is not None:
    lower = [k for k in TARGET_MAPS if rmse(pkd, k) < rmse(none, k)]
    significant = [k for k in lower if p(none, k) < 0.05]
    out.append(
        f"1. PKD below w/o PKD at 1/16 (the paper: Tmax / CBV / CBF RMSE 1.436 / 9.004 / 49.639 "
        f"vs 1.516 / 9.536 / 52.536). Here PKD's RMSE is lower for {len(lower)} of 3 maps "
        f"({', '.join(lower) or 'none'}): "
        + ", ".join(f"{k} {rmse(pkd, k):.3f} vs {rmse(none, k):.3f} (Holm p {p(none, k):.2g})"
                    for k in TARGET_MAPS)
        + f"; significant at 0.05 after correction for {', '.join(significant) or 'none'}. "
        + ("Shown." if len(significant) == 3 else "Not shown." if not significant else
           f"Shown for {', '.join(significant)} only."))
  kd_rows = [r for r in rows if r["factor"] == 16 and r["kind"] == "student"
             and r["method"] not in ("PKD", "w/o PKD")]
  if kd_rows:
    wins = {k: all(rmse(pkd, k) <= rmse(r, k) for r in kd_rows) for k in TARGET_MAPS}
    out.append(
        "2. PKD best of the KD methods (KD, TAKD, MTKD, DGKD) at 1/16: lowest mean RMSE for "
        + ", ".join(f"{k} {'yes' if wins[k] else 'no'}" for k in TARGET_MAPS)
        + "; against each: "
        + "; ".join(f"{r['method']} " + "/".join(f"{rmse(r, k):.3f}" for k in TARGET_MAPS)
                    + f" (Holm p Tmax {p(r, 'tmax'):.2g})" for r in kd_rows)
        + ". " + ("Shown in the means (see the p-values for whether it is more than noise)."
                  if all(wins.values()) else "Not shown." if not any(wins.values()) else
                  "Not shown for every map."))
  if full is not None:
    gaps = {k: (rmse(pkd, k) - rmse(full, k)) / rmse(full, k) for k in TARGET_MAPS}
    out.append(
        "3. 1/16 with PKD close to full resolution (the paper: 1.436 / 9.004 / 49.639 vs 1.201 / "
        "8.892 / 48.163, i.e. +20% / +1% / +3%): here "
        + ", ".join(f"{k} {rmse(pkd, k):.3f} vs {rmse(full, k):.3f} ({gaps[k]:+.0%})"
                    for k in TARGET_MAPS) + ".")
  out.append("A mean below another's with a p-value above 0.05 is not evidence; with few test "
             "cases and seeds the tests have little power, and small networks trained for few "
             "steps (the CPU scales) need not rank like the paper's.")
  return "\n\n".join(out)


def validation_histories(folders: dict[str, str]) -> tuple[dict[str, list], list]:
  """The validation histories of the students in ``folders`` ({method: folder}; those not yet
  validated are left out) and PKD's teacher switches ((step, label), from its schedule.json),
  for :func:`pkd_jax.report.learning_curves`."""
  histories, switches = {}, []
  for method, folder in folders.items():
    path = os.path.join(folder, train.VALIDATION_HISTORY_FILE)
    if os.path.exists(path):
      with open(path) as f:
        histories[method] = json.load(f)
    schedule = os.path.join(folder, "schedule.json")
    if method == METHOD_NAMES["pkd"] and os.path.exists(schedule):
      with open(schedule) as f:
        switches = [(e["step"], f"{e['teacher']} ({e['rule']})") for e in json.load(f)
                    if e["step"] > 0]
  return histories, switches


def figures(table: Table2, units: list[Unit], scores: dict, records, stem: str) -> list[str]:
  paths = []
  config = table.base_config()
  ranges = dict(config.data.map_ranges)
  example = max(range(len(records[0])), key=lambda i: records[0][i]["brain_mask"].sum())
  truth = {k: records[0][example][k] for k in TARGET_MAPS}
  predictions = {}
  for unit in units:
    if unit.seed == 0 and unit.name in scores and (unit.kind != "teacher" or unit.factor == 1):
      label = f"{unit.method}, 1/{unit.factor}" if unit.factor > 1 else f"{unit.method}, full"
      predictions[label] = {k: np.asarray(v) for k, v in scores[unit.name]["example"].items()}
  if predictions:
    first = next((k for k in predictions if k.startswith("PKD, 1/16")), None)
    if first:  # PKD first: the error row is PKD's
      predictions = {first: predictions.pop(first), **predictions}
    paths.append(report.comparison_figure(truth, predictions, ranges, stem + "_maps.png",
                                          title="one test slice: every method (seed 0)"))
  histories, switches = validation_histories(
      {METHOD_NAMES[s]: os.path.join(table.runs, f"students/{s}_x16_seed0")
       for s in STUDENT_STRATEGIES})
  if histories:
    paths.append(report.learning_curves(histories, stem + "_curves.png", switches=switches,
                                        title="1/16 students, seed 0: validation "
                                              "(dotted: PKD's teacher switches)"))
  return paths


# ---------------------------------------------------------------------- the command

_SCALE = flags.DEFINE_enum("scale", "mini", list(SCALES), "experiment scale")
_RUNS = flags.DEFINE_string("runs", None, "run folders (default runs/table2_SCALE)")
_OUT = flags.DEFINE_string("out", os.path.join(os.path.dirname(__file__), "results"),
                           "folder for table2_SCALE.{md,csv,json,_maps.png,_curves.png}")
_ONLY = flags.DEFINE_list("only", [], "train only these units (names or fnmatch patterns, e.g. "
                          "teachers, 'students/pkd_*'); the report covers all that is trained")
_REPORT = flags.DEFINE_boolean("report", True, "score what is trained and write the table")
_WORKERS = flags.DEFINE_integer(
    "workers", 1, "training processes, each pinned to its share of this process's CPU cores "
    "(2 on 2 cores: about 1.1x the training steps per second of one process at the mini scale; "
    "README); a worker waits for the teachers another is training and scores what it trains")
_WORKER_CORES = flags.DEFINE_list("worker_cores", [], "(set by --workers) this worker's cores")
_WORKER_NAME = flags.DEFINE_string("worker_name", "", "(set by --workers) this worker's name")


def worker_cores(workers: int, cores=None) -> list[list[int]]:
  """This process's CPU cores (or ``cores``) split into ``workers`` groups, as even as can be."""
  cores = sorted(os.sched_getaffinity(0) if cores is None else cores)
  if not 1 <= workers <= len(cores):
    raise ValueError(f"--workers={workers}: this process may use {len(cores)} CPU core(s); "
                     f"give 1 to {len(cores)}")
  return [[int(c) for c in group] for group in np.array_split(cores, workers)]


def worker_command(scale: str, runs: str, out: str, only: list[str] | None, cores: list[int],
                   name: str) -> list[str]:
  """The command line of one worker of :func:`run_workers`: this script on ``cores``."""
  return ([sys.executable, os.path.abspath(__file__), f"--scale={scale}", f"--runs={runs}",
           f"--out={out}", "--noreport", f"--worker_cores={','.join(map(str, cores))}",
           f"--worker_name={name}"] + ([f"--only={','.join(only)}"] if only else []))


def _exit_on_sigterm(signum, frame):
  del frame
  raise SystemExit(128 + signum)


def run_workers(scale: str, runs: str, out: str, only: list[str] | None, workers: int,
                meanwhile: Callable[[], Any] | None = None) -> None:
  """Trains the selected units with ``workers`` processes of this script, each pinned to its
  share of the cores (:func:`worker_cores`) and waiting for the teachers another trains
  (:meth:`Table2.train` with ``wait``); RuntimeError naming the workers that failed. Interrupted
  (Ctrl-C, or SIGTERM from ``kill`` or a job scheduler), it stops its workers before it exits:
  without the SIGTERM handler they went on training, orphaned. ``meanwhile()`` runs in this
  process while the workers train (the report's reference rows: they no longer wait for the
  last unit)."""
  groups = worker_cores(workers)
  procs = []
  previous = signal.signal(signal.SIGTERM, _exit_on_sigterm)
  try:
    for i, cores in enumerate(groups):
      print(f"worker w{i} on core(s) {', '.join(map(str, cores))}", flush=True)
      procs.append(subprocess.Popen(worker_command(scale, runs, out, only, cores, f"w{i}")))
    if meanwhile is not None:
      meanwhile()
    codes = [p.wait() for p in procs]
  finally:
    for p in procs:  # on an interruption or error here, no worker is left behind
      if p.poll() is None:
        p.terminate()
        p.wait()
    signal.signal(signal.SIGTERM, previous)
  failed = [f"w{i} (exit {code})" for i, code in enumerate(codes) if code]
  if failed:
    raise RuntimeError(f"worker(s) {', '.join(failed)} failed (their output is above); what "
                       f"finished stays trained: run the same command again to resume")


def work(scale: str, runs: str, out: str, only: list[str] | None, name: str) -> None:
  """One worker of :func:`run_workers`: trains what it can, waiting for teachers others train,
  and scores each unit it trained (the scores are cached in RUNS/scores for the report)."""
  table = Table2(scale, runs, out)
  table.train(table.select(only), wait=True, tag=f"{name} ",
              after_each=lambda unit: table.score([unit], table.test_records))


def run(scale: str, runs: str, out: str, only: list[str] | None = None,
        write_report: bool = True, workers: int = 1) -> dict | None:
  """Trains what is selected and not yet trained (in ``workers`` processes when above 1, see
  :func:`run_workers`), then (write_report) scores and reports."""
  start = time.perf_counter()
  table = Table2(scale, runs, out)
  if workers != 1:
    table.select(only)  # a pattern that matches nothing fails here, not in every worker
    run_workers(scale, runs, out, only, workers,
                meanwhile=(lambda: table.references(table.test_records)) if write_report else None)
  else:
    table.train(table.select(only))
  train_s = time.perf_counter() - start
  if not write_report:
    return None
  records = table.test_records
  scores = table.score(table.units, records)
  rows = aggregate(table.units, scores, table.references(records))
  num_cases = len(records[1])
  num_seeds = table.scale.num_seeds
  stem = os.path.join(out, f"table2_{scale}")
  os.makedirs(out, exist_ok=True)
  markdown = markdown_table(rows, num_cases, num_seeds)
  text = reading(rows)
  fileio.write_text(stem + ".md", f"# Table 2 ({scale} scale)\n\n" + markdown + "\n" + text + "\n")
  csv_lines = ["method,factor,kind,seeds," + ",".join(
      f"{k}_{m}_{s}" for k in TARGET_MAPS for m in metrics.METRICS for s in ("mean", "std"))]
  for r in rows:
    csv_lines.append(",".join([r["method"], str(r["factor"]), r["kind"], str(len(r["seeds"]))]
                              + [f"{r['metrics'][k][m][s]:.6g}" for k in TARGET_MAPS
                                 for m in metrics.METRICS for s in ("mean", "std")]))
  fileio.write_text(stem + ".csv", "\n".join(csv_lines) + "\n")
  trained = sum(u.name in scores for u in table.units)
  unit_times = {u.name: round(t, 1) for u in table.units
                if (t := recorded_train_s(table.folder(u))) is not None}
  trained_in = group_environments({u.name: recorded_environment(table.folder(u))
                                   for u in table.units if u.name in unit_times})
  result = dict(
      command=" ".join(["python"] + sys.argv), **provenance(),
      scale=scale, scale_settings=dataclasses.asdict(table.scale), workers=workers,
      num_seeds=num_seeds,
      num_test_cases=num_cases, units_trained=trained, units_planned=len(table.units),
      wall_s=dict(this_call_train=round(train_s, 1),
                  this_call_total=round(time.perf_counter() - start, 1),
                  train_per_unit=unit_times, train_all_sittings=round(sum(unit_times.values()), 1)),
      trained_in=trained_in,
      rows=rows, reading=text)
  fileio.write_json(stem + ".json", result)
  figures(table, table.units, scores, records, stem)
  print(markdown)
  print(text)
  return result


def main(argv):
  del argv
  if _WORKER_CORES.value:  # before JAX sizes its thread pool by the cores this process may use
    os.sched_setaffinity(0, [int(c) for c in _WORKER_CORES.value])
  runtime.share_accelerator(_WORKERS.value)  # the workers, and this process's reference rows
  runtime.enable_compilation_cache()
  verbosity = flags.FLAGS["verbosity"]  # absl's own flag: --verbosity=0 shows library INFO lines
  runtime.set_library_logging(verbosity.value if verbosity.present else None)
  runs = _RUNS.value or os.path.join("runs", f"table2_{_SCALE.value}")
  if _WORKER_CORES.value:
    work(_SCALE.value, runs, _OUT.value, _ONLY.value, _WORKER_NAME.value)
  else:
    run(_SCALE.value, runs, _OUT.value, _ONLY.value, _REPORT.value, _WORKERS.value)


if __name__ == "__main__":
  app.run(main)
