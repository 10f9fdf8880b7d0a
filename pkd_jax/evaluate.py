"""Full-slice inference and the paper's metrics (RMSE, SSIM, PSNR) per case and map.

Inference covers a whole slice at once: the V-Net is fully convolutional in H and W (any size
divisible by 16), so a 256 x 256 slice needs no tiling. In time it takes the network's T frames
(the training patch's, 32): the T-window rule is frames [0, T) of the slice degraded to the
model's temporal factor, i.e. the start of the acquisition, where the bolus passes (the training
crops are random T-frame windows of the same 40-frame series).

Metrics (the paper's, section 2 of DESIGN.md): maps clipped to [0, range] of the data source
(``config.data.map_ranges``), then per slice RMSE in the map's units, SSIM with a Gaussian window
(sigma 1.5, 11 x 11, dm-pix) and PSNR = 10 log10(range^2 / MSE), averaged over the slices of a
case. Per-case values are kept, so that methods can be compared case by case.
"""

from __future__ import annotations

import functools
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from pkd_jax import losses
from pkd_jax.data import pipeline, temporal
from pkd_jax.data.case import TARGET_MAPS

METRICS = ("rmse", "ssim", "psnr")


def slice_input(scan: np.ndarray, factor: int, num_frames: int) -> np.ndarray:
  """(T_full, H, W) normalised slice -> the network's (num_frames, H, W, 1) input at factor."""
  return temporal.degrade_np(scan, factor)[:num_frames, ..., None]


@functools.partial(jax.jit, static_argnames=("model",))
def _apply(variables, x, *, model):
  maps, _ = model.apply(variables, x, train=False)
  return maps


def predict(model, variables, inputs: np.ndarray, batch_size: int = 4) -> dict[str, np.ndarray]:
  """Maps (N, H, W) for inputs (N, T, H, W, 1); the last batch is padded (one compiled shape)."""
  outputs = []
  for start in range(0, len(inputs), batch_size):
    chunk = inputs[start:start + batch_size]
    pad = batch_size - len(chunk)
    if pad:
      chunk = np.concatenate([chunk, np.zeros((pad, *chunk.shape[1:]), chunk.dtype)])
    maps = jax.device_get(_apply(variables, jnp.asarray(chunk), model=model))
    outputs.append({k: v[:len(chunk) - pad] for k, v in maps.items()})
  return {k: np.concatenate([o[k] for o in outputs]) for k in TARGET_MAPS}


def slice_metrics(pred: np.ndarray, target: np.ndarray, data_range: float) -> dict[str, np.ndarray]:
  """RMSE, SSIM, PSNR of each slice (N, H, W), both clipped to [0, data_range]."""
  pred = np.clip(pred, 0.0, data_range).astype(np.float32)
  target = np.clip(target, 0.0, data_range).astype(np.float32)
  mse = np.mean((pred - target) ** 2, axis=(1, 2))
  ssim = np.asarray(losses.ssim(jnp.asarray(pred), jnp.asarray(target), data_range=data_range))
  with np.errstate(divide="ignore"):
    psnr = 10 * np.log10(data_range ** 2 / mse)
  return {"rmse": np.sqrt(mse), "ssim": ssim, "psnr": psnr}


def evaluate_variables(config: ml_collections.ConfigDict, model, variables, factor: int,
                       split: str = "test", batch_size: int = 4) -> dict[str, Any]:
  """Scores a model on every slice of a split, at a temporal factor.

  Returns {"cases": [case ids], "per_case": {map: {metric: (num_cases,)}}, "example": the first
  slice's input-independent ground truth and prediction, for figures}.
  """
  source = pipeline.make_source(config.data, split, config.seed)
  records = [source[i] for i in range(len(source))]
  inputs = np.stack([slice_input(r["scan"], factor, config.data.patch.num_frames) for r in records])
  preds = predict(model, variables, inputs, batch_size)
  cases = np.array([r["case"] for r in records])
  per_case: dict[str, dict[str, np.ndarray]] = {}
  for key in TARGET_MAPS:
    target = np.stack([r[key] for r in records])
    values = slice_metrics(preds[key], target, float(config.data.map_ranges[key]))
    per_case[key] = {m: np.array([values[m][cases == c].mean() for c in np.unique(cases)])
                     for m in METRICS}
  example = max(range(len(records)), key=lambda i: records[i]["brain_mask"].sum())
  return {"cases": [int(c) for c in np.unique(cases)], "per_case": per_case,
          "example": {"truth": {k: records[example][k] for k in TARGET_MAPS},
                      "prediction": {k: preds[k][example] for k in TARGET_MAPS}}}
