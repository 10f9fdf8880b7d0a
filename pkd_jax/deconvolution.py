"""Classical SVD deconvolution: the conventional CT perfusion pipeline the paper replaces.

A reference method. It maps a CTP series plus an arterial input function (AIF) to Tmax, CBV, CBF
and MTT, so that the network's maps can be set beside the method clinics use, on the phantom
(exact ground truth) and at every temporal factor.

Model (indicator dilution, DESIGN.md section 3 and :mod:`pkd_jax.data.phantom`). A tissue voxel's
enhancement over baseline is

    C_t(t) = (rho / k_H) * F * (C_a (*) R)(t - d),   rho = 1.04 g/ml, k_H = 0.73, F [ml/g/s].

Sampled every dt seconds, C_t = dt * A k' with A the convolution matrix of the AIF and
k' = (rho / k_H) F R the scaled residue. We solve for k' and fold the constants back in, so every
output is in physical units:

* ``residue``: k(t) = (k_H / rho) k'(t) = F R(t) in ml/g/s, over the 2T samples of the circulant
  grid (entries T..2T-1 stand for the negative times -T..-1 frames: tissue that leads the AIF);
* CBF = 6000 * max_t k(t) (ml/100 g/min);
* CBV = 100 * (k_H / rho) * area(C_t) / area(C_a) (ml/100 g), the areas being sums over the T
  observed frames (this does not depend on the deconvolution, only on the AIF);
* MTT = 60 * CBV / CBF (s; 0 where CBF is 0) -- central volume theorem;
* Tmax = the time of the maximum of k (s), index j mapped to j * dt for j < T and (j - 2T) * dt
  for j >= T (wrapped: block-circulant deconvolution is insensitive to the bolus delay, and a
  maximum in the second half of the grid means the tissue curve leads the AIF).

Methods (Wu, Ostergaard, Benner, Rosen, Sorensen, "Tracer arrival timing-insensitive technique
for estimating flow in MR perfusion-weighted imaging using singular value decomposition with a
block-circulant deconvolution matrix", MRM 50:164-174, 2003):

* :func:`bsvd`: both curves are zero-padded to L = 2T samples and the convolution matrix is the
  L x L circulant D_ij = dt * a[(i - j) mod L] (rectangle rule, as in Wu et al. and Ostergaard et
  al. MRM 1996). Its pseudo-inverse keeps the singular values >= ``threshold`` * the largest
  (default 0.1: Wu et al.'s block-circulant threshold P_SVD = 10% for the noise-free case;
  clinical software uses 10-20%).
* :func:`osvd`: per voxel, the smallest threshold of 5%, 10%, ..., 95% of the largest singular
  value whose residue has an oscillation index

      OI = 1 / (L * max k) * sum_{j=2}^{L-1} |k_j - 2 k_{j-1} + k_{j-2}|

  below ``oi_threshold`` (Wu et al. 2003, eq. 8; the 95% solution when none qualifies). Wu et al.
  set their MR threshold (0.095) from normal volunteers; our default 0.035 is the default of the
  open dsc-mri-toolbox's oSVD (Castellaro, Peruzzo et al., University of Padova), with the same
  5% ... 95% search. We found no CT-specific value in the literature; it is a parameter.

Both are written in jax.numpy, vectorised over voxels and jit-compiled: one SVD per AIF (L x L,
L = 80 for 40 frames), then a matrix product for all voxels (oSVD: one per candidate threshold).
Truncating a circulant matrix's SVD equals zeroing the Fourier components of the AIF below the
threshold, so this is also the textbook frequency-domain formulation; the explicit SVD keeps the
code next to the literature.

:func:`perfusion_maps` runs the deconvolution on a scan (S, T, H, W): baseline removal, voxels
in a brain mask, deconvolution in fixed-size chunks, maps (S, H, W);
:func:`perfusion_maps_variants` gives several bSVD / oSVD settings at the cost of one oSVD (for
parameter searches). :func:`select_aif` picks an AIF from the scan automatically.
:func:`degradation_report` measures how the maps of this pipeline degrade with the temporal factor
and with noise on phantom cases (exact ground truth).

The clinical pipeline (:func:`classical_maps`) smooths before it deconvolves: deconvolving raw
noisy voxels is ill-posed enough that noise peaks decide the residue's maximum (mini scale, 16
test phantom cases, full resolution, true AIF: unsmoothed bSVD at 10% has a Tmax RMSE of 7.0 s;
oSVD after the smoothing tuned on the validation split, 1.9 s).
:func:`smooth_series` applies a temporal Gaussian and an in-plane Gaussian normalised inside the
brain mask; the AIF gets the same temporal Gaussian.
:func:`pkd_jax.baselines.evaluate_classical_best` tunes the sigmas and the SVD setting on the
validation split. :func:`ttp_tmax` is the deconvolution-free time-to-peak estimate used as a
sanity floor.

Known bias of the discretisation (measured, left as is: it is what standard SVD software does):
the rectangle-rule matrix makes k_j the residue averaged over a frame around t_j, so a residue
that jumps at the delay d (exponential, box) peaks at the first frame wholly after d: Tmax reads
about one frame late (noise-free, delay 0 / 1.5 / 3 s, MTT 3-6 s, 1.5 s frames: 1.5 / 3.0 /
4.5 s at thresholds 2-10%).

Low temporal resolution: the pipeline receives the degraded series exactly as the network does
(sample-and-hold, :func:`pkd_jax.data.temporal.degrade_np`: T frames, frame t holding frame
n * floor(t / n)), at the original frame interval. The AIF is degraded the same way -- the same
held-frame indices applied to the (T,) AIF -- which is what one gets by selecting the AIF from
the degraded scan, or by degrading a known AIF (:func:`degradation_report` does the latter with
the phantom's true AIF, or the former with ``aif='select'``).
"""

