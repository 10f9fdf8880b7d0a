"""Test-session settings: a shared persistent XLA compilation cache; full float32 matmuls.

The same tiny models are compiled by many tests and by the CLI subprocesses they start; a cache
shared by the pytest workers and those subprocesses compiles each program once per machine.

Matmuls and convolutions run at "highest" precision, here and in the subprocesses: on a GPU, XLA's
default float32 convolutions use TF32 (10-bit mantissas, relative errors near 1e-3), which the
tests' equalities (the re-formulated convolutions against lax's, the VGG features against a NumPy
reference, the CLI's predictions against the API's) are not about; on a CPU it changes nothing.
The suite's first run on a GPU (an H200, 2026-12-04) had 4 failures, unnamed (the run was cut
off); tests/parallel_step.py's forced host devices were another likely one.
"""

import os
import tempfile

import jax
import pytest

CACHE = os.path.join(tempfile.gettempdir(), "pkd_jax_test_xla_cache")
os.environ["JAX_COMPILATION_CACHE_DIR"] = CACHE  # for subprocesses (python -m pkd_jax.main)
jax.config.update("jax_compilation_cache_dir", CACHE)
jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.5)
os.environ["JAX_DEFAULT_MATMUL_PRECISION"] = "highest"
jax.config.update("jax_default_matmul_precision", "highest")


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
