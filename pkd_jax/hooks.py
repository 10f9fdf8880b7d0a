"""Hooks: what a kind of run adds to the training loop (pkd_jax.train.train_and_evaluate) without
editing it.

The loop calls a :class:`Hook` at fixed points: for the step's teachers (their temporal factors and
stacked variables, or none), after each step, at the end of each epoch, after each validation and
when training ends; the hook's ``state_dict`` is saved in every checkpoint and restored on resume.
The base class does nothing: a run on the ground truth alone. A distillation's teaching
(pkd_jax.distill.Teaching) is one.

Hooks talk back through a :class:`RunLog`: TensorBoard scalars and text, a line above the progress
bar, and the run's folder for files of their own.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Sequence


@dataclasses.dataclass
class RunLog:
  """Where a hook reports: ``workdir`` (the run's folder), TensorBoard (``writer``, a
  tensorboardX SummaryWriter or None) and the progress bar (``bar``, tqdm or None)."""

  workdir: str
  writer: Any = None
  bar: Any = None

  def scalar(self, tag: str, value: float, step: int) -> None:
    if self.writer is not None:
      self.writer.add_scalar(tag, value, step)

  def text(self, tag: str, text: str, step: int) -> None:
    if self.writer is not None:
      self.writer.add_text(tag, text, step)

  def message(self, line: str) -> None:
    """A line printed above the progress bar."""
    if self.bar is not None:
      self.bar.write(line)
    else:
      print(line)


class Hook:
  """A no-op hook; subclasses override what they need. ``step`` is the number of steps done."""

  def describe(self) -> str:
    """What is trained now, for the progress bar ("" for nothing to add)."""
    return ""

  def teacher_factors(self) -> Sequence[int]:
    """Temporal factors of the teachers the next step needs inputs for (none: no teacher)."""
    return ()

  def teachers_arg(self, step: int) -> Any:
    """The train step's ``teachers`` argument for the step after ``step`` (None: no teacher)."""
    del step
    return None

  def after_step(self, step: int, metrics: dict[str, Any], log: RunLog) -> None:
    """After each step; metrics are device arrays (reading them waits for the device)."""

  def end_epoch(self, step: int, log: RunLog) -> None:
    """After the last step of each epoch (pkd_jax.train.schedule_epoch_steps)."""

  def after_evaluation(self, step: int, metrics: dict[str, float], log: RunLog) -> None:
    """After each validation (metrics as pkd_jax.train.evaluate returns them)."""

  def finish(self, log: RunLog) -> None:
    """When training ends (also when it was already finished)."""

  def state_dict(self) -> dict[str, Any]:
    """JSON-able state, saved with every checkpoint."""
    return {}

  def load_state_dict(self, state: dict[str, Any]) -> None:
    """Restores :meth:`state_dict`'s output on resume."""
    del state
