"""Low temporal resolution by sample-and-hold (the paper's degradation), in numpy and jax.numpy.

Temporal factor n keeps frames 0, n, 2n, ... of a T-frame series and holds each kept frame for n
frames, so the result has T frames again: frame t of the output is frame n * floor(t / n) of the
input. The paper applies this to the whole 40-frame series before cropping a training patch; a
crop of frames [t0, t0 + L) of the degraded series is ``series[held_frame_indices(T, n)[t0:t0+L]]``.

A sampling offset k < n keeps frames k, k + n, k + 2n, ... instead (the authors' release trains the
1/n student on every offset, an n-fold augmentation; DESIGN.md, section 2); frames before k hold
frame k, the first one acquired, so every frame keeps its time on the grid.
"""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np

from pkd_jax.errors import InputError

TEMPORAL_FACTORS = (1, 2, 4, 8, 16)  # full resolution, 1/2, 1/4, 1/8, 1/16


def check_factor(factor: int, num_frames: int, where: str = "temporal factor") -> None:
  """Raises InputError unless factor is valid and num_frames keeps at least two frames at it."""
  if factor not in TEMPORAL_FACTORS:
    raise InputError(where, f"temporal factor {factor} is not one of {TEMPORAL_FACTORS}")
  if num_frames < factor + 1:
    raise InputError(where, f"{num_frames} frames are too few for temporal factor {factor}: "
                            f"keeping frames 0, {factor}, ... needs at least {factor + 1} frames "
                            "for two kept frames")


def held_frame_indices(num_frames: int, factor: int, offset: int = 0) -> np.ndarray:
  """(T,) int: the input frame that output frame t holds, factor * floor(t / factor); with a
  sampling offset k, k + factor * floor((t - k) / factor), and k for t < k."""
  check_factor(factor, num_frames)
  if not 0 <= offset < factor or offset + factor >= num_frames:
    raise InputError("sampling offset", f"offset {offset} at temporal factor {factor} of "
                                        f"{num_frames} frames: valid offsets are 0 .. "
                                        f"{min(factor, num_frames - factor) - 1}, which keep at "
                                        "least two frames")
  t = np.arange(num_frames)
  return np.maximum(offset + (t - offset) // factor * factor, offset)


def degrade_np(series: np.ndarray, factor: int, axis: int = -3) -> np.ndarray:
  """Sample-and-hold along the time axis of a numpy array (default: T of (..., T, H, W))."""
  return np.take(series, held_frame_indices(series.shape[axis], factor), axis=axis)


def degrade(series, factor: int, axis: int = -3):
  """The jax.numpy version of degrade_np: jit-able (factor static) and batched over any axes."""
  return jnp.take(series, held_frame_indices(series.shape[axis], factor), axis=axis)
