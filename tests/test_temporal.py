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


@pytest.mark.parametrize("factor,offset", [(16, 5), (16, 15), (8, 3), (2, 1)])
def test_an_offset_keeps_frames_k_k_plus_n_and_holds_frame_k_before_it(factor, offset):
  held = temporal.held_frame_indices(40, factor, offset)
  assert held.shape == (40,)
  assert set(held) == set(range(offset, 40, factor))
  for t in range(40):  # frame t holds the last kept frame at or before it (frame k before k)
    assert held[t] == (offset if t < offset else max(k for k in held if k <= t))
  np.testing.assert_array_equal(temporal.held_frame_indices(40, factor, 0),
                                temporal.held_frame_indices(40, factor))


@pytest.mark.parametrize("factor,offset,frames", [(16, 16, 40), (8, -1, 40), (16, 10, 26)])
def test_an_offset_out_of_range_or_keeping_one_frame_is_a_clear_error(factor, offset, frames):
  with pytest.raises(InputError, match="sampling offset.*valid offsets"):
    temporal.held_frame_indices(frames, factor, offset)