from __future__ import annotations

from typing import Any, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from scipy import ndimage

from pkd_jax.data import temporal
from pkd_jax.data.case import K_H, RHO_G_PER_ML, Case
from pkd_jax.errors import InputError

METHODS = ("bsvd", "osvd")
DEFAULT_THRESHOLD = 0.1  # bSVD: fraction of the largest singular value kept (Wu et al. 2003)
DEFAULT_OI_THRESHOLD = 0.035  # oSVD: oscillation index limit (dsc-mri-toolbox default)
OSVD_THRESHOLDS = tuple(round(0.05 * k, 2) for k in range(1, 20))  # 5%, 10%, ..., 95%
AIF_RISE_FRACTION = 0.1  # the AIF's arrival: first frame above 10% of its peak


# ----------------------------------------------------------------------------------------------
# Input checks (concrete values only: under jit the value checks are skipped).


def _is_concrete(x) -> bool:
  return not isinstance(x, jax.core.Tracer)


def _check_curves(tissue_hu, aif_hu) -> None:
  if np.ndim(tissue_hu) != 2:
    raise InputError("tissue_hu", f"must be (voxels, frames), got shape {np.shape(tissue_hu)}")
  if np.ndim(aif_hu) != 1 or np.shape(aif_hu)[0] != np.shape(tissue_hu)[1]:
    raise InputError("aif_hu", f"must be ({np.shape(tissue_hu)[1]},), one value per frame of the "
                               f"tissue curves; got shape {np.shape(aif_hu)}")
  if np.shape(aif_hu)[0] < 2:
    raise InputError("aif_hu", "need at least 2 frames")
  if _is_concrete(aif_hu) and not np.max(np.asarray(aif_hu)) > 0:
    raise InputError("aif_hu", "has no positive enhancement (give the AIF as HU above baseline)")


def _check_interval(frame_interval_s) -> None:
  if _is_concrete(frame_interval_s):
    if np.ndim(frame_interval_s) != 0 or not float(frame_interval_s) > 0:
      raise InputError("frame_interval_s", f"must be a positive number of seconds, got "
                                           f"{frame_interval_s!r}")


def _check_fraction(name: str, value) -> None:
  if _is_concrete(value) and not 0.0 < float(value) < 1.0:
    raise InputError(name, f"must lie in (0, 1), got {value!r}")


# ----------------------------------------------------------------------------------------------
# Block-circulant SVD.


def circulant_matrix(aif_hu, frame_interval_s):
  """(2T, 2T) block-circulant convolution matrix dt * a[(i - j) mod 2T] of the zero-padded AIF."""
  num_frames = aif_hu.shape[0]
  length = 2 * num_frames
  aif = jnp.asarray(aif_hu, jnp.float32)
  padded = jnp.concatenate([aif, jnp.zeros((num_frames,), jnp.float32)])
  index = (np.arange(length)[:, None] - np.arange(length)[None, :]) % length
  return frame_interval_s * padded[index]


def _truncated_pinvs(aif_hu, frame_interval_s, thresholds):
  """(K, L, L) pseudo-inverses of the circulant matrix, one per threshold fraction (K,)."""
  u, s, vh = jnp.linalg.svd(circulant_matrix(aif_hu, frame_interval_s))
  keep = s[None, :] >= thresholds[:, None] * s[0]  # s is sorted, s[0] the largest
  inv_s = jnp.where(keep, 1.0 / jnp.where(keep, s[None, :], 1.0), 0.0)  # (K, L)
  return jnp.einsum("ij,ki,li->kjl", vh, inv_s, u)  # V diag(1/s) U^T


def _pad_curves(tissue_hu):
  tissue = jnp.asarray(tissue_hu, jnp.float32)
  return jnp.concatenate([tissue, jnp.zeros_like(tissue)], axis=1)  # (V, 2T)


def oscillation_index(residue):
  """Wu et al.'s oscillation index of residues (..., L): mean |second difference| / max.

  The second differences are one matmul with the (L, L - 2) stencil matrix: XLA's CPU backend
  made the three shifted slices of the last axis 3x slower (0.15 s against 0.05 s for the 19
  candidate thresholds of 5,120 voxels of 80 samples, measured on 2 cores, 2026-12-03)."""
  length = residue.shape[-1]
  cols = max(length - 2, 0)
  stencil = (np.eye(length, cols) - 2 * np.eye(length, cols, -1) + np.eye(length, cols, -2)
             ).astype(np.float32)  # column i: 1, -2, 1 at rows i, i + 1, i + 2
  second = residue @ stencil
  peak = jnp.max(residue, axis=-1)
  total = jnp.sum(jnp.abs(second), axis=-1)
  return jnp.where(peak > 0, total / (length * jnp.where(peak > 0, peak, 1.0)), jnp.inf)


