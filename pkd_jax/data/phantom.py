"""A digital 4D CT perfusion phantom built on indicator-dilution theory, with exact ground truth.

Physics (DESIGN.md section 3). For a tissue voxel with blood flow F, mean transit time MTT, bolus
delay d and residue function R, the enhancement over baseline is

    C_t(t) = (rho / k_H) * F * (C_a (*) R)(t - d),       F = CBF / 6000  [ml/g/s],

with rho = 1.04 g/ml (brain density) and k_H = 0.73 (large/small vessel hematocrit correction), so
that area(C_t) / area(C_a) = (rho / k_H) * CBV / 100 and CBV = CBF * MTT / 60 (central volume
theorem). The arterial input function (AIF) C_a is a gamma variate A (t - t0)^alpha e^{-(t-t0)/beta}
(Fang et al.: alpha 3, beta 1.5 s) with a peak of 150-500 HU, arrival t0 of 2-10 s and an optional
recirculation bump; the venous output is a later, wider gamma variate.

Residue functions (all with area MTT, all delayed by d):

* ``exponential``: R(t) = exp(-t / MTT) (a single well-mixed compartment). Maximum at t = 0.
* ``box``: R(t) = 1 for 0 <= t < MTT (plug flow). Maximum (first) at t = 0.
* ``dispersed``: the exponential residue convolved with an exponential vascular transport function
  e^{-t/s}/s (Calamante et al., MRM 2000; Ostergaard's dispersion model), i.e.
  R(t) = MTT / (MTT - s) * (e^{-t/MTT} - e^{-t/s}), whose maximum lies at
  t* = s MTT ln(MTT / s) / (MTT - s).

Ground-truth Tmax is the time of the maximum of the delayed residue function: d (+ t* when
dispersed). Tissue values (Manhart et al.'s Erlangen phantom; Kudo et al., ASIST-Japan): gray
matter CBF ~53 +/- 14 ml/100 g/min, CBV 3.3-4.5 ml/100 g; white matter CBF ~25, CBV ~1.9;
penumbra GM 16 / 3.0, WM 7.5 / 1.7; core GM 5.3 / 0.71, WM 2.5 / 0.42. Delays: healthy 0-2 s,
penumbra 6-12 s (RAPID's penumbra is Tmax > 6 s: Lansberg et al., DEFUSE 2), core 8-16 s.
Baseline attenuation: GM 35 HU, WM 29 HU, CSF 12 HU, bone ~1000 HU, air -1000 HU.

Noise: spatially correlated Gaussian noise with standard deviation
sigma = 103.09 * sqrt(1 / mAs - 1 / 190) HU (Fang et al., "Tissue-specific sparse deconvolution
for low-dose CT perfusion", MICCAI 2013), so a lower tube current-time product means a noisier
scan; the correlation comes from a Gaussian kernel of 0.6-1.2 mm, and the field is rescaled so its
standard deviation is exactly sigma.

Reproducibility: every case is generated from (seed, case index) alone, and every slice of it
from (seed, case index, slice index) plus the case-level parameters, so a slice (or a case) can be
made by itself, in any order, with bit-identical results (numpy's SeedSequence spawning).

Command line (pkd_jax.tools.phantom): ``python -m pkd_jax.tools.phantom --show`` draws one case
to a PNG; ``python -m pkd_jax.tools.phantom --write DIR --num-cases N`` writes cases in the ISLES
2018 layout.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Sequence

import numpy as np
from scipy import ndimage

from pkd_jax.data.case import K_H, RHO_G_PER_ML, Case
from pkd_jax.errors import InputError

RESIDUE_SHAPES = ("exponential", "box", "dispersed")

# Tissue labels of the phantom's label map.
LABELS = {"background": 0, "gray_matter": 1, "white_matter": 2, "csf": 3, "artery": 4,
          "vein": 5, "bone": 6, "scalp": 7}

# Random streams, so that adding draws to one part never changes another part's numbers.
_STREAM_CASE, _STREAM_SLICE, _STREAM_NOISE = 0, 1, 2


@dataclasses.dataclass(frozen=True)
class PhantomConfig:
  """Geometry and value ranges of the phantom. Ranges are (low, high), drawn uniformly per case."""

  height: int = 256  # in-plane rows
  width: int = 256  # in-plane columns
  num_frames: int = 40  # frames per scan (the paper's preprocessed length)
  num_slices: int = 8  # axial slices per case (ISLES 2018 has 2-22)
  field_of_view_mm: float = 230.0  # in-plane extent of the image; pixel size = fov / width
  slice_thickness_mm: float = 5.0
  frame_interval_s: tuple[float, float] = (1.0, 1.6)  # per case; 40 frames span 40-64 s
  aif_arrival_s: tuple[float, float] = (2.0, 10.0)  # AIF bolus arrival t0
  aif_peak_hu: tuple[float, float] = (150.0, 500.0)
  aif_alpha: tuple[float, float] = (2.5, 4.0)  # gamma variate shape (Fang: 3)
  aif_beta_s: tuple[float, float] = (1.0, 2.0)  # gamma variate scale (Fang: 1.5 s)
  recirculation_probability: float = 0.5  # chance of a recirculation bump in the AIF
  residue_shapes: tuple[str, ...] = RESIDUE_SHAPES  # drawn per case from these ...
  residue_weights: tuple[float, ...] = (0.6, 0.1, 0.3)  # ... with these probabilities
  dispersion_s: tuple[float, float] = (0.3, 1.0)  # time constant of the dispersion kernel
  lesion_count_weights: tuple[float, float, float] = (0.25, 0.5, 0.25)  # P(0, 1, 2 lesions)
  mas: tuple[float, float] = (50.0, 150.0)  # tube current-time product (dose), per case
  noise: bool = True  # add dose-dependent noise; False gives the noise-free scan
  noise_correlation_mm: tuple[float, float] = (0.6, 1.2)  # Gaussian kernel sigma of the noise
  substeps: int = 8  # time steps per frame interval for the convolution
  cbf_texture: float = 0.25  # log-normal spatial variation of CBF (GM 53 +/- 14)

  def __post_init__(self):
    if self.height < 16 or self.width < 16:
      raise InputError("phantom.height/width", f"must be at least 16, got {self.height}x{self.width}")
    if self.num_frames < 2 or self.num_slices < 1:
      raise InputError("phantom.num_frames/num_slices", "need at least 2 frames and 1 slice")
    unknown = set(self.residue_shapes) - set(RESIDUE_SHAPES)
    if unknown or len(self.residue_shapes) != len(self.residue_weights):
      raise InputError("phantom.residue_shapes",
                       f"valid shapes are {RESIDUE_SHAPES}, one weight each; got "
                       f"{self.residue_shapes} with weights {self.residue_weights}")

  @property
  def pixel_mm(self) -> float:
    return self.field_of_view_mm / self.width


def noise_sigma_hu(mas: float) -> float:
  """Standard deviation of CT noise in HU at a tube current-time product (Fang et al. 2013)."""
  return 103.09 * math.sqrt(max(1.0 / mas - 1.0 / 190.0, 0.0))


def gamma_variate(t_s: np.ndarray, t0_s: float, alpha: float, beta_s: float,
                  peak: float) -> np.ndarray:
  """A (t - t0)^alpha exp(-(t - t0) / beta), scaled so its maximum (at t0 + alpha beta) is peak."""
  u = np.maximum(np.asarray(t_s, np.float64) - t0_s, 0.0) / beta_s
  # (u / alpha)^alpha e^{alpha - u} equals 1 at the peak u = alpha.
  with np.errstate(divide="ignore"):
    log_shape = alpha * np.log(u / alpha) + alpha - u
  return np.where(u > 0, peak * np.exp(log_shape), 0.0)


def residue_function(t_s: np.ndarray, shape: str, mtt_s, delay_s, dispersion_s: float = 1.0):
  """The delayed residue function R(t - d) of the module docstring (broadcasts over voxels)."""
  t = np.asarray(t_s, np.float64) - delay_s
  mtt = np.asarray(mtt_s, np.float64)
  tp = np.maximum(t, 0.0)
  if shape == "exponential":
    r = np.exp(-tp / mtt)
  elif shape == "box":
    r = (tp < mtt).astype(np.float64)
  elif shape == "dispersed":
    s = dispersion_s
    r = mtt / (mtt - s) * (np.exp(-tp / mtt) - np.exp(-tp / s))
  else:
    raise InputError("residue shape", f"unknown {shape!r}; valid: {RESIDUE_SHAPES}")
  return np.where(t >= 0, r, 0.0)


def residue_peak_time_s(shape: str, mtt_s, dispersion_s: float = 1.0):
  """Time of the maximum of the undelayed residue function: 0, or t* when dispersed."""
  mtt = np.asarray(mtt_s, np.float64)
  if shape != "dispersed":
    return np.zeros_like(mtt)
  s = dispersion_s
  return s * mtt * np.log(mtt / s) / (mtt - s)


# ----------------------------------------------------------------------------------------------
# Case-level parameters: drawn from (seed, index) alone.


def _uniform(rng: np.random.Generator, bounds: Sequence[float]) -> float:
  low, high = bounds
  return float(rng.uniform(low, high))


def _rng(seed: int, *keys: int) -> np.random.Generator:
  return np.random.default_rng(np.random.SeedSequence([seed, *keys]))


def case_parameters(config: PhantomConfig, seed: int, index: int) -> dict[str, Any]:
  """All case-level random choices: timing, AIF, anatomy, lesions, dose. JSON-serialisable."""
  rng = _rng(seed, index, _STREAM_CASE)
  p: dict[str, Any] = {"seed": seed, "index": index}
  p["frame_interval_s"] = _uniform(rng, config.frame_interval_s)
  # AIF and venous output.
  p["aif"] = dict(t0_s=_uniform(rng, config.aif_arrival_s), alpha=_uniform(rng, config.aif_alpha),
                  beta_s=_uniform(rng, config.aif_beta_s), peak=_uniform(rng, config.aif_peak_hu))
  aif = p["aif"]
  aif_peak_time = aif["t0_s"] + aif["alpha"] * aif["beta_s"]
  if rng.uniform() < config.recirculation_probability:
    p["recirculation"] = dict(t0_s=aif_peak_time + rng.uniform(4.0, 8.0), alpha=3.0,
                              beta_s=2.0 * aif["beta_s"], peak=aif["peak"] * rng.uniform(0.05, 0.15))
  else:
    p["recirculation"] = None
  p["vein"] = dict(t0_s=aif["t0_s"] + rng.uniform(4.0, 7.0), alpha=aif["alpha"],
                   beta_s=aif["beta_s"] * rng.uniform(1.3, 1.8), peak=aif["peak"] * rng.uniform(0.7, 1.1))
  # Residue shape.
  weights = np.asarray(config.residue_weights, np.float64)
  p["residue_shape"] = str(config.residue_shapes[rng.choice(len(weights), p=weights / weights.sum())])
  p["dispersion_s"] = _uniform(rng, config.dispersion_s)
  # Tissue values: case-level means (ml/100 g/min, ml/100 g, s, HU).
  p["tissue"] = dict(
      gm_cbf=rng.uniform(45.0, 60.0), gm_cbv=rng.uniform(3.3, 4.5),
      wm_cbf=rng.uniform(21.0, 29.0), wm_cbv=rng.uniform(1.6, 2.2),
      healthy_delay_s=rng.uniform(0.0, 1.0), healthy_delay_spread_s=rng.uniform(0.2, 1.0),
      gm_hu=rng.uniform(32.0, 38.0), wm_hu=rng.uniform(26.0, 31.0), csf_hu=rng.uniform(8.0, 15.0),
      bone_hu=rng.uniform(900.0, 1400.0), blood_hu=rng.uniform(38.0, 45.0))
  # Head: an ellipsoid in normalised image coordinates (1 = half the field of view).
  p["head"] = dict(semi_y=rng.uniform(0.78, 0.9), semi_x=rng.uniform(0.64, 0.76),
                   semi_z_mm=rng.uniform(70.0, 85.0), centre_y=rng.uniform(-0.04, 0.04),
                   centre_x=rng.uniform(-0.04, 0.04), tilt_rad=rng.uniform(-0.12, 0.12),
                   skull_mm=rng.uniform(5.0, 8.0), scalp_mm=rng.uniform(3.0, 6.0),
                   csf_rim_mm=rng.uniform(1.0, 2.5), ribbon_mm=rng.uniform(4.0, 7.0),
                   ventricle_scale=rng.uniform(0.6, 1.5))
  # The slab of slices: centre height in mm above the head's centre.
  slab_mm = config.num_slices * config.slice_thickness_mm
  p["slab_centre_mm"] = rng.uniform(-10.0, 25.0 - min(slab_mm, 40.0) / 4)
  # Lesions: each in a vascular territory, a penumbra ellipsoid around a core ellipsoid.
  n_lesions = int(rng.choice(3, p=np.asarray(config.lesion_count_weights) / np.sum(config.lesion_count_weights)))
  territories = ["mca_left", "mca_right", "aca_left", "aca_right", "pca_left", "pca_right"]
  chosen = rng.choice(len(territories), size=n_lesions, replace=False,
                      p=np.array([0.3, 0.3, 0.1, 0.1, 0.1, 0.1]))
  p["lesions"] = []
  for k in chosen:
    territory = territories[int(k)]
    pen_delay = rng.uniform(7.0, 11.0)
    p["lesions"].append(dict(
        territory=territory,
        centre_z_mm=p["slab_centre_mm"] + rng.uniform(-0.3, 0.3) * slab_mm,
        radius=rng.uniform(0.35, 0.6), radius_z_mm=rng.uniform(20.0, 45.0),
        core_fraction=rng.uniform(0.3, 0.65),
        penumbra_delay_s=pen_delay, core_delay_s=rng.uniform(max(pen_delay + 1.0, 8.0), 15.0),
        penumbra_scale=rng.uniform(0.8, 1.2), core_scale=rng.uniform(0.8, 1.2)))
  p["mas"] = _uniform(rng, config.mas)
  p["noise_sigma_hu"] = noise_sigma_hu(p["mas"])
  p["noise_correlation_mm"] = _uniform(rng, config.noise_correlation_mm)
  return p


# ----------------------------------------------------------------------------------------------
# Curves.


def frame_times_s(config: PhantomConfig, params: dict[str, Any]) -> np.ndarray:
  return np.arange(config.num_frames) * params["frame_interval_s"]


def arterial_curve(t_s: np.ndarray, params: dict[str, Any]) -> np.ndarray:
  """The AIF (enhancement over baseline, HU) at times t_s, including any recirculation."""
  c = gamma_variate(t_s, **params["aif"])
  if params["recirculation"] is not None:
    c = c + gamma_variate(t_s, **params["recirculation"])
  return c


def venous_curve(t_s: np.ndarray, params: dict[str, Any]) -> np.ndarray:
  return gamma_variate(t_s, **params["vein"])


def _exponential_filter(x: np.ndarray, h: float, tau: np.ndarray) -> np.ndarray:
  """y = x (*) exp(-t / tau) on a grid of step h, exact for x linear between grid points.

  x: (N,) samples at 0, h, 2h, ...; tau: (V,). Returns (N, V). The discrete area is exact:
  sum(y) = tau * sum(x) for curves that start and end at zero.
  """
  a = np.exp(-h / tau)
  i0 = tau * (1.0 - a)  # integral of e^{-(h-s)/tau} over one step
  i1 = i0 - tau * tau * (1.0 - a) / h + tau * a  # ... times s / h
  c_prev, c_next = i0 - i1, i1
  y = np.empty((x.shape[0], tau.shape[0]), np.float64)
  y[0] = 0.0
  for k in range(1, x.shape[0]):
    y[k] = a * y[k - 1] + c_prev * x[k - 1] + c_next * x[k]
  return y


def _interp_rows(table: np.ndarray, h: float, t_s: np.ndarray) -> np.ndarray:
  """Linear interpolation of table[(N, V)] sampled at k * h, at times t_s[(T, V)]; 0 before 0."""
  n = table.shape[0]
  u = np.clip(t_s / h, 0.0, n - 1.000001)
  i = np.floor(u).astype(np.int64)
  w = u - i
  cols = np.arange(table.shape[1])[None, :]
  out = table[i, cols] * (1.0 - w) + table[i + 1, cols] * w
  return np.where(t_s > 0, out, 0.0)


def tissue_curves(times_s: np.ndarray, params: dict[str, Any], cbf: np.ndarray, mtt_s: np.ndarray,
                  delay_s: np.ndarray, substeps: int) -> np.ndarray:
  """Noise-free tissue enhancement (HU) at frame times, for voxels given as flat arrays (V,).

  The convolution C_a (*) R is computed without delay on a fine grid (step = frame interval /
  substeps) with per-voxel MTT, then read off at t - d; delay commutes with convolution.
  """
  if cbf.size == 0:
    return np.zeros((len(times_s), 0), np.float32)
  h = float(times_s[1] - times_s[0]) / substeps if len(times_s) > 1 else 0.1
  grid = np.arange(0.0, times_s[-1] + 2 * h, h)
  aif = arterial_curve(grid, params)
  shape = params["residue_shape"]
  t_minus_d = times_s[:, None] - delay_s[None, :]
  if shape == "box":
    cumulative = np.concatenate([[0.0], np.cumsum((aif[1:] + aif[:-1]) * (h / 2))])[:, None]
    conv = (_interp_rows(cumulative, h, t_minus_d) -
            _interp_rows(cumulative, h, t_minus_d - mtt_s[None, :]))
  else:
    if shape == "dispersed":
      s = params["dispersion_s"]
      aif = _exponential_filter(aif, h, np.array([s]))[:, 0] / s  # unit-area transport kernel
    conv = _interp_rows(_exponential_filter(aif, h, mtt_s), h, t_minus_d)
  flow = cbf / 6000.0  # ml/100 g/min -> ml/g/s
  return (RHO_G_PER_ML / K_H * flow[None, :] * conv).astype(np.float32)


# ----------------------------------------------------------------------------------------------
# Anatomy of one slice.


def _smooth_field(rng: np.random.Generator, shape: tuple[int, int], sigma_px: float) -> np.ndarray:
  """A smooth Gaussian random field with zero mean and unit standard deviation."""
  f = ndimage.gaussian_filter(rng.standard_normal(shape), max(sigma_px, 0.5), mode="wrap")
  return (f - f.mean()) / (f.std() + 1e-12)


def _territory_masks(yy: np.ndarray, xx: np.ndarray) -> dict[str, np.ndarray]:
  """Vascular territories by angle around the head centre (anterior is row 0, left is column 0)."""
  angle = np.degrees(np.arctan2(xx, -yy))  # 0 = anterior, +90 = image right, +-180 = posterior
  aca = np.abs(angle) < 30
  pca = np.abs(angle) > 140
  mca = ~aca & ~pca
  left, right = xx < 0, xx >= 0
  return {"aca_left": aca & left, "aca_right": aca & right, "mca_left": mca & left,
          "mca_right": mca & right, "pca_left": pca & left, "pca_right": pca & right}


def _territory_centre(territory: str) -> tuple[float, float]:
  """A point (y, x) well inside the territory, in units of the brain's semi-axes."""
  side = -1.0 if territory.endswith("left") else 1.0
  if territory.startswith("aca"):
    return -0.6, 0.15 * side
  if territory.startswith("pca"):
    return 0.6, 0.25 * side
  return -0.05, 0.6 * side


