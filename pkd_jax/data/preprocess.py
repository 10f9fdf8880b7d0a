"""Preprocessing shared by training and inference: resampling, intensity normalisation, brain mask.

Every scan, phantom or real, goes through the same steps before the network sees it:

1. In-plane resampling to height x width (default 256 x 256) by linear interpolation over pixel
   areas (scipy.ndimage.zoom, grid_mode=True); maps likewise, masks by nearest neighbour.
2. Temporal resampling onto one fixed time grid in seconds: frame k at k * frame_interval_s
   (default 40 frames of 1.5 s, 0-58.5 s) after the first acquired frame, by linear interpolation in
   the real frame times (which may be irregular). Tmax (s) and CBF (per minute) are only defined
   in seconds, so every scan must reach the network on the same grid: resampling each scan to 40
   frames over its own acquisition would make a frame mean a different number of seconds in every
   scan, and the maps unidentifiable. Rule for acquisitions that do not span the grid exactly:
   a longer acquisition is cut at the grid's end; a shorter one holds its last acquired frame
   (the tissue has mostly washed out by then) and is flagged in ``params["held_after_s"]``.
   A scan already on the grid is left untouched.
3. Intensity normalisation, fixed and identical at training and inference: HU clipped to
   [-100, 700] (air and bone saturate; the AIF peak, at most ~540 HU, does not) and divided by 100,
   so brain tissue sits near 0.3 and a 10 HU enhancement is 0.1. See :func:`normalise_hu`.
4. A brain mask: the source's own when it has one, else :func:`estimate_brain_mask`.
"""

from __future__ import annotations

import dataclasses

import numpy as np
from scipy import ndimage

from pkd_jax.data.case import Case
from pkd_jax.errors import InputError

HU_CLIP = (-100.0, 700.0)  # HU window of the normalisation
HU_SCALE = 100.0  # HU per normalised unit


def normalise_hu(scan_hu: np.ndarray) -> np.ndarray:
  """The network's input intensity: clip(HU, -100, 700) / 100, float32."""
  return (np.clip(scan_hu, *HU_CLIP) / HU_SCALE).astype(np.float32)


INPUT_NORMS = ("hu", "enhancement")
ENHANCEMENT_GAIN = 10.0  # "enhancement": 10 HU over baseline is 1.0 at the network's input
ENHANCEMENT_CLIP_HU = (-100.0, 400.0)  # enhancement window; AIF peaks above 400 HU saturate


def network_input(series: np.ndarray, mode: str, axis: int = -3) -> np.ndarray:
  """The network's input from a normalised series (:func:`normalise_hu`, frames on ``axis``).

  "hu": the series itself. "enhancement": frame 0 (before the bolus, acquired at every temporal
  factor, so the transform commutes with sample-and-hold) is kept as the anatomy and the
  enhancement over it is clipped to ENHANCEMENT_CLIP_HU and amplified ENHANCEMENT_GAIN times:
  the tissue signal (2-40 HU) then spans the input's range instead of 0.02-0.4 beside bone's 7.
  """
  if mode == "hu":
    return series
  if mode != "enhancement":
    raise InputError("config.data.input_norm", f"unknown {mode!r}; valid: {INPUT_NORMS}")
  baseline = np.take(series, [0], axis=axis)
  low, high = (v / HU_SCALE for v in ENHANCEMENT_CLIP_HU)
  gain = ENHANCEMENT_GAIN * 100.0 / HU_SCALE
  return (baseline + gain * np.clip(series - baseline, low, high)).astype(np.float32)


def resample_inplane(array: np.ndarray, height: int, width: int, order: int = 1) -> np.ndarray:
  """Resamples the last two axes to (height, width); order 1 for images and maps, 0 for masks."""
  h, w = array.shape[-2:]
  if (h, w) == (height, width):
    return array
  zoom = (1.0,) * (array.ndim - 2) + (height / h, width / w)
  out = ndimage.zoom(array.astype(np.float32) if order else array.astype(np.uint8), zoom,
                     order=order, mode="nearest", grid_mode=True)
  return out.astype(array.dtype)


def resample_time(scan: np.ndarray, frame_times_s: np.ndarray, num_frames: int,
                  frame_interval_s: float, axis: int = -3) -> tuple[np.ndarray, np.ndarray]:
  """Linear interpolation along the time axis onto the grid t_k = t_0 + k * frame_interval_s.

  k = 0 .. num_frames - 1 and t_0 is the first acquired frame. Grid times after the last
  acquired frame hold its value (see the module docstring). Returns (scan, grid times from 0).
  """
  times = np.asarray(frame_times_s, np.float64)
  if times.shape != (scan.shape[axis],):
    raise InputError("frame times", f"{times.shape[0]} frame times for {scan.shape[axis]} frames")
  if len(times) < 2 or np.any(np.diff(times) <= 0):
    raise InputError("frame times", "need at least two strictly increasing frame times")
  if not frame_interval_s > 0:
    raise InputError("frame_interval_s", f"must be a positive number of seconds, got "
                                         f"{frame_interval_s!r}")
  grid = np.arange(num_frames) * float(frame_interval_s)
  times = times - times[0]
  if len(times) == num_frames and np.allclose(times, grid, rtol=0, atol=1e-6):
    return scan, grid
  query = np.minimum(grid, times[-1])  # hold the last acquired frame past the acquisition
  right = np.clip(np.searchsorted(times, query, side="right"), 1, len(times) - 1)
  weight = np.clip((query - times[right - 1]) / (times[right] - times[right - 1]), 0.0, 1.0)
  shape = [1] * scan.ndim
  shape[axis] = num_frames
  weight = weight.astype(np.float32).reshape(shape)
  lower = np.take(scan, right - 1, axis=axis)
  upper = np.take(scan, right, axis=axis)
  return (lower * (1 - weight) + upper * weight).astype(scan.dtype), grid