def _maps_from_residue(residue, tissue_hu, aif_hu, frame_interval_s) -> dict[str, Any]:
  """CBF, CBV, MTT, Tmax (V,) from the flow-scaled residue k = F R (V, 2T) and the curves."""
  num_frames = aif_hu.shape[0]
  cbf = 6000.0 * jnp.max(residue, axis=-1)
  cbv = 100.0 * (K_H / RHO_G_PER_ML) * jnp.sum(tissue_hu, axis=-1) / jnp.sum(aif_hu)
  mtt = jnp.where(cbf > 0, 60.0 * cbv / jnp.where(cbf > 0, cbf, 1.0), 0.0)
  j = jnp.argmax(residue, axis=-1)
  tmax = jnp.where(j < num_frames, j, j - 2 * num_frames) * frame_interval_s
  return dict(residue=residue, cbf=cbf, cbv=cbv, mtt=mtt, tmax=tmax)


@jax.jit
def _bsvd_core(tissue_hu, aif_hu, frame_interval_s, threshold):
  tissue = jnp.asarray(tissue_hu, jnp.float32)
  aif = jnp.asarray(aif_hu, jnp.float32)
  dt = jnp.asarray(frame_interval_s, jnp.float32)
  pinv = _truncated_pinvs(aif, dt, jnp.reshape(jnp.asarray(threshold, jnp.float32), (1,)))[0]
  scaled = _pad_curves(tissue) @ pinv.T  # k' = (rho / k_H) F R
  return _maps_from_residue((K_H / RHO_G_PER_ML) * scaled, tissue, aif, dt)


@jax.jit
def _osvd_core(tissue_hu, aif_hu, frame_interval_s, oi_threshold):
  tissue = jnp.asarray(tissue_hu, jnp.float32)
  aif = jnp.asarray(aif_hu, jnp.float32)
  dt = jnp.asarray(frame_interval_s, jnp.float32)
  candidates = jnp.asarray(OSVD_THRESHOLDS, jnp.float32)
  pinvs = _truncated_pinvs(aif, dt, candidates)  # (K, L, L)
  residues = (K_H / RHO_G_PER_ML) * jnp.einsum("vl,kml->kvm", _pad_curves(tissue), pinvs)
  oi = oscillation_index(residues)  # (K, V); scale-free, so k or k' give the same OI
  ok = oi < oi_threshold
  chosen = jnp.where(jnp.any(ok, axis=0), jnp.argmax(ok, axis=0), len(OSVD_THRESHOLDS) - 1)
  residue = jnp.take_along_axis(residues, chosen[None, :, None], axis=0)[0]
  out = _maps_from_residue(residue, tissue, aif, dt)
  out["threshold"] = candidates[chosen]
  out["oscillation_index"] = jnp.take_along_axis(oi, chosen[None, :], axis=0)[0]
  return out


def bsvd(tissue_hu, aif_hu, frame_interval_s,
         threshold: float = DEFAULT_THRESHOLD) -> dict[str, Any]:
  """Block-circulant truncated-SVD deconvolution of many voxels at once (jit-compiled).

  Args:
    tissue_hu: (V, T) tissue enhancement curves, HU above baseline.
    aif_hu: (T,) arterial input function, HU above baseline.
    frame_interval_s: the frame interval dt in seconds (uniform sampling).
    threshold: singular values below threshold * the largest are discarded (0 < threshold < 1).

  Returns:
    dict of jax arrays: residue (V, 2T) k = F R in ml/g/s; cbf (ml/100 g/min), cbv (ml/100 g),
    mtt (s), tmax (s, signed; see the module docstring) each (V,).
  """
  _check_curves(tissue_hu, aif_hu)
  _check_interval(frame_interval_s)
  _check_fraction("threshold", threshold)
  return _bsvd_core(tissue_hu, aif_hu, frame_interval_s, threshold)


def osvd(tissue_hu, aif_hu, frame_interval_s,
         oi_threshold: float = DEFAULT_OI_THRESHOLD) -> dict[str, Any]:
  """Oscillation-index SVD (Wu et al. 2003): a per-voxel threshold from 5% ... 95%.

  Arguments as :func:`bsvd`, with oi_threshold the oscillation index a voxel's residue must stay
  below (default 0.035, see the module docstring). Returns bsvd's dict plus, per voxel,
  ``threshold`` (the fraction chosen) and ``oscillation_index`` (of the chosen residue).
  Memory: 19 candidate residues per voxel, (19, V, 2T) float32; :func:`perfusion_maps` chunks.
  """
  _check_curves(tissue_hu, aif_hu)
  _check_interval(frame_interval_s)
  if _is_concrete(oi_threshold) and not float(oi_threshold) > 0:
    raise InputError("oi_threshold", f"must be positive, got {oi_threshold!r}")
  return _osvd_core(tissue_hu, aif_hu, frame_interval_s, oi_threshold)


# ----------------------------------------------------------------------------------------------
# Maps from a scan.


