"""All-or-nothing writing of outputs, and claims on work shared by several processes."""

from __future__ import annotations

import contextlib
import json
import os
import pathlib
import shutil
import socket
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


def _alive(pid: int) -> bool:
  try:
    os.kill(pid, 0)
  except ProcessLookupError:
    return False
  except PermissionError:  # another user's process
    return True
  return True


def claim_holder(path: os.PathLike | str) -> str | None:
  """Who holds the claim (see :func:`claim`) at `path`, "pid N on HOST"; None when nobody does:
  no file, or one left by a process of this host that is no longer running (stale)."""
  path = pathlib.Path(path)
  try:
    owner = json.loads(path.read_text())
    pid, host = int(owner["pid"]), str(owner["host"])
  except FileNotFoundError:
    return None
  except (OSError, ValueError, KeyError, TypeError):
    return f"another process ({path})"  # being written this instant, or garbled: respected
  if host == socket.gethostname() and not _alive(pid):
    return None
  return f"pid {pid} on {host}"


@contextlib.contextmanager
def claim(path: os.PathLike | str) -> Iterator[str | None]:
  """A lock file at `path` for the block: yields None when this process holds it, else who does
  (:func:`claim_holder`), and then the caller should leave the work alone.

  The file is created exclusively (O_EXCL) and removed when the block ends. A stale claim (its
  process, on this host, is gone) is taken over; one from another host is always respected
  (remove the file by hand if that host died).
  """
  path = pathlib.Path(path)
  path.parent.mkdir(parents=True, exist_ok=True)
  for _ in range(2):
    try:
      fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o666)
    except FileExistsError:
      holder = claim_holder(path)
      if holder is None:
        path.unlink(missing_ok=True)
        continue
      yield holder
      return
    with os.fdopen(fd, "w") as f:
      json.dump({"pid": os.getpid(), "host": socket.gethostname()}, f)
    try:
      yield None
    finally:
      path.unlink(missing_ok=True)
    return
  yield f"another process ({path})"  # the stale claim was taken over by another meanwhile
