"""Process-wide settings of the command lines (main, predict, the experiments), jitted functions
compiled with XLA options of their own, and a description of the environment a run's numbers
depend on (:func:`environment`)."""

from __future__ import annotations

import functools
import importlib.metadata
import os
import platform
from typing import Callable

# The packages whose versions decide a run's numbers (pkd_jax.runtime.environment).
NUMERIC_PACKAGES = ("jax", "jaxlib", "flax", "optax", "orbax-checkpoint", "numpy", "scipy")


def jit_with_options(fun: Callable, options: dict[str, str] | None = None, **jit_kwargs):
  """``jax.jit(fun, **jit_kwargs)`` compiling with XLA ``options`` ({} or None: XLA's defaults).

  The same jitted object for the same arguments, so each keeps its cache of compiled programs.
  """
  return _jit(fun, tuple(sorted((options or {}).items())), tuple(sorted(jit_kwargs.items())))


@functools.cache
def _jit(fun: Callable, options: tuple, jit_kwargs: tuple):
  import jax  # pylint: disable=import-outside-toplevel  (predict's --help stays fast)

  return jax.jit(fun, compiler_options=dict(options) or None, **dict(jit_kwargs))


def free_memory_bytes(device) -> int | None:
  """Bytes a new allocation on ``device`` can still take: an accelerator's limit less what is in
  use (``device.memory_stats()``), a CPU's the host's MemAvailable (Linux /proc/meminfo; shared
  by all CPU devices of the process); None where neither is known."""
  stats = device.memory_stats() if hasattr(device, "memory_stats") else None
  if stats and "bytes_limit" in stats:
    return int(stats["bytes_limit"]) - int(stats.get("bytes_in_use", 0))
  if device.platform != "cpu":
    return None
  try:
    with open("/proc/meminfo", encoding="ascii") as f:
      for line in f:
        if line.startswith("MemAvailable:"):
          return int(line.split()[1]) * 1024
  except OSError:
    pass
  return None


def share_accelerator(processes: int) -> None:
  """Lets ``processes`` JAX processes of this machine share its GPU: unless the user set
  ``XLA_PYTHON_CLIENT_PREALLOCATE`` or ``XLA_PYTHON_CLIENT_MEM_FRACTION``, each (this one and
  the children it starts, which inherit the environment) allocates GPU memory as it needs it
  rather than reserving 75% of it at its first use (JAX's default, which leaves the other
  processes at most a quarter between them). Call it before JAX first touches a device; one
  process changes nothing, nor does the setting on a CPU.
  """
  if processes > 1 and not {"XLA_PYTHON_CLIENT_PREALLOCATE",
                            "XLA_PYTHON_CLIENT_MEM_FRACTION"} & set(os.environ):
    os.environ["XLA_PYTHON_CLIENT_PREALLOCATE"] = "false"


def enable_compilation_cache() -> None:
  """Keeps compiled XLA programs on disk, so a re-run (or resume) skips most compilation.

  The folder is $JAX_COMPILATION_CACHE_DIR if set, else ~/.cache/pkd_jax/xla.
  """
  import jax  # pylint: disable=import-outside-toplevel  (predict's --help stays fast)

  if not jax.config.jax_compilation_cache_dir:
    jax.config.update("jax_compilation_cache_dir",
                      os.path.join(os.path.expanduser("~"), ".cache", "pkd_jax", "xla"))
  jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.5)


def set_library_logging(verbosity: int | None = None) -> None:
  """Quiet library logging by default: absl (and through it orbax and jax) at warnings and errors.

  verbosity: absl's scale (-1 warnings, 0 INFO, 1 and up DEBUG); None keeps the default, -1. A
  demo's console held 157 KB before, most of it orbax INFO lines between the progress bars.
  """
  from absl import logging  # pylint: disable=import-outside-toplevel

  logging.set_verbosity(logging.WARNING if verbosity is None else verbosity)


def environment() -> dict:
  """What a run's numbers depend on besides its config and code: the package versions
  (:data:`NUMERIC_PACKAGES`), the Python, the JAX backend and its devices, the CPU (its model and
  widest vector extension, from /proc/cpuinfo where there is one) and $XLA_FLAGS.

  The same code and seeds give the same numbers bit for bit only with all of these the same: XLA
  compiles for the CPU it runs on, so another CPU (or another XLA option, another thread count, a
  GPU) rounds some sums differently, and training grows those last bits into differences of the
  size of the spread between seeds (README, Results: a mini teacher on two machines).
  """
  import jax  # pylint: disable=import-outside-toplevel  (predict's --help stays fast)

  versions = {}
  for name in NUMERIC_PACKAGES:
    try:
      versions[name] = importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
      versions[name] = None
  devices = jax.devices()
  return dict(python=platform.python_version(), packages=versions,
              backend=jax.default_backend(), devices=f"{len(devices)} x {devices[0].device_kind}",
              cpu=cpu_description(), xla_flags=os.environ.get("XLA_FLAGS", ""))


def cpu_description(cpuinfo: str = "/proc/cpuinfo") -> str:
  """The CPU's model name and its widest float vector extension (AVX-512, AVX2, AVX or none
  seen), e.g. "Intel(R) Xeon(R) Processor, AVX-512"; the machine's architecture where the file
  is missing (not Linux) or names no model."""
  try:
    with open(cpuinfo, encoding="utf-8", errors="replace") as f:
      text = f.read()
  except OSError:
    return platform.machine()
  fields = {}
  for line in text.splitlines():
    key, _, value = line.partition(":")
    fields.setdefault(key.strip(), value.strip())
  model = fields.get("model name") or platform.machine()
  flags = set(fields.get("flags", "").split())
  vector = next((name for flag, name in (("avx512f", "AVX-512"), ("avx2", "AVX2"), ("avx", "AVX"))
                 if flag in flags), None)
  return f"{model}, {vector}" if vector else model