def slice_phantom(config: PhantomConfig, params: dict[str, Any], slice_index: int) -> dict[str, np.ndarray]:
  """Noise-free scan, maps and masks of one slice. Randomness from (seed, index, slice) only."""
  rng = _rng(params["seed"], params["index"], _STREAM_SLICE, slice_index)
  height, width, px = config.height, config.width, config.pixel_mm
  head, tissue = params["head"], params["tissue"]
  z_mm = params["slab_centre_mm"] + (slice_index - (config.num_slices - 1) / 2) * config.slice_thickness_mm
  # Normalised coordinates: 1 = half the field of view, rotated by the head's tilt.
  yy, xx = np.meshgrid((np.arange(height) + 0.5) / height * 2 - 1,
                       (np.arange(width) + 0.5) / width * 2 - 1, indexing="ij")
  yy = yy * height / width  # square pixels
  cy, cx = yy - head["centre_y"], xx - head["centre_x"]
  c, s = math.cos(head["tilt_rad"]), math.sin(head["tilt_rad"])
  ry, rx = c * cy - s * cx, s * cy + c * cx
  # The head's cross-section at this height shrinks like an ellipsoid.
  zfrac = min(abs(z_mm) / head["semi_z_mm"], 0.95)
  shrink = math.sqrt(1 - zfrac ** 2)
  half_fov = config.field_of_view_mm / 2
  def ellipse_r(inset_mm: float) -> np.ndarray:
    a = head["semi_y"] * shrink - inset_mm / half_fov
    b = head["semi_x"] * shrink - inset_mm / half_fov
    return np.sqrt((ry / a) ** 2 + (rx / b) ** 2)
  outer = ellipse_r(0.0) < 1
  skull_outer = ellipse_r(head["scalp_mm"]) < 1
  intracranial = ellipse_r(head["scalp_mm"] + head["skull_mm"]) < 1
  brain = ellipse_r(head["scalp_mm"] + head["skull_mm"] + head["csf_rim_mm"]) < 1
  # Brain semi-axes, for placing structures relative to the brain.
  inset = (head["scalp_mm"] + head["skull_mm"] + head["csf_rim_mm"]) / half_fov
  by, bx = head["semi_y"] * shrink - inset, head["semi_x"] * shrink - inset
  ny, nx = ry / by, rx / bx  # brain-normalised coordinates
  # Cortical ribbon: gray matter within a wavy distance of the brain surface.
  depth_mm = ndimage.distance_transform_edt(brain) * px
  ribbon = head["ribbon_mm"] * (1 + 0.7 * _smooth_field(rng, (height, width), 3.0 / px))
  gm = brain & (depth_mm < np.maximum(ribbon, 1.5))
  # Deep gray matter (basal ganglia / thalami) and lateral ventricles, near the middle slices.
  mid = math.exp(-0.5 * (z_mm / 25.0) ** 2)
  vs = head["ventricle_scale"] * mid
  ventricles = np.zeros_like(brain)
  if vs > 0.15:
    for side in (-1, 1):
      ventricles |= ((ny + 0.1) / (0.32 * vs)) ** 2 + ((nx - side * 0.12) / (0.08 * vs)) ** 2 < 1
  deep_gm = np.zeros_like(brain)
  if mid > 0.3:
    for side in (-1, 1):
      deep_gm |= ((ny - 0.05) / (0.18 * mid)) ** 2 + ((nx - side * 0.32) / (0.1 * mid)) ** 2 < 1
  # Vessels: MCA branches in the sylvian fissures, ACA and PCA near the midline, and the superior
  # sagittal sinus at the back.
  vessel_r = max(1.8, px) / half_fov / by  # artery radius 1.8 mm (at least a pixel), brain units
  arteries = np.zeros_like(brain)
  for (vy, vx) in ((0.0, -0.62), (0.0, 0.62), (-0.55, -0.06), (-0.55, 0.06), (0.55, -0.2), (0.55, 0.2)):
    arteries |= (ny - vy) ** 2 + (nx - vx) ** 2 < (vessel_r * (1 + 0.3 * mid)) ** 2
  arteries &= brain
  vein = ((ny - 0.97) ** 2 + nx ** 2 < (1.6 * vessel_r) ** 2) & intracranial
  csf = (intracranial & ~brain) | (ventricles & brain)
  csf &= ~vein
  parenchyma = brain & ~ventricles & ~arteries & ~vein
  gm = (gm | deep_gm) & parenchyma
  wm = parenchyma & ~gm
  # Healthy perfusion with smooth texture.
  tex_cbf = np.exp(config.cbf_texture * _smooth_field(rng, (height, width), 3.0 / px) - config.cbf_texture ** 2 / 2)
  tex_cbv = np.exp(0.15 * _smooth_field(rng, (height, width), 3.0 / px) - 0.15 ** 2 / 2)
  cbf = np.where(gm, tissue["gm_cbf"], tissue["wm_cbf"]) * tex_cbf
  cbv = np.where(gm, tissue["gm_cbv"], tissue["wm_cbv"]) * tex_cbv
  delay = np.clip(tissue["healthy_delay_s"] + tissue["healthy_delay_spread_s"] *
                  (0.5 + 0.5 * np.tanh(_smooth_field(rng, (height, width), 12.0 / px))), 0.0, 2.0)
  # Lesions: penumbra ellipsoid within the territory, core ellipsoid inside it; ragged boundaries.
  territories = _territory_masks(ny, nx)
  core = np.zeros_like(brain)
  penumbra = np.zeros_like(brain)
  boundary = 0.12 * _smooth_field(rng, (height, width), 5.0 / px)
  for lesion in params["lesions"]:
    ty, tx = _territory_centre(lesion["territory"])
    dz = (z_mm - lesion["centre_z_mm"]) / lesion["radius_z_mm"]
    if abs(dz) >= 1:
      continue
    dist = np.sqrt((ny - ty) ** 2 + (nx - tx) ** 2) / lesion["radius"]
    dist = np.sqrt(dist ** 2 + dz ** 2) + boundary
    region = territories[lesion["territory"]] & parenchyma
    lesion_core = region & (dist < lesion["core_fraction"])
    lesion_pen = region & (dist < 1) & ~lesion_core & ~core
    for mask, kind in ((lesion_pen, "penumbra"), (lesion_core, "core")):
      scale = lesion[f"{kind}_scale"]
      values = {"penumbra": ((16.0, 3.0), (7.5, 1.7)), "core": ((5.3, 0.71), (2.5, 0.42))}[kind]
      (g_cbf, g_cbv), (w_cbf, w_cbv) = values
      cbf = np.where(mask, np.where(gm, g_cbf, w_cbf) * scale * tex_cbf, cbf)
      cbv = np.where(mask, np.where(gm, g_cbv, w_cbv) * scale * tex_cbv, cbv)
      lesion_delay = lesion[f"{kind}_delay_s"] * (1 + 0.08 * np.tanh(_smooth_field(rng, (height, width), 6.0 / px)))
      delay = np.where(mask, lesion_delay, delay)
    penumbra |= lesion_pen
    core |= lesion_core
  penumbra &= ~core
  # Maps: zero outside the parenchyma.
  cbf = np.where(parenchyma, cbf, 0.0)
  cbv = np.where(parenchyma, cbv, 0.0)
  mtt = np.where(parenchyma, 60.0 * cbv / np.maximum(cbf, 1e-6), 0.0)
  delay = np.where(parenchyma, delay, 0.0)
  shape = params["residue_shape"]
  tmax = np.where(parenchyma, delay + residue_peak_time_s(shape, np.maximum(mtt, 1e-3),
                                                          params["dispersion_s"]), 0.0)
  # Baseline attenuation.
  labels = np.zeros((height, width), np.uint8)
  labels[outer] = LABELS["scalp"]
  labels[skull_outer] = LABELS["bone"]
  labels[intracranial] = LABELS["csf"]
  labels[gm] = LABELS["gray_matter"]
  labels[wm] = LABELS["white_matter"]
  labels[csf] = LABELS["csf"]
  labels[arteries] = LABELS["artery"]
  labels[vein] = LABELS["vein"]
  base_hu = np.array([-1000.0, tissue["gm_hu"], tissue["wm_hu"], tissue["csf_hu"], tissue["blood_hu"],
                      tissue["blood_hu"], tissue["bone_hu"], 40.0])[labels]
  base_hu = base_hu - 3.0 * core + 1.5 * _smooth_field(rng, (height, width), 2.0 / px) * (labels != 0)
  # Enhancement: tissue curves in the parenchyma, the AIF (partial volume) in arteries, the venous
  # output in the sinus, a little in the scalp.
  times = frame_times_s(config, params)
  scan = np.repeat(base_hu[None], len(times), axis=0)
  idx = np.nonzero(parenchyma)
  scan[:, idx[0], idx[1]] += tissue_curves(times, params, cbf[idx], mtt[idx], delay[idx], config.substeps)
  partial = np.clip(0.6 + 0.3 * _smooth_field(rng, (height, width), 1.0), 0.3, 1.0)
  scan += arteries[None] * partial[None] * arterial_curve(times, params)[:, None, None]
  scan += vein[None] * venous_curve(times, params)[:, None, None]
  scan += (labels == LABELS["scalp"])[None] * 0.03 * arterial_curve(times, params)[:, None, None]
  f32 = lambda a: a.astype(np.float32)
  return dict(scan_hu=f32(scan), tmax=f32(tmax), cbv=f32(cbv), cbf=f32(cbf), mtt=f32(mtt), delay=f32(delay),
              labels=labels, brain=parenchyma, vessel=arteries | vein, core=core, penumbra=penumbra)