def baseline_frames(aif_hu: np.ndarray) -> int:
  """Number of baseline frames: those before the frame preceding the AIF's first rise.

  The rise is the first frame above AIF_RISE_FRACTION (10%) of the AIF's peak; one more frame is
  left out as a margin (the bolus is already arriving, below 10%, in the frame before). At least 1
  (frame 0). For a sample-and-hold series the rise falls on a kept frame, and the baseline frames
  hold earlier kept frames only.
  """
  aif = np.asarray(aif_hu, np.float64)
  rise = int(np.argmax(aif > AIF_RISE_FRACTION * aif.max()))
  return max(1, rise - 1)


def frame_interval_from_times(frame_times_s, num_frames: int) -> float:
  """The uniform frame interval of frame_times_s (T,), or InputError (block-circulant needs one)."""
  times = np.asarray(frame_times_s, np.float64)
  if times.shape != (num_frames,):
    raise InputError("frame_times_s", f"must be ({num_frames},), one time per frame; got "
                                      f"shape {times.shape}")
  steps = np.diff(times)
  if not np.all(np.isfinite(steps)) or not np.all(steps > 0):
    raise InputError("frame_times_s",
                     "frame intervals must be positive (times strictly increasing)")
  interval = float((times[-1] - times[0]) / (num_frames - 1))
  if np.max(np.abs(steps - interval)) > 0.05 * interval:
    raise InputError("frame_times_s", f"frames are not uniformly spaced (intervals "
                                      f"{steps.min():.3f}-{steps.max():.3f} s); resample the "
                                      "series to a uniform grid first")
  return interval


def _scan_curves(scan_hu, aif_hu, frame_times_s, brain_mask):
  """Checked inputs of a scan: (baseline-subtracted curves (V, T) of the mask's voxels, AIF (T,),
  frame interval (s), mask (S, H, W)). The baseline is each voxel's mean over the first
  :func:`baseline_frames` (aif_hu) frames."""
  scan = np.asarray(scan_hu, np.float32)
  if scan.ndim != 4:
    raise InputError("scan_hu", f"must be (S, T, H, W), got shape {scan.shape}")
  num_slices, num_frames, height, width = scan.shape
  aif = np.asarray(aif_hu, np.float32)
  if aif.shape != (num_frames,):
    raise InputError("aif_hu", f"must be ({num_frames},), one value per frame of scan_hu; got "
                               f"shape {aif.shape}")
  if not aif.max() > 0:
    raise InputError("aif_hu", "has no positive enhancement (give the AIF as HU above baseline)")
  interval = frame_interval_from_times(frame_times_s, num_frames)
  mask = np.asarray(brain_mask, bool)
  if mask.shape != (num_slices, height, width):
    raise InputError("brain_mask", f"must be {(num_slices, height, width)} like scan_hu's "
                                   f"(S, H, W); got shape {mask.shape}")
  curves = np.moveaxis(scan, 1, -1)[mask]  # (V, T)
  curves = curves - curves[:, :baseline_frames(aif)].mean(axis=1, keepdims=True)
  return curves, aif, interval, mask