def estimate_brain_mask(scan_hu: np.ndarray) -> np.ndarray:
  """A brain mask for scans that come without one, (S, T, H, W) HU -> (S, H, W) bool.

  Heuristic: on the temporal mean (noise averaged over frames), take soft tissue between 20 and
  100 HU (excludes CSF at ~10 HU, vessels, bone and air) inside the skull (the filled bone ring,
  bone > 300 HU, minus the bone itself), open by one pixel and keep the largest component.
  """
  mean = scan_hu.mean(axis=1)
  masks = np.zeros(mean.shape, bool)
  for s, image in enumerate(mean):
    bone = image > 300.0
    inside = ndimage.binary_fill_holes(bone) & ~ndimage.binary_dilation(bone, iterations=1)
    if not inside.any():  # no skull in view: fall back to the filled head outline
      inside = ndimage.binary_fill_holes(image > -200.0)
    tissue = inside & (image > 20.0) & (image < 100.0)
    tissue = ndimage.binary_opening(tissue, iterations=1)
    labels, count = ndimage.label(tissue)
    if count:
      sizes = ndimage.sum(tissue, labels, index=np.arange(1, count + 1))
      masks[s] = ndimage.binary_fill_holes(labels == 1 + int(np.argmax(sizes))) & tissue
  return masks


def peak_enhancement_hu(scan_hu: np.ndarray, baseline_frames: int = 2) -> float:
  """How strongly the bolus shows, (S, T, H, W) HU -> HU: the 99.9th percentile over voxels of
  each voxel's peak rise above its first frames (a 3-frame running mean first, against noise).

  A contrast-enhanced CTP's arteries rise by hundreds of HU (the phantom's: ~360 HU); a scan
  without contrast gives the noise's excursions (~50 HU for 15 HU of white noise) or 0.
  """
  scan = np.asarray(scan_hu, np.float32)
  smooth = ndimage.uniform_filter1d(scan, size=3, axis=1, mode="nearest")
  rise = smooth.max(axis=1) - scan[:, :baseline_frames].mean(axis=1)
  return float(np.percentile(rise, 99.9))


def head_mask(scan_hu: np.ndarray) -> np.ndarray:
  """Inside the head, (S, T, H, W) HU -> (S, H, W) bool: the filled outline of what is denser
  than -500 HU on the temporal mean (air is -1000 HU). A scan without air is all inside."""
  mean = np.asarray(scan_hu, np.float32).mean(axis=1)
  return np.stack([ndimage.binary_fill_holes(image > -500.0) for image in mean])


@dataclasses.dataclass(frozen=True)
class Geometry:
  """The grid every scan is brought to before the network: the paper's 256 x 256 x 40 frames,
  on a fixed time base of frame_interval_s seconds per frame."""

  height: int = 256
  width: int = 256
  num_frames: int = 40
  frame_interval_s: float = 1.5


def preprocess_case(case: Case, geometry: Geometry = Geometry()) -> Case:
  """Resamples a case to the geometry and ensures a brain mask; scan stays in HU.

  Normalisation (:func:`normalise_hu`) is applied when the network's input is made, so the
  returned case can still be compared and displayed in HU.
  """
  s, t, h, w = case.scan_hu.shape
  scan = resample_inplane(case.scan_hu, geometry.height, geometry.width)
  scan, times = resample_time(scan, case.frame_times_s, geometry.num_frames,
                              geometry.frame_interval_s, axis=1)
  acquired_s = float(case.frame_times_s[-1] - case.frame_times_s[0])
  maps = {k: resample_inplane(v, geometry.height, geometry.width) for k, v in case.maps.items()}
  masks = {k: resample_inplane(v, geometry.height, geometry.width, order=0)
           for k, v in case.masks.items()}
  if "brain" not in masks:
    masks["brain"] = estimate_brain_mask(scan)
  dz, dy, dx = case.spacing_mm
  return dataclasses.replace(
      case, scan_hu=scan, frame_times_s=times, maps=maps, masks=masks,
      spacing_mm=(dz, dy * h / geometry.height, dx * w / geometry.width),
      aif_hu=None if case.aif_hu is None else np.interp(times, case.frame_times_s -
                                                        case.frame_times_s[0], case.aif_hu),
      labels=None if case.labels is None else resample_inplane(case.labels, geometry.height,
                                                               geometry.width, order=0),
      params=dict(case.params, original_shape=(s, t, h, w),
                  held_after_s=acquired_s if acquired_s < times[-1] else None))
