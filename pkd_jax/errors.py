"""User-facing errors and the command-line wrapper that reports them without a traceback.

Every problem with a user's input (a file, a folder, a config value) is raised as an
:class:`InputError` that names the offending path or setting and says what is wrong; a training
run that must stop (a non-finite loss) raises :class:`TrainingStopped`. Entry points wrap their
``main`` in :func:`exit_on_input_error`, which prints ``error: <message>`` to stderr and exits with
status 2 instead of dumping a traceback.
"""

from __future__ import annotations

import functools
import os
import sys
from typing import Callable, TypeVar

_F = TypeVar("_F", bound=Callable)


class ReportedError(Exception):
  """An error whose message is complete for the user: the CLI prints it without a traceback."""


class InputError(ReportedError, ValueError):
  """Bad input from the user: names where (a file, folder or setting) and what is wrong."""

  def __init__(self, where: os.PathLike | str, problem: str):
    self.where = os.fspath(where)
    self.problem = problem
    super().__init__(f"{self.where}: {problem}")


class TrainingStopped(ReportedError, RuntimeError):
  """Training cannot go on (e.g. a non-finite loss); the message says what is kept and where."""


def exit_on_input_error(main: _F) -> _F:
  """Decorates a CLI main: a ReportedError becomes a one-line message on stderr and exit code 2."""

  @functools.wraps(main)
  def wrapper(*args, **kwargs):
    try:
      return main(*args, **kwargs)
    except ReportedError as e:
      print(f"error: {e}", file=sys.stderr)
      sys.exit(2)

  return wrapper  # type: ignore[return-value]
