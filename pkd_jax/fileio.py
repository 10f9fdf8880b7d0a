"""All-or-nothing writing of a folder of outputs."""

from __future__ import annotations

import contextlib
import json
import os
import pathlib
import shutil
import tempfile
from typing import Iterator

from pkd_jax.errors import InputError


def _umask() -> int:
  mask = os.umask(0o022)
  os.umask(mask)
  return mask


@contextlib.contextmanager
def replace_folder(final: os.PathLike | str, what: str) -> Iterator[pathlib.Path]:
  """Yields a new temporary folder beside `final` (whose parent must exist) to write into.

  When the block ends without error, the temporary folder takes `final`'s place (an existing
  `final` is moved aside first and removed afterwards). On any error the temporary folder is
  removed and `final` is left as it was; an OSError becomes InputError(final, "cannot write
  <what>: ...").
  """
  final = pathlib.Path(final)
  tmp = old = None
  try:
    tmp = pathlib.Path(tempfile.mkdtemp(prefix=f".{final.name}.", suffix=".tmp", dir=final.parent))
    tmp.chmod(0o777 & ~_umask())  # mkdtemp's 0700 would outlive the rename: a plain mkdir's mode
    yield tmp
    if final.exists():
      old = tmp.with_name(tmp.name + ".old")
      os.replace(final, old)
    os.replace(tmp, final)
  except BaseException as e:
    if tmp is not None:
      shutil.rmtree(tmp, ignore_errors=True)
    if old is not None and old.exists() and not final.exists():
      os.replace(old, final)
    if isinstance(e, OSError):
      raise InputError(final, f"cannot write {what}: {e.strerror or e}") from e
    raise
  if old is not None:
    shutil.rmtree(old, ignore_errors=True)


def write_text(path: os.PathLike | str, text: str) -> None:
  """Writes a text file all or nothing: a temporary file beside it, then a rename; makes folders."""
  path = pathlib.Path(path)
  path.parent.mkdir(parents=True, exist_ok=True)
  tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
  try:
    tmp.write_text(text)
    os.replace(tmp, path)
  finally:
    tmp.unlink(missing_ok=True)


def write_json(path: os.PathLike | str, value) -> None:
  """write_text of value as indented JSON."""
  write_text(path, json.dumps(value, indent=2) + "\n")


def save_figure(fig, path: os.PathLike | str, dpi: int = 80) -> str:
  """Saves a matplotlib figure as PNG all or nothing, and closes it."""
  import matplotlib.pyplot as plt  # pylint: disable=import-outside-toplevel

  path = pathlib.Path(path)
  tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp.png")
  try:
    fig.savefig(tmp, dpi=dpi)
    os.replace(tmp, path)
  finally:
    plt.close(fig)
    tmp.unlink(missing_ok=True)
  return str(path)
