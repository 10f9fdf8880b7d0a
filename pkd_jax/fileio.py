"""All-or-nothing writing of outputs, and claims on work shared by several processes."""

from __future__ import annotations

import contextlib
import fcntl
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


def _describe(text: str, path: pathlib.Path) -> tuple[str, bool]:
  """A claim file's holder, "pid N on HOST", and whether HOST is another machine."""
  try:
    owner = json.loads(text)
    pid, host = int(owner["pid"]), str(owner["host"])
  except (ValueError, KeyError, TypeError):
    return f"another process ({path})", False  # being written this instant, or garbled
  return f"pid {pid} on {host}", host != socket.gethostname()


def claim_holder(path: os.PathLike | str) -> str | None:
  """Who holds the claim (see :func:`claim`) at `path`, "pid N on HOST"; None when nobody does:
  no file, or one that no process locks any more (stale: its process has exited)."""
  path = pathlib.Path(path)
  try:
    f = open(path, encoding="utf-8")  # pylint: disable=consider-using-with
  except FileNotFoundError:
    return None
  with f:
    try:
      fcntl.flock(f, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:  # a live claimant holds its lock
      return _describe(f.read(), path)[0]
    holder, foreign = _describe(f.read(), path)
    return holder if foreign else None  # another host's lock is not seen here: respected


@contextlib.contextmanager
def claim(path: os.PathLike | str) -> Iterator[str | None]:
  """A lock file at `path` for the block: yields None when this process holds it, else who does
  (:func:`claim_holder`), and then the caller should leave the work alone.

  The claimant holds an exclusive ``flock`` on the file for the block (released by the system
  when its process ends, however it ends) and writes its pid and host into it; the file is
  removed when the block ends. A file nobody locks (left by a process that has exited) is taken
  over, with no window in which two processes can both take it; one naming another host is
  always respected (remove the file by hand if that host died).
  """
  path = pathlib.Path(path)
  path.parent.mkdir(parents=True, exist_ok=True)
  while True:
    fd = os.open(path, os.O_CREAT | os.O_RDWR, 0o666)
    f = os.fdopen(fd, "r+", encoding="utf-8")
    try:
      fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
      holder = _describe(f.read(), path)[0]
      f.close()
      yield holder
      return
    try:
      same = os.stat(path).st_ino == os.fstat(fd).st_ino
    except FileNotFoundError:
      same = False
    if not same:  # locked a file its holder removed as we opened it: look again
      f.close()
      continue
    holder, foreign = _describe(f.read(), path)
    if foreign:
      f.close()
      yield holder
      return
    break
  with f:
    f.seek(0)
    f.truncate()
    json.dump({"pid": os.getpid(), "host": socket.gethostname()}, f)
    f.flush()
    try:
      yield None
    finally:
      path.unlink(missing_ok=True)  # before the lock goes, so no one takes a removed file
