"""Test-session settings: a shared persistent XLA compilation cache; XLA flags (compile fast, run
deterministically on a GPU); full float32 matmuls.

The same tiny models are compiled by many tests and by the CLI subprocesses they start; a cache
shared by the pytest workers and those subprocesses compiles each program once per machine.

Matmuls and convolutions run at "highest" precision, here and in the subprocesses: on a GPU, XLA's
default float32 convolutions use TF32 (10-bit mantissas, relative errors near 1e-3), which the
tests' equalities (the re-formulated convolutions against lax's, the VGG features against a NumPy
reference, the CLI's predictions against the API's) are not about; on a CPU it changes nothing.

Programs compile at XLA's backend optimisation level 0 (XLA_FLAGS gets
--xla_backend_optimization_level=0, here and in the subprocesses): the suite's programs are tiny
and run a few steps, so compiling dominates. On 2 CPU cores, 2026-12-04, cold caches (a fresh
TMPDIR): the whole suite (`python -m pytest -n 2`) 400 s against 452 s one after the other, and
the extended test of Table 2 at the test scale 105 s against 125 s (the same hour).

GPU programs run deterministically (XLA_FLAGS gets --xla_gpu_deterministic_ops=true, here and in
the subprocesses; both must be set before JAX starts its backend, so before jax is imported): the
suite's whole run on an H200 (2026-12-04, 324 passed) failed 3 tests that need bit-equal reruns
(a resumed run against an uninterrupted one, twice; UNET-GAN's generator step against the
supervised step), each off by 1e-7 to 7e-5 from run-to-run GPU nondeterminism (atomic
reductions, autotuned cuDNN algorithms), which that flag removes at some cost in speed. On a CPU
the flag changes nothing. Not yet run on a GPU with the flag.
"""

import os
import tempfile

DETERMINISTIC = "--xla_gpu_deterministic_ops=true"
FAST_COMPILE = "--xla_backend_optimization_level=0"
for _flag in (DETERMINISTIC, FAST_COMPILE):
  if _flag.split("=")[0] not in os.environ.get("XLA_FLAGS", ""):  # a user's own setting wins
    os.environ["XLA_FLAGS"] = f"{os.environ.get('XLA_FLAGS', '')} {_flag}".strip()

import jax  # pylint: disable=wrong-import-position  (after XLA_FLAGS)
import pytest

CACHE = os.path.join(tempfile.gettempdir(), "pkd_jax_test_xla_cache")
os.environ["JAX_COMPILATION_CACHE_DIR"] = CACHE  # for subprocesses (python -m pkd_jax.main)
jax.config.update("jax_compilation_cache_dir", CACHE)
jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.5)
os.environ["JAX_DEFAULT_MATMUL_PRECISION"] = "highest"
jax.config.update("jax_default_matmul_precision", "highest")


def pytest_collection_modifyitems(config, items):
  """Tests marked "extended" (minutes each: the whole Table 2 at the test scale, the multi-device
  distillation step, validation and prediction, two jax.distributed processes) run only with
  PKD_EXTENDED_TESTS=1: CI's whole suite must stay under 10 minutes on 2 cores."""
  del config
  if os.environ.get("PKD_EXTENDED_TESTS") == "1":
    return
  skip = pytest.mark.skip(reason="extended test: run with PKD_EXTENDED_TESTS=1")
  for item in items:
    if "extended" in item.keywords:
      item.add_marker(skip)
