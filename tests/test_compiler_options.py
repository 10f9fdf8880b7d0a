"""XLA compiler options per model (pkd_jax.models.compiler_options) and the jitted steps that
compile with them (pkd_jax.runtime.jit_with_options)."""

import functools
import importlib.metadata

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from pkd_jax import models, runtime, train
from pkd_jax.models import vnet

DOT = {"xla_cpu_experimental_ynn_fusion_type":
       "LIBRARY_FUSION_TYPE_DOT,LIBRARY_FUSION_TYPE_REDUCE"}


def test_wide_vnets_on_a_cpu_get_xla_convolutions_for_the_measured_jaxlib_only():
  options = functools.partial(vnet.compiler_options, jaxlib_version="0.10.2", environ={})
  assert options("cpu", 8) == DOT and options("cpu", 16) == DOT
  assert options("cpu", 4) == {}  # the demo's width: YNNPACK's convolutions were faster
  assert options("gpu", 16) == {} and options("tpu", 16) == {}
  for version in ("0.9.1", "0.11.0", "1.0.0", "dev"):  # an XLA that may not know the option
    assert vnet.compiler_options("cpu", 16, version, {}) == {}, version
  assert vnet.compiler_options("cpu", 16, "0.10.2", {"PKD_JAX_XLA_DEFAULTS": "0"}) == {}
  assert models.compiler_options(models.get_model("unitobrain", filters=16)) == {}


def test_jit_with_options_gives_one_jitted_object_per_options():
  def f(x):
    return x * 2
  plain = runtime.jit_with_options(f)
  assert runtime.jit_with_options(f, {}) is plain and runtime.jit_with_options(f, None) is plain
  assert runtime.jit_with_options(f, DOT) is runtime.jit_with_options(f, dict(DOT))
  assert runtime.jit_with_options(f, DOT) is not plain
  np.testing.assert_array_equal(runtime.jit_with_options(f, DOT)(jnp.arange(3)), [0, 2, 4])


def _installed_jaxlib_measured() -> bool:
  version = tuple(int(p) for p in importlib.metadata.version("jaxlib").split(".")[:2])
  first, last = vnet.XLA_CONVOLUTIONS_JAXLIB
  return jax.default_backend() == "cpu" and first <= version < last


@pytest.mark.skipif(not _installed_jaxlib_measured(), reason="options only for the measured jaxlib")
def test_the_options_move_convolutions_from_ynnpack_to_xla_and_keep_the_numbers():
  """Convolutions leave YNNPACK, reductions stay, and the numbers are the same."""
  conv = lambda x, k: jax.lax.conv_general_dilated(  # noqa: E731
      x, k, (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC"))
  rng = np.random.default_rng(0)
  x = rng.normal(size=(8, 64, 64, 48)).astype(np.float32)
  k = rng.normal(size=(3, 3, 48, 16)).astype(np.float32)
  default, ours = runtime.jit_with_options(conv), runtime.jit_with_options(conv, DOT)
  assert "__ynn_fusion" in default.lower(x, k).compile().as_text()  # this jaxlib's default
  assert "__ynn_fusion" not in ours.lower(x, k).compile().as_text()
  np.testing.assert_allclose(ours(x, k), default(x, k), rtol=1e-4, atol=1e-3)
  # Reductions (BatchNorm's statistics and their gradients) stay with YNNPACK.
  total = runtime.jit_with_options(lambda x: jnp.sum(x, axis=(0, 1, 2)), DOT)
  assert "__ynn_fusion" in total.lower(x).compile().as_text()
  np.testing.assert_allclose(total(x), x.sum(axis=(0, 1, 2), dtype=np.float64), rtol=1e-5)


def test_a_wide_vnets_train_step_compiles_with_its_options(monkeypatch):
  monkeypatch.setattr(models, "compiler_options",
                      lambda model: DOT if model.filters >= 8 else {})
  narrow = models.get_model("vnet", filters=4, num_frames=16)
  wide = models.get_model("vnet", filters=8, num_frames=16)
  assert train.train_step_fn(narrow) is train.train_step
  assert train.train_step_fn(wide) is runtime.jit_with_options(
      train._train_step, DOT, **train._TRAIN_STEP_JIT)  # pylint: disable=protected-access


def test_the_steps_of_a_model_without_options_are_the_module_level_jitted_ones():
  narrow = models.get_model("vnet", filters=4, num_frames=16)
  assert models.compiler_options(narrow) == {}
  assert train.train_step_fn(narrow) is train.train_step
  # pylint: disable-next=protected-access
  assert runtime.jit_with_options(train._eval_step, {}, **train._EVAL_STEP_JIT) is train.eval_step
