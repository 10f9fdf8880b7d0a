"""Test-session settings: a shared persistent XLA compilation cache.

The same tiny models are compiled by many tests and by the CLI subprocesses they start; a cache
shared by the pytest workers and those subprocesses compiles each program once per machine.
"""

import os
import tempfile

import jax
import pytest

CACHE = os.path.join(tempfile.gettempdir(), "pkd_jax_test_xla_cache")
os.environ["JAX_COMPILATION_CACHE_DIR"] = CACHE  # for subprocesses (python -m pkd_jax.main)
jax.config.update("jax_compilation_cache_dir", CACHE)
jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.5)


def pytest_collection_modifyitems(config, items):
  """Tests marked "extended" (minutes each: the whole Table 2 at the test scale, the multi-device
  distillation step, validation and prediction, two jax.distributed processes) run only with PKD_EXTENDED_TESTS=1: CI's whole
  suite must stay under 10 minutes on 2 cores."""
  del config
  if os.environ.get("PKD_EXTENDED_TESTS") == "1":
    return
  skip = pytest.mark.skip(reason="extended test: run with PKD_EXTENDED_TESTS=1")
  for item in items:
    if "extended" in item.keywords:
      item.add_marker(skip)