def correlated_noise(rng: np.random.Generator, shape: tuple[int, ...], sigma_hu: float,
                     correlation_px: float) -> np.ndarray:
  """Gaussian noise, smoothed in-plane by a Gaussian kernel and rescaled to exactly sigma_hu."""
  white = rng.standard_normal(shape, dtype=np.float32)
  spatial = (0,) * (len(shape) - 2) + (correlation_px, correlation_px)
  smooth = ndimage.gaussian_filter(white, spatial, mode="wrap")
  # The kernel's L2 norm gives the smoothed field's standard deviation for unit white noise.
  delta = np.zeros((33, 33), np.float32)
  delta[16, 16] = 1.0
  kernel_norm = float(np.sqrt(np.sum(ndimage.gaussian_filter(delta, correlation_px, mode="wrap") ** 2)))
  return smooth * np.float32(sigma_hu / kernel_norm)


def generate_slice(config: PhantomConfig, seed: int, index: int, slice_index: int,
                   params: dict[str, Any] | None = None) -> dict[str, np.ndarray]:
  """One slice of case (seed, index): scan_hu (T, H, W) with noise if configured, maps, masks."""
  if not 0 <= slice_index < config.num_slices:
    raise InputError("slice_index", f"{slice_index} outside 0..{config.num_slices - 1}")
  params = case_parameters(config, seed, index) if params is None else params
  out = slice_phantom(config, params, slice_index)
  if config.noise and params["noise_sigma_hu"] > 0:
    rng = _rng(seed, index, _STREAM_NOISE, slice_index)
    out["scan_hu"] += correlated_noise(rng, out["scan_hu"].shape, params["noise_sigma_hu"],
                                       params["noise_correlation_mm"] / config.pixel_mm)
  return out


def generate_case(config: PhantomConfig, seed: int, index: int) -> Case:
  """Case (seed, index) of the phantom: all slices, exact maps and masks, AIF and parameters."""
  params = case_parameters(config, seed, index)
  slices = [generate_slice(config, seed, index, s, params) for s in range(config.num_slices)]
  stack = lambda key: np.stack([sl[key] for sl in slices])
  times = frame_times_s(config, params)
  return Case(
      case_id=f"phantom_s{seed}_i{index}",
      scan_hu=stack("scan_hu"), frame_times_s=times,
      maps={k: stack(k) for k in ("tmax", "cbv", "cbf", "mtt", "delay")},
      masks={k: stack(k) for k in ("brain", "vessel", "core", "penumbra")},
      spacing_mm=(config.slice_thickness_mm, config.pixel_mm, config.pixel_mm),
      aif_hu=arterial_curve(times, params).astype(np.float32),
      labels=stack("labels"), params=params, source="phantom")