def _chunked(core, curves: np.ndarray, chunk_voxels: int,
             keys: Sequence[str]) -> dict[str, np.ndarray]:
  """core(chunk (C, T)) -> dict of arrays (..., C), run over fixed-size chunks of curves (the
  last one zero-padded: one compiled shape); the outputs concatenated along their last axis."""
  if int(chunk_voxels) < 1:
    raise InputError("chunk_voxels", f"must be positive, got {chunk_voxels!r}")
  num_voxels, num_frames = curves.shape
  chunk = int(min(chunk_voxels, max(256, -(-num_voxels // 256) * 256)))
  parts = {k: [] for k in keys}
  for start in range(0, max(num_voxels, 1), chunk):  # an empty mask still gives (..., 0) arrays
    part = curves[start:start + chunk]
    n = len(part)
    if n < chunk:
      part = np.concatenate([part, np.zeros((chunk - n, num_frames), np.float32)])
    out = core(part)
    out = jax.device_get({k: out[k] for k in keys})
    for k in keys:
      parts[k].append(np.asarray(out[k])[..., :n])
  return {k: np.concatenate(v, axis=-1) for k, v in parts.items()}


def _finish_maps(values: dict[str, np.ndarray], mask: np.ndarray) -> dict[str, np.ndarray]:
  """Clipped voxel values (V,) -> maps (S, H, W), zero outside the mask; MTT from CBV / CBF."""
  values = dict(values)
  for k in ("cbv", "cbf", "tmax"):
    values[k] = np.maximum(values[k], 0.0)
  positive = values["cbf"] > 0
  values["mtt"] = np.where(positive, 60.0 * values["cbv"] / np.where(positive, values["cbf"], 1.0),
                           0.0)
  maps = {}
  for k in ("tmax", "cbv", "cbf", "mtt"):
    full = np.zeros(mask.shape, np.float32)
    full[mask] = values[k]
    maps[k] = full
  return maps


def perfusion_maps(scan_hu: np.ndarray, aif_hu: np.ndarray, frame_times_s: np.ndarray,
                   brain_mask: np.ndarray, method: str = "bsvd",
                   threshold: float = DEFAULT_THRESHOLD, oi_threshold: float = DEFAULT_OI_THRESHOLD,
                   chunk_voxels: int = 8192) -> dict[str, np.ndarray]:
  """Tmax, CBV, CBF, MTT maps of a scan by SVD deconvolution.

  Args:
    scan_hu: (S, T, H, W) attenuation in HU (absolute; the baseline is removed here). At low
      temporal resolution, the sample-and-hold series (T frames) exactly as the network gets it.
    aif_hu: (T,) AIF enhancement (HU above baseline), degraded the same way as the scan. Used as
      given (no baseline is removed from it); e.g. the phantom's ``case.aif_hu`` or
      :func:`select_aif`'s output.
    frame_times_s: (T,) frame times, uniformly spaced (the degraded series keeps the original
      times and interval).
    brain_mask: (S, H, W) bool; only these voxels are deconvolved.
    method: 'bsvd' (truncation at ``threshold``) or 'osvd' (per-voxel, ``oi_threshold``).
    chunk_voxels: voxels per jit-compiled call (one compiled shape; the last chunk is padded).

  Baseline: each voxel's mean over the first :func:`baseline_frames` (aif_hu) frames, i.e. the
  frames before the AIF's arrival (at least frame 0), is subtracted.

  Returns:
    dict tmax (s), cbv (ml/100 g), cbf (ml/100 g/min), mtt (s) of (S, H, W) float32, zero
    outside the mask. CBV and CBF are clipped at 0 (noise can make them negative); Tmax is
    clipped at 0 (a negative Tmax means the tissue curve leads the AIF); MTT = 60 CBV / CBF
    (0 where CBF is 0).
  """
  if method not in METHODS:
    raise InputError("method", f"unknown deconvolution method {method!r}; valid: {METHODS}")
  curves, aif, interval, mask = _scan_curves(scan_hu, aif_hu, frame_times_s, brain_mask)
  if method == "bsvd":
    _check_fraction("threshold", threshold)
    core = lambda part: _bsvd_core(part, aif, np.float32(interval), np.float32(threshold))
  else:
    if not float(oi_threshold) > 0:
      raise InputError("oi_threshold", f"must be positive, got {oi_threshold!r}")
    core = lambda part: _osvd_core(part, aif, np.float32(interval), np.float32(oi_threshold))
  return _finish_maps(_chunked(core, curves, chunk_voxels, ("tmax", "cbv", "cbf")), mask)


@jax.jit
def _candidates_core(tissue_hu, aif_hu, frame_interval_s):
  """Tmax, CBF and oscillation index (K, V) at every threshold of OSVD_THRESHOLDS; CBV (V,)."""
  tissue = jnp.asarray(tissue_hu, jnp.float32)
  aif = jnp.asarray(aif_hu, jnp.float32)
  dt = jnp.asarray(frame_interval_s, jnp.float32)
  pinvs = _truncated_pinvs(aif, dt, jnp.asarray(OSVD_THRESHOLDS, jnp.float32))  # (K, L, L)
  residues = (K_H / RHO_G_PER_ML) * jnp.einsum("vl,kml->kvm", _pad_curves(tissue), pinvs)
  maps = _maps_from_residue(residues, tissue, aif, dt)
  return dict(tmax=maps["tmax"], cbf=maps["cbf"], cbv=maps["cbv"], oi=oscillation_index(residues))


def _threshold_index(threshold: float) -> int:
  matches = np.nonzero(np.isclose(OSVD_THRESHOLDS, float(threshold)))[0]
  if len(matches) != 1:
    raise InputError("threshold", f"must be one of the candidate thresholds {OSVD_THRESHOLDS} "
                                  f"here, got {threshold!r}")
  return int(matches[0])


def perfusion_maps_variants(scan_hu: np.ndarray, aif_hu: np.ndarray, frame_times_s: np.ndarray,
                            brain_mask: np.ndarray, variants: Sequence[tuple[str, float]],
                            chunk_voxels: int = 8192) -> list[dict[str, np.ndarray]]:
  """:func:`perfusion_maps` for several (method, parameter) variants at the cost of one oSVD.

  variants: ('bsvd', threshold) with threshold one of OSVD_THRESHOLDS (5%, 10%, ..., 95%) or
  ('osvd', oi_threshold). The residues at every candidate threshold are computed once; bSVD takes
  its threshold's, oSVD its per-voxel choice, exactly as :func:`perfusion_maps` does (tested
  equal). For parameter searches (:func:`pkd_jax.baselines.evaluate_classical_best`).

  Returns one dict of maps per variant, as :func:`perfusion_maps`.
  """
  selections = []
  for method, param in variants:
    if method == "bsvd":
      selections.append(("bsvd", _threshold_index(param)))
    elif method == "osvd":
      if not float(param) > 0:
        raise InputError("oi_threshold", f"must be positive, got {param!r}")
      selections.append(("osvd", float(param)))
    else:
      raise InputError("method", f"unknown deconvolution method {method!r}; valid: {METHODS}")
  curves, aif, interval, mask = _scan_curves(scan_hu, aif_hu, frame_times_s, brain_mask)
  core = lambda part: _candidates_core(part, aif, np.float32(interval))
  out = _chunked(core, curves, chunk_voxels, ("tmax", "cbf", "cbv", "oi"))
  num_candidates = len(OSVD_THRESHOLDS)
  results = []
  for method, param in selections:
    if method == "bsvd":
      chosen = np.full(curves.shape[0], param)
    else:  # as _osvd_core: the smallest threshold whose oscillation index is below the bound
      ok = out["oi"] < param
      chosen = np.where(ok.any(axis=0), np.argmax(ok, axis=0), num_candidates - 1)
    pick = lambda a: np.take_along_axis(a, chosen[None, :], axis=0)[0]
    results.append(_finish_maps(dict(tmax=pick(out["tmax"]), cbf=pick(out["cbf"]), cbv=out["cbv"]),
                                mask))
  return results


# ----------------------------------------------------------------------------------------------
# Smoothing and the whole classical pipeline.


def smooth_series(scan_hu: np.ndarray, brain_mask: np.ndarray, spatial_sigma_px: float = 0.0,
                  temporal_sigma_frames: float = 0.0) -> np.ndarray:
  """A scan (S, T, H, W) smoothed as perfusion software does before deconvolution.

  Temporal: a Gaussian of ``temporal_sigma_frames`` along the frames (scipy.ndimage
  gaussian_filter1d; the first and last frames are held beyond the ends, mode 'nearest').
  Spatial: an in-plane Gaussian of ``spatial_sigma_px`` normalised inside the brain mask
  (normalised convolution, Knutsson and Westin, CVPR 1993): smooth(x m) / smooth(m), so that
  skull, air and vessels outside the mask do not leak into the tissue curves; voxels outside the
  mask get the temporal step only. A sigma of 0 skips that step. float32 out.
  """
  scan = np.asarray(scan_hu, np.float32)
  if scan.ndim != 4:
    raise InputError("scan_hu", f"must be (S, T, H, W), got shape {scan.shape}")
  mask = np.asarray(brain_mask, bool)
  if mask.shape != (scan.shape[0], *scan.shape[2:]):
    raise InputError("brain_mask", f"must be {(scan.shape[0], *scan.shape[2:])} like scan_hu's "
                                   f"(S, H, W); got shape {mask.shape}")
  for name, sigma in (("spatial_sigma_px", spatial_sigma_px),
                      ("temporal_sigma_frames", temporal_sigma_frames)):
    if not float(sigma) >= 0:
      raise InputError(name, f"must be a non-negative number, got {sigma!r}")
  if temporal_sigma_frames > 0:
    scan = ndimage.gaussian_filter1d(scan, float(temporal_sigma_frames), axis=1, mode="nearest")
  if spatial_sigma_px > 0:
    weight = mask[:, None].astype(np.float32)
    sigma = (0.0, 0.0, float(spatial_sigma_px), float(spatial_sigma_px))
    total = ndimage.gaussian_filter(scan * weight, sigma, mode="constant")
    norm = ndimage.gaussian_filter(mask.astype(np.float32), sigma[1:], mode="constant")[:, None]
    scan = np.where(weight > 0, total / np.maximum(norm, 1e-6), scan)
  return scan.astype(np.float32)


def smooth_curve(curve: np.ndarray, temporal_sigma_frames: float = 0.0) -> np.ndarray:
  """A curve (T,) smoothed by :func:`smooth_series`'s temporal Gaussian (for the AIF: the same
  filter on AIF and tissue leaves their deconvolution unbiased, g * C_t = (g * C_a) (*) k)."""
  curve = np.asarray(curve, np.float32)
  if temporal_sigma_frames > 0:
    curve = ndimage.gaussian_filter1d(curve, float(temporal_sigma_frames), mode="nearest")
  return curve.astype(np.float32)


def classical_maps(scan_hu: np.ndarray, aif_hu: np.ndarray, frame_times_s: np.ndarray,
                   brain_mask: np.ndarray, method: str = "osvd", svd_param: float | None = None,
                   spatial_sigma_px: float = 0.0, temporal_sigma_s: float = 0.0
                   ) -> dict[str, np.ndarray]:
  """The clinical pipeline: :func:`smooth_series` (scan) and :func:`smooth_curve` (AIF), then
  :func:`perfusion_maps`. svd_param: bSVD's threshold or oSVD's oscillation index bound (None:
  the method's default); temporal_sigma_s in seconds (divided by the frame interval)."""
  interval = frame_interval_from_times(frame_times_s, np.shape(scan_hu)[1])
  frames = float(temporal_sigma_s) / interval
  scan = smooth_series(scan_hu, brain_mask, spatial_sigma_px, frames)
  kwargs = {} if svd_param is None else (
      dict(threshold=svd_param) if method == "bsvd" else dict(oi_threshold=svd_param))
  return perfusion_maps(scan, smooth_curve(aif_hu, frames), frame_times_s, brain_mask,
                        method=method, **kwargs)


def ttp_tmax(scan_hu: np.ndarray, aif_hu: np.ndarray, frame_times_s: np.ndarray,
             brain_mask: np.ndarray, spatial_sigma_px: float = 0.0,
             temporal_sigma_s: float = 0.0) -> np.ndarray:
  """A deconvolution-free Tmax estimate (S, H, W) in s: tissue time-to-peak minus the AIF's.

  The scan is smoothed (:func:`smooth_series`, the AIF likewise in time); each brain voxel's
  time-to-peak is the time of its curve's maximum (the first, for held frames), and its estimate
  is TTP(tissue) - TTP(AIF), clipped at 0; 0 outside the mask. A sanity floor, not a method: TTP
  includes the transit through the tissue (about the residue's spread convolved with the AIF's
  width), so it reads later than Tmax, and it is quantised to frames.
  """
  times = np.asarray(frame_times_s, np.float64)
  interval = frame_interval_from_times(times, np.shape(scan_hu)[1])
  frames = float(temporal_sigma_s) / interval
  scan = smooth_series(scan_hu, brain_mask, spatial_sigma_px, frames)
  aif = smooth_curve(aif_hu, frames)
  mask = np.asarray(brain_mask, bool)
  ttp = times[np.argmax(scan, axis=1)] - times[int(np.argmax(aif))]
  return np.where(mask, np.maximum(ttp, 0.0), 0.0).astype(np.float32)


# ----------------------------------------------------------------------------------------------
# Automatic AIF.


def select_aif(scan_hu: np.ndarray, brain_mask: np.ndarray, num_voxels: int = 4,
               candidate_fraction: float = 0.01, ttp_tolerance_s: float = 2.0,
               frame_times_s: np.ndarray | None = None,
               dilate_px: int = 1) -> tuple[np.ndarray, np.ndarray]:
  """An automatic AIF: early, high-peaked voxels of the scan, averaged.

  Heuristic (in the spirit of the peak / time-to-peak criteria of automatic AIF selection, e.g.
  Mlynash et al. AJNR 2005; Mouridsen et al. MRM 2006):

  1. Search region: the brain mask with its holes filled and dilated by ``dilate_px`` per slice.
     Arteries are usually not part of a parenchyma mask (the phantom's ``masks['brain']``
     excludes them), but they lie inside it.
  2. Provisional enhancement of every voxel: the curve minus its frame 0. Peak = the maximum,
     TTP = the time of the maximum.
  3. Candidates: the ``candidate_fraction`` (1%) of the region's voxels with the highest peak,
     at least 4 * num_voxels.
  4. Early candidates: TTP within ``ttp_tolerance_s`` of the earliest candidate TTP. This keeps
     arteries and drops the venous sinus, which is as bright but peaks 4-7 s later.
  5. The ``num_voxels`` early candidates with the highest peak are averaged; the baseline (mean
     of the first :func:`baseline_frames` frames of the average) is subtracted.

  Partial volume: the selected curve is the true AIF times the voxels' partial-volume factor
  (in the phantom, arteries hold the AIF scaled by 0.3-1.0), so it may be scaled down. Because
  CBF and CBV are inversely proportional to the AIF's scale, they are overestimated by the same
  factor; Tmax and MTT are not affected. Clinical software corrects for this with a venous
  output function, which this heuristic does not do.

  Args:
    scan_hu: (S, T, H, W) HU, possibly degraded (sample-and-hold).
    brain_mask: (S, H, W) bool.
    frame_times_s: (T,) for the TTP tolerance in seconds; default: 1 s frames.

  Returns:
    (aif_hu (T,) float32 enhancement, coords (num_voxels, 3) int of (slice, row, column)).
  """
  scan = np.asarray(scan_hu, np.float32)
  if scan.ndim != 4:
    raise InputError("scan_hu", f"must be (S, T, H, W), got shape {scan.shape}")
  num_slices, num_frames, height, width = scan.shape
  mask = np.asarray(brain_mask, bool)
  if mask.shape != (num_slices, height, width):
    raise InputError("brain_mask", f"must be {(num_slices, height, width)} like scan_hu's "
                                   f"(S, H, W); got shape {mask.shape}")
  if int(num_voxels) < 1:
    raise InputError("num_voxels", f"must be positive, got {num_voxels!r}")
  times = (np.arange(num_frames, dtype=np.float64) if frame_times_s is None
           else np.asarray(frame_times_s, np.float64))
  if times.shape != (num_frames,):
    raise InputError("frame_times_s", f"must be ({num_frames},), got shape {times.shape}")
  region = np.stack([ndimage.binary_fill_holes(m) for m in mask])
  if dilate_px > 0:
    region = ndimage.binary_dilation(region, np.ones((1, 3, 3), bool), iterations=int(dilate_px))
  coords = np.argwhere(region)
  if len(coords) < num_voxels:
    raise InputError("brain_mask", f"has {len(coords)} voxels, fewer than num_voxels={num_voxels}")
  curves = np.moveaxis(scan, 1, -1)[region]  # (V, T)
  enhancement = curves - curves[:, :1]
  peak = enhancement.max(axis=1)
  ttp = times[np.argmax(enhancement, axis=1)]
  num_candidates = min(len(peak), max(4 * num_voxels, int(np.ceil(candidate_fraction * len(peak)))))
  candidates = np.argsort(-peak, kind="stable")[:num_candidates]
  early = candidates[ttp[candidates] <= ttp[candidates].min() + ttp_tolerance_s]
  chosen = early[np.argsort(-peak[early], kind="stable")[:num_voxels]]
  aif = curves[chosen].mean(axis=0)
  rise_curve = aif - aif[0]
  base = baseline_frames(rise_curve) if rise_curve.max() > 0 else 1
  aif = aif - aif[:base].mean()
  return aif.astype(np.float32), coords[chosen].astype(np.int64)


# ----------------------------------------------------------------------------------------------
# How the classical pipeline degrades with the temporal factor and with noise.


def degradation_report(cases: Case | Sequence[Case], factors: Sequence[int] = (1, 4, 8, 16),
                       noise_mas: Sequence[float | None] = (None, 60.0), method: str = "bsvd",
                       aif: str = "true", **method_kwargs) -> list[dict[str, Any]]:
  """Median accuracy of the classical maps per case and temporal factor, on phantom cases.

  Args:
    cases: phantom cases (or one), e.g. the same case generated noise-free and with noise;
      noise is not added here: the caller generates the noisy case (PhantomConfig(noise=True,
      mas=(60.0, 60.0))).
    factors: temporal factors; the scan and the AIF are both sample-and-hold degraded.
    noise_mas: one label per case, copied into the rows: None for a noise-free case, else the
      case's tube current-time product (mAs). Must have one entry per case.
    method: 'bsvd' or 'osvd' (keyword arguments such as threshold pass through).
    aif: 'true' (the phantom's case.aif_hu, degraded) or 'select' (:func:`select_aif` on the
      degraded scan; then CBV/CBF carry the partial-volume scale, see select_aif).

  Returns:
    One dict per (case, factor): case_id, factor, noise_mas, cbv_ratio and cbf_ratio (median of
    estimate / truth), tmax_median_abs_error_s (median |estimate - truth|, s),
    tmax_median_abs_error_frames (the same in frame intervals), aif_peak_hu (the degraded AIF's
    peak: at 1/16 the kept frames can miss the bolus altogether, and then CBV and CBF blow up),
    num_voxels. The medians run over the healthy brain (masks['brain'] minus core and penumbra,
    with CBF > 0) -- the tissue where ground truth is large enough for a ratio.
  """
  cases = [cases] if isinstance(cases, Case) else list(cases)
  noise_mas = list(noise_mas)
  if len(noise_mas) != len(cases):
    raise InputError("noise_mas", f"needs one label per case ({len(cases)}), got {len(noise_mas)}")
  if aif not in ("true", "select"):
    raise InputError("aif", f"must be 'true' or 'select', got {aif!r}")
  rows = []
  for case, mas in zip(cases, noise_mas):
    if aif == "true" and case.aif_hu is None:
      raise InputError("aif", f"case {case.case_id} has no known AIF; use aif='select'")
    masks = case.masks
    brain = masks["brain"]
    healthy = brain.copy()
    for lesion in ("core", "penumbra"):
      if lesion in masks:
        healthy &= ~masks[lesion]
    healthy &= case.maps["cbf"] > 0
    for factor in factors:
      scan = temporal.degrade_np(case.scan_hu, factor, axis=1)
      if aif == "true":
        aif_hu = temporal.degrade_np(np.asarray(case.aif_hu), factor, axis=0)
      else:
        aif_hu, _ = select_aif(scan, brain, frame_times_s=case.frame_times_s)
      maps = perfusion_maps(scan, aif_hu, case.frame_times_s, brain, method=method, **method_kwargs)
      truth = case.maps
      tmax_error = np.abs(maps["tmax"][healthy] - truth["tmax"][healthy])
      rows.append(dict(
          case_id=case.case_id, factor=int(factor), noise_mas=mas,
          cbv_ratio=float(np.median(maps["cbv"][healthy] / truth["cbv"][healthy])),
          cbf_ratio=float(np.median(maps["cbf"][healthy] / truth["cbf"][healthy])),
          tmax_median_abs_error_s=float(np.median(tmax_error)),
          tmax_median_abs_error_frames=float(np.median(tmax_error)) / case.frame_interval_s,
          aif_peak_hu=float(np.max(aif_hu)), num_voxels=int(healthy.sum())))
  return rows


def format_report(rows: Sequence[dict[str, Any]]) -> str:
  """The rows of :func:`degradation_report` as a fixed-width text table."""
  lines = [f"{'case':>18} {'factor':>6} {'noise':>9} {'CBV ratio':>9} {'CBF ratio':>9} "
           f"{'Tmax MedAE s':>12} {'(frames)':>8} {'AIF peak HU':>11}"]
  for r in rows:
    noise = "none" if r["noise_mas"] is None else f"{r['noise_mas']:g} mAs"
    factor = f"1/{r['factor']}"
    lines.append(f"{r['case_id']:>18} {factor:>6} {noise:>9} {r['cbv_ratio']:9.3f} "
                 f"{r['cbf_ratio']:9.3f} {r['tmax_median_abs_error_s']:12.2f} "
                 f"{r['tmax_median_abs_error_frames']:8.2f} {r['aif_peak_hu']:11.1f}")
  return "\n".join(lines)
