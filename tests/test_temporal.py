"""Sample-and-hold degradation keeps frames 0, n, 2n, ... and holds each for n frames."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from pkd_jax.data import temporal
from pkd_jax.errors import InputError


@pytest.mark.parametrize("factor", temporal.TEMPORAL_FACTORS)
@pytest.mark.parametrize("num_frames", [40, 37])
def test_keeps_every_nth_frame_and_holds_it(factor, num_frames):
  series = np.random.default_rng(factor).normal(size=(num_frames, 3, 4)).astype(np.float32)
  out = temporal.degrade_np(series, factor)
  assert out.shape == series.shape
  for t in range(num_frames):
    kept = (t // factor) * factor
    np.testing.assert_array_equal(out[t], series[kept])
  # Exactly the frames 0, n, 2n, ... appear, each held for n frames (fewer at the end).
  distinct = [t for t in range(num_frames) if t == 0 or not np.array_equal(out[t], out[t - 1])]
  assert distinct == list(range(0, num_frames, factor))


@pytest.mark.parametrize("factor", [2, 16])
def test_jax_version_matches_numpy_jitted_and_batched(factor):
  batch = np.random.default_rng(0).normal(size=(2, 3, 40, 5, 6, 1)).astype(np.float32)
  degrade = jax.jit(temporal.degrade, static_argnames=("factor", "axis"))
  out = degrade(jnp.asarray(batch), factor=factor, axis=2)
  np.testing.assert_array_equal(np.asarray(out), temporal.degrade_np(batch, factor, axis=2))


@pytest.mark.parametrize("factor,frames", [(3, 40), (16, 16), (8, 5), (0, 40)])
def test_bad_factor_or_too_few_frames_is_a_clear_error(factor, frames):
  with pytest.raises(InputError, match="temporal factor|too few"):
    temporal.degrade_np(np.zeros((frames, 2, 2)), factor)
