"""Teacher schedules for knowledge distillation: none, kd, takd, mtkd, dgkd and pkd.

Every strategy runs through one code path: the train step receives K teachers' variables stacked
on a leading axis, their inputs (each at its own temporal factor, the same crop as the student's)
and K weights (see :func:`active_teachers`, :func:`teacher_weights`). The KD loss
L_KD = feature + lambda_kd * L_map combines the teachers in one of two ways:

* "targets" (MTKD, and K = 1): the map term scores the student against the weighted average of
  the teachers' maps (soft targets in physical units, so they can be averaged), while the feature
  term is the weighted mean over teachers of mean |f_s - f_k|, the student's bottleneck against
  each teacher's own. Teachers initialised independently have unaligned feature spaces (the same
  features permuted or negated serve as well), so averaging their bottlenecks would give a target
  no teacher has (two teachers with f and -f average to 0).
* "losses" (DGKD): the weighted mean of per-teacher KD losses, both terms per teacher.

With one teacher both are the paper's L_KD. What changes between strategies is only which
teachers there are and how their weights evolve, decided here on the host:

* ``none``: the student alone ("w/o PKD"), no teacher.
* ``kd``: one full-resolution teacher throughout (Hinton et al. 2015).
* ``takd``: a teacher assistant at 1/4, itself distilled from the full teacher, teaches the
  student (Mirzadeh et al., AAAI 2020).
* ``mtkd``: three full-resolution teachers of different initialisation seeds, trained on the same
  data (config.data.seed), their maps averaged and their features matched one by one.
* ``dgkd``: teachers 1/8, 1/4, 1/2 and full all at once; each step a random ``dgkd_drop`` of them
  is dropped (Son et al., ICCV 2021, "Densely guided knowledge distillation").
* ``pkd``: the paper's progressive distillation: teachers 1/8 -> 1/4 -> 1/2 -> full, moving on when
  the epoch-mean KD loss has not decreased (by more than ``min_delta``) for ``patience`` epochs,
  or after ``max_epochs_per_stage`` epochs if set (a safety net); after the last teacher, training
  goes on. An epoch is one pass over the training slices, or ``distill.epoch_steps`` steps if set
  (pkd_jax.train.schedule_epoch_steps).

Teachers are named by :class:`TeacherSpec` (factor, seed, and whether it is a distilled teacher
assistant); the job (pkd_jax.job) finds or trains each one.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
from typing import Any, Callable, Sequence

import jax
import numpy as np

from pkd_jax import fileio, hooks
from pkd_jax.errors import InputError

@dataclasses.dataclass(frozen=True)
class TeacherSpec:
  """One teacher: its temporal factor, seed, and whether it is a teacher assistant (distilled)."""

  factor: int
  seed: int = 0
  assistant: bool = False

  @property
  def name(self) -> str:
    """Its folder name under the teachers' folder: x8, x1_seed2, ta_x4."""
    name = f"ta_x{self.factor}" if self.assistant else f"x{self.factor}"
    return name + (f"_seed{self.seed}" if self.seed else "")


