"""User-facing errors and the command-line wrapper that reports them without a traceback.

Every problem with a user's input (a file, a folder, a config value) is raised as a
:class:`InputError` that names the offending path or setting and says what is wrong. Entry points
wrap their ``main`` in :func:`exit_on_input_error`, which prints ``error: <message>`` to stderr and
exits with status 2 instead of dumping a traceback.
"""

from __future__ import annotations

import functools
import os
import sys
from typing import Callable, TypeVar

_F = TypeVar("_F", bound=Callable)


class InputError(ValueError):
  """Bad input from the user: names where (a file, folder or setting) and what is wrong."""

  def __init__(self, where: os.PathLike | str, problem: str):
    self.where = os.fspath(where)
    self.problem = problem
    super().__init__(f"{self.where}: {problem}")


def exit_on_input_error(main: _F) -> _F:
  """Decorates a CLI main: an InputError becomes a one-line message on stderr and exit code 2."""

  @functools.wraps(main)
  def wrapper(*args, **kwargs):
    try:
      return main(*args, **kwargs)
    except InputError as e:
      print(f"error: {e}", file=sys.stderr)
      sys.exit(2)

  return wrapper  # type: ignore[return-value]
