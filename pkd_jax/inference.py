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

import collections
import sys

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
  the last batch padded to it (one shape is compiled); the padding's maps are dropped. A batch
  whose compiled program needs more memory than the devices have free is halved first
  (:func:`fitting_program`). With several processes every process passes all the inputs and
  gets all the maps.
  """
  if not len(inputs):
    raise ValueError("no series to predict")
  mesh = parallel.make_mesh() if mesh is None else mesh
  devices = parallel.num_devices(mesh)
  batch_size = -(-batch_size // devices) * devices
  variables = parallel.replicate(mesh, variables)

  def batches(size):
    for start in range(0, len(inputs), size):
      chunk, real = parallel.pad_batch({"x": inputs[start:start + size]}, size)
      yield parallel.shard_batch(mesh, chunk["x"], global_batch=True), real

  key = (model, window_frames, stride, batch_size, inputs.shape[1:], str(inputs.dtype),
         tuple(d.id for d in mesh.devices.flat))
  if key not in _FITTED:
    predict_batch = predict_batch_fn(model)
    compile_for = lambda size: predict_batch.lower(
        variables, next(batches(size))[0], model=model, window_frames=window_frames,
        stride=stride).compile()
    _FITTED[key] = fitting_program(compile_for, batch_size, devices, mesh)
    while len(_FITTED) > 8:
      _FITTED.popitem(last=False)
  _FITTED.move_to_end(key)
  compiled, batch_size = _FITTED[key]
  outputs = []
  for series, size in batches(batch_size):
    maps = parallel.to_host(compiled(variables, series))
    outputs.append({k: v[:size] for k, v in maps.items()})
  return {k: np.concatenate([o[k] for o in outputs]) for k in TARGET_MAPS}


# predict's compiled programs and batch sizes, by model, window rule, batch size asked for, input
# shape and devices: later calls (every case of a prediction, every unit an experiment scores)
# neither trace nor compile again. The most recently used 8 are kept.
_FITTED: collections.OrderedDict[tuple, tuple] = collections.OrderedDict()


def fitting_program(compile_for, batch_size: int, step: int, mesh: jax.sharding.Mesh):
  """``(compile_for(b), b)`` for the largest batch b, from ``batch_size`` halving down to ``step``
  (the number of devices; b stays a multiple of it), whose program fits in the memory its devices
  have free: XLA's memory analysis of the compiled program (its temporary buffers, arguments and
  outputs per device; summed over the devices of one memory, e.g. the CPU's) against
  :func:`pkd_jax.runtime.free_memory_bytes`. A smaller batch is said on stderr; if none fits the
  smallest runs all the same, with a warning; if the free memory is unknown the batch asked for
  runs. On a CPU a whole 256 x 256 slice of 40 frames at F = 16 needs ~3.8 GB (batch 4: 15.2 GB of
  buffers, 17.2 GB peak of the process), and batches of 2 were killed on a 24 GB machine before
  the windows went one after another."""
  first = batch_size
  while True:
    compiled = compile_for(batch_size)
    need, free = memory_need(compiled, mesh), _free_memory(mesh)
    smaller = max(step, (batch_size // 2) // step * step)
    if free is None or need <= free or smaller >= batch_size:
      if free is not None and need > free:
        print(f"pkd_jax: a batch of {batch_size} slice(s) needs {need / 2**30:.1f} GiB and "
              f"{free / 2**30:.1f} GiB are free: it may run out of memory", file=sys.stderr)
      elif batch_size != first:
        print(f"pkd_jax: batches of {batch_size} slice(s) instead of {first}, to fit in the "
              f"{free / 2**30:.1f} GiB free ({need / 2**30:.1f} GiB needed)", file=sys.stderr)
      return compiled, batch_size
    batch_size = smaller


def memory_need(compiled, mesh: jax.sharding.Mesh) -> int:
  """Bytes the program takes per memory: per device, times the devices that share one memory
  (all local CPU devices share the host's)."""
  m = compiled.memory_analysis()
  per_device = m.temp_size_in_bytes + m.argument_size_in_bytes + m.output_size_in_bytes
  local = mesh.local_devices
  return per_device * (len(local) if local and local[0].platform == "cpu" else 1)


def _free_memory(mesh: jax.sharding.Mesh) -> int | None:
  """The least free memory of this process's devices of the mesh (None if unknown)."""
  free = [runtime.free_memory_bytes(d) for d in mesh.local_devices]
  return None if not free or any(f is None for f in free) else min(free)