@dataclasses.dataclass
class PKDSchedule:
  """The progressive teacher schedule, driven by epoch-mean KD losses; its state is JSON-able.

  ``end_epoch`` advances to the next teacher when the KD loss has not decreased by more than
  min_delta for `patience` consecutive epochs (or the stage reached max_epochs_per_stage epochs,
  if that is set: a safety net); the history records when each teacher took over, which rule
  fired ("rule": "start" for the first teacher, then "patience" or "cap"; patience wins when
  both hold) and why ("reason", in words).
  """

  num_stages: int
  patience: int = 5
  min_delta: float = 0.0
  max_epochs_per_stage: int = 0  # 0: no cap
  stage: int = 0
  best: float = math.inf
  epochs_without_improvement: int = 0
  epochs_in_stage: int = 0
  history: list[dict[str, Any]] = dataclasses.field(default_factory=list)

  def __post_init__(self):
    if self.patience < 1:
      raise InputError("config.distill.patience", f"must be at least 1, got {self.patience}")
    if not self.history:
      self.history.append(dict(stage=0, step=0, epoch=0, rule="start", reason="first teacher"))

  def end_epoch(self, epoch: int, step: int, kd_loss: float) -> bool:
    """Feeds one epoch's mean KD loss; returns True if the next teacher takes over now."""
    self.epochs_in_stage += 1
    if kd_loss < self.best - self.min_delta:
      self.best, self.epochs_without_improvement = float(kd_loss), 0
    else:
      self.epochs_without_improvement += 1
    if self.stage + 1 >= self.num_stages:
      return False
    if self.epochs_without_improvement >= self.patience:
      rule, reason = "patience", (f"KD loss did not decrease for {self.patience} epochs "
                                  f"(best {self.best:.5g}, last {kd_loss:.5g})")
    elif self.max_epochs_per_stage and self.epochs_in_stage >= self.max_epochs_per_stage:
      rule, reason = "cap", (f"stage reached its cap of {self.max_epochs_per_stage} epochs "
                             f"(best {self.best:.5g}, last {kd_loss:.5g})")
    else:
      return False
    self.stage += 1
    self.best, self.epochs_without_improvement, self.epochs_in_stage = math.inf, 0, 0
    self.history.append(dict(stage=self.stage, step=step, epoch=epoch, rule=rule, reason=reason))
    return True

  def state_dict(self) -> dict[str, Any]:
    return dataclasses.asdict(self)

  @classmethod
  def from_state_dict(cls, state: dict[str, Any]) -> "PKDSchedule":
    return cls(**state)


def _dgkd_weights(num_teachers: int, step: int, seed: int, drop: int) -> np.ndarray:
  """1 / (number kept) for the teachers kept after dropping `drop` of them at random,
  reproducibly from (seed, step); 0 for the dropped."""
  if not 0 <= drop < num_teachers:
    raise InputError("config.distill.dgkd_drop",
                     f"must be in 0..{num_teachers - 1} for {num_teachers} teachers, got {drop}")
  kept = np.random.default_rng([seed, step]).permutation(num_teachers)[drop:]
  weights = np.zeros(num_teachers, np.float32)
  weights[kept] = 1.0 / len(kept)
  return weights


@dataclasses.dataclass(frozen=True)
class Strategy:
  """A distillation strategy, as the loop and the train step see it (registered in
  :data:`STRATEGIES`; see the module docstring for each one).

  Attributes:
    name: the config's ``distill.strategy``.
    teachers: the teachers from MTKD's seeds, in stacking order (progressive: teaching order).
    combine: how the KD loss combines several teachers: "targets" or "losses".
    progressive: one teacher at a time, the next taking over when :class:`PKDSchedule` says so
      at the end of an epoch; otherwise all teachers teach at every step.
    drop_teachers: a random subset of the teachers per step (DGKD's ``dgkd_drop``).
    ladder: the teachers are a ladder of temporal factors (1/8 .. full) of which only those finer
      than the student teach (a 1/8 student learns from 1/4, 1/2 and full).
  """

  name: str
  teachers: Callable[[Sequence[int]], list[TeacherSpec]]
  combine: str = "targets"
  progressive: bool = False
  drop_teachers: bool = False
  ladder: bool = False

  def teacher_specs(self, student_factor: int, seeds: Sequence[int] = (0, 1, 2)
                    ) -> list[TeacherSpec]:
    """The teachers, checked to have finer temporal resolution than the student."""
    specs = self.teachers(seeds)
    if self.ladder:
      specs = [t for t in specs if t.factor < student_factor] or specs[-1:]
    for teacher in specs:
      if teacher.factor >= student_factor:
        raise InputError("config.train.factor",
                         f"the student's temporal factor {student_factor} must be above its "
                         f"teachers' ({teacher.name} has factor {teacher.factor})")
    return specs

  def active(self, teachers: Sequence[TeacherSpec], stage: int) -> list[TeacherSpec]:
    """The teachers stacked into the train step now: the current one if progressive (a step
    costs one teacher's forward pass whatever the stage, and the next teacher's variables have
    the same structure: no recompilation), else all of them."""
    return [teachers[stage]] if self.progressive else list(teachers)

  def weights(self, num_teachers: int, step: int, seed: int, dgkd_drop: int = 1) -> np.ndarray:
    """(K,) float32 weights of the stacked teachers for one step, summing to 1."""
    if self.drop_teachers:
      return _dgkd_weights(num_teachers, step, seed, dgkd_drop)
    return np.full(num_teachers, 1.0 / max(num_teachers, 1), np.float32)


