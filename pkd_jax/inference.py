"""Whole-slice inference with one T-window rule, shared by validation, evaluation and prediction.

The network sees T frames (the training patch's, 32) of a series of T_full frames on the time
grid (40). Training crops random windows of frames [t0, t0 + T) with t0 in 0 .. T_full - T of the
series degraded to the model's temporal factor (the degradation is applied to the whole series
first). At validation, test and prediction the same rule is used everywhere (the *window rule*):

    the maps are the mean of the network's maps over the windows starting at
    t0 = 0, s, 2 s, ... and T_full - T (s = ``data.window_stride``, default 4),

so every frame of the series is seen (frames 32-39 too) and the windows are ones the network was
trained on. At 40 frames and T = 32 these are the windows at 0, 4 and 8. At 1/16 the window at 0
holds the acquired frames 0 and 16, the others also hold frame 32. Averaging windows, as the
authors' release does, also reduces the variance of the prediction.

The V-Net is fully convolutional in H and W (any size divisible by 16), so a whole 256 x 256 slice
needs no tiling.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from pkd_jax import models, parallel, runtime
from pkd_jax.data import preprocess, temporal
from pkd_jax.data.case import TARGET_MAPS

DEFAULT_WINDOW_STRIDE = 4  # frames between window starts (config.data.window_stride)


def window_starts(total_frames: int, window_frames: int, stride: int = DEFAULT_WINDOW_STRIDE
                  ) -> tuple[int, ...]:
  """The first frames of the windows averaged by the window rule: 0, stride, ... and the last."""
  if window_frames > total_frames:
    raise ValueError(f"a window of {window_frames} frames does not fit in {total_frames} frames")
  if stride < 1:
    raise ValueError(f"window stride must be positive, got {stride}")
  last = total_frames - window_frames
  return tuple(sorted(set(range(0, last + 1, stride)) | {last}))


def slice_input(scan: np.ndarray, factor: int, input_norm: str) -> np.ndarray:
  """(T_full, H, W) normalised slice -> the network's input over the whole series, degraded to
  factor: (T_full, H, W, 1) (preprocess.network_input, as in training)."""
  return temporal.degrade_np(preprocess.network_input(scan, input_norm), factor)[..., None]


def windowed_maps(model, variables, series: jax.Array, window_frames: int,
                  stride: int = DEFAULT_WINDOW_STRIDE) -> dict[str, jax.Array]:
  """The window rule inside a traced function: series (B, T_full, H, W, 1) -> maps (B, H, W).

  The windows go through the network one after another (``lax.map``; evaluation mode), each as a
  batch of the B series' windows, and their maps are averaged: memory is that of one window a
  series, whatever the number of windows. Batched together, the three windows of a 40-frame
  256 x 256 series at F = 16 needed ~3 x 4 GB on a CPU, and the default 4 slices a call did not
  fit in 23 GB (2026-12-04). The batch axis stays first inside each call, so a batch split over
  devices (pkd_jax.parallel) stays split the same way.
  """
  starts = window_starts(series.shape[1], window_frames, stride)
  windows = jnp.stack([series[:, t0:t0 + window_frames] for t0 in starts])  # (W, B, T, H, W, 1)
  maps = jax.lax.map(lambda w: model.apply(variables, w, train=False)[0], windows)
  return {k: v.mean(axis=0) for k, v in maps.items()}


def _predict(variables, series, *, model, window_frames: int, stride: int):
  return windowed_maps(model, variables, series, window_frames, stride)


def predict_batch_fn(model):
  """The jitted ``(variables, series, *, model, window_frames, stride) -> maps`` of
  :func:`windowed_maps`, compiled with the model's XLA options (pkd_jax.models.compiler_options)."""
  return runtime.jit_with_options(_predict, models.compiler_options(model),
                                  static_argnames=("model", "window_frames", "stride"))


def predict(model, variables, inputs: np.ndarray, window_frames: int,
            stride: int = DEFAULT_WINDOW_STRIDE, batch_size: int = 4,
            mesh: jax.sharding.Mesh | None = None) -> dict[str, np.ndarray]:
  """Maps (N, H, W) of whole series (N, T_full, H, W, 1) by the window rule.

  Data parallel (pkd_jax.parallel) over mesh (default: all devices): the variables replicated,
  each batch split over the devices. batch_size is rounded up to a multiple of their number and
  the last batch padded to it (one shape is compiled); the padding's maps are dropped. With
  several processes every process passes all the inputs and gets all the maps.
  """
  mesh = parallel.make_mesh() if mesh is None else mesh
  devices = parallel.num_devices(mesh)
  batch_size = -(-batch_size // devices) * devices
  variables = parallel.replicate(mesh, variables)
  predict_batch = predict_batch_fn(model)
  outputs = []
  for start in range(0, len(inputs), batch_size):
    chunk, size = parallel.pad_batch({"x": inputs[start:start + batch_size]}, batch_size)
    series = parallel.shard_batch(mesh, chunk["x"], global_batch=True)
    maps = parallel.to_host(predict_batch(variables, series, model=model,
                                          window_frames=window_frames, stride=stride))
    outputs.append({k: v[:size] for k, v in maps.items()})
  return {k: np.concatenate([o[k] for o in outputs]) for k in TARGET_MAPS}
