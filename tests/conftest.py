"""Test-session settings: a shared persistent XLA compilation cache.

The same tiny models are compiled by many tests and by the CLI subprocesses they start; a cache
shared by the pytest workers and those subprocesses compiles each program once per machine.
"""

import os
import tempfile

import jax

CACHE = os.path.join(tempfile.gettempdir(), "pkd_jax_test_xla_cache")
os.environ["JAX_COMPILATION_CACHE_DIR"] = CACHE  # for subprocesses (python -m pkd_jax.main)
jax.config.update("jax_compilation_cache_dir", CACHE)
jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.5)