STRATEGIES: dict[str, Strategy] = {s.name: s for s in (
    Strategy("none", lambda seeds: []),
    Strategy("kd", lambda seeds: [TeacherSpec(1)]),
    Strategy("takd", lambda seeds: [TeacherSpec(4, assistant=True)]),
    Strategy("mtkd", lambda seeds: [TeacherSpec(1, seed=s) for s in seeds]),
    Strategy("dgkd", lambda seeds: [TeacherSpec(f) for f in (8, 4, 2, 1)], combine="losses",
             drop_teachers=True, ladder=True),
    Strategy("pkd", lambda seeds: [TeacherSpec(f) for f in (8, 4, 2, 1)], progressive=True,
             ladder=True),
)}


def get_strategy(name: str) -> Strategy:
  """The registered strategy called name; InputError listing the valid names otherwise."""
  if name not in STRATEGIES:
    raise InputError("config.distill.strategy",
                     f"unknown strategy {name!r}; valid strategies: {', '.join(STRATEGIES)}")
  return STRATEGIES[name]


class Teaching(hooks.Hook):
  """Who teaches the student now: the training loop's hook for a distillation run, its state
  saved in checkpoints.

  Holds the teachers' (frozen) variables, the schedule and the running sum of this epoch's KD
  losses. The loop asks it for the step's teachers (:meth:`teachers_arg`), gives it each step's
  metrics (the KD loss is kept on the device until the epoch ends) and ends epochs, when the
  strategy may move on to the next teacher; ``schedule.json`` in the run's folder and TensorBoard
  (``distill/*``) record when each teacher took over, and why.
  """

  SCHEDULE_FILE = "schedule.json"

  def __init__(self, strategy: str, teachers: Sequence[TeacherSpec],
               variables: dict[str, Any], seed: int, patience: int = 5, min_delta: float = 0.0,
               max_epochs_per_stage: int = 0, dgkd_drop: int = 1):
    self.strategy = get_strategy(strategy)
    if not teachers:
      raise InputError("config.distill.strategy", "Teaching needs a strategy with teachers")
    missing = [t.name for t in teachers if t.name not in variables]
    if missing:
      raise InputError("teachers", f"no variables for {missing}")
    self.teachers, self.seed, self.dgkd_drop = list(teachers), seed, dgkd_drop
    self._variables = variables
    self.schedule = PKDSchedule(len(teachers), patience, min_delta, max_epochs_per_stage)
    self.epoch, self.epoch_kd_sum, self.epoch_kd_count = 0, 0.0, 0
    self._pending_kd: list = []  # this epoch's KD losses not yet read from the device
    self._stacked: tuple[int, Any] | None = None  # (stage, stacked variables on device)

  @property
  def stage(self) -> int:
    return self.schedule.stage if self.strategy.progressive else 0

  def active(self) -> list[TeacherSpec]:
    return self.strategy.active(self.teachers, self.stage)

  def teacher_factors(self) -> list[int]:
    """The temporal factors of the teachers stacked now, in stacking order."""
    return [t.factor for t in self.active()]

  def names(self) -> str:
    return "+".join(t.name for t in self.active())

  def describe(self) -> str:
    return f"<- teacher {self.names()}"

  def teachers_arg(self, step: int) -> dict[str, Any]:
    """The train step's teachers: variables stacked on a leading axis, and weights."""
    if self._stacked is None or self._stacked[0] != self.stage:
      chosen = [self._variables[t.name] for t in self.active()]
      # Stacked on the host (the train loop places them on its mesh): jnp.stack would compile a
      # program per leaf shape, 78 of them for the V-Net's teachers in one experiment.
      self._stacked = (self.stage, jax.tree.map(lambda *xs: np.stack([np.asarray(x) for x in xs]),
                                                *chosen))
    weights = self.strategy.weights(len(self.active()), step, self.seed, self.dgkd_drop)
    return {"variables": self._stacked[1], "weights": np.asarray(weights, np.float32)}

  def record_step(self, kd_loss) -> None:
    """Adds a step's KD loss (a float or a device scalar, read only when the epoch ends)."""
    self._pending_kd.append(kd_loss)

  def after_step(self, step: int, metrics: dict[str, Any], log: hooks.RunLog) -> None:
    self.record_step(metrics["kd"])

  def _flush(self) -> None:
    if self._pending_kd:
      self.epoch_kd_sum += float(np.sum(jax.device_get(self._pending_kd), dtype=np.float64))
      self.epoch_kd_count += len(self._pending_kd)
      self._pending_kd = []

  def end_epoch(self, step: int, log: hooks.RunLog | None = None) -> dict[str, Any] | None:
    """Closes an epoch; returns the schedule's new entry if the next teacher takes over (and
    reports the epoch, and any switch, to log)."""
    switch = self._close_epoch(step)
    if log is not None:
      log.scalar("distill/epoch_kd", self.last_epoch_kd, step)
      log.scalar("distill/stage", self.stage, step)
      if switch is not None:
        log.message(f"step {step}, epoch {switch['epoch']}: teacher {switch['teacher']} takes "
                    f"over ({switch['reason']})")
        log.text("distill/schedule", json.dumps(switch), step)
      self.finish(log)
    return switch

  def finish(self, log: hooks.RunLog) -> None:
    fileio.write_json(os.path.join(log.workdir, self.SCHEDULE_FILE), self.history())

  def _close_epoch(self, step: int) -> dict[str, Any] | None:
    self._flush()
    self.epoch += 1
    mean = self.epoch_kd_sum / max(self.epoch_kd_count, 1)
    self.epoch_kd_sum, self.epoch_kd_count = 0.0, 0
    self.last_epoch_kd = mean
    if self.strategy.progressive and self.schedule.end_epoch(self.epoch, step, mean):
      entry = dict(self.schedule.history[-1], teacher=self.teachers[self.stage].name)
      return entry
    return None

  def history(self) -> list[dict[str, Any]]:
    """When each teacher took over, and why."""
    if not self.strategy.progressive:
      return [dict(stage=0, step=0, epoch=0, rule="start", reason="all teachers throughout",
                   teacher=self.names())]
    return [dict(h, teacher=self.teachers[h["stage"]].name) for h in self.schedule.history]

  def state_dict(self) -> dict[str, Any]:
    self._flush()
    return dict(strategy=self.strategy.name, schedule=self.schedule.state_dict(), epoch=self.epoch,
                epoch_kd_sum=self.epoch_kd_sum, epoch_kd_count=self.epoch_kd_count)

  def load_state_dict(self, state: dict[str, Any]) -> None:
    if state.get("strategy") != self.strategy.name:
      raise InputError("checkpoint", f"was written by strategy {state.get('strategy')!r}, "
                       f"not {self.strategy.name!r}")
    self.schedule = PKDSchedule.from_state_dict(state["schedule"])
    self.epoch, self.epoch_kd_sum = int(state["epoch"]), float(state["epoch_kd_sum"])
    self.epoch_kd_count = int(state["epoch_kd_count"])
    self._pending_kd, self._stacked = [], None
