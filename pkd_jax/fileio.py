"""All-or-nothing writing of a folder of outputs."""

from __future__ import annotations

import contextlib
import os
import pathlib
import shutil
import tempfile
from typing import Iterator

from pkd_jax.errors import InputError


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
