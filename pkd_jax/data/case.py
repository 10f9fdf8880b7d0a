"""The in-memory form of one CTP case, shared by the phantom and the NIfTI readers.

Array layout (our convention, used everywhere in the package):

* ``scan_hu``: ``(S, T, H, W)`` float32, attenuation in Hounsfield units; S axial slices, T frames.
* maps: ``(S, H, W)`` float32 in physical units (see :data:`MAP_UNITS`).
* masks: ``(S, H, W)`` bool.

A NIfTI volume ``data[x, y, z, t]`` maps to ``scan_hu[z, t, x, y]`` (H is the NIfTI's first axis,
W its second), and a 3D map ``data[x, y, z]`` to ``map[z, x, y]``; see :mod:`pkd_jax.data.nifti`.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np

# The perfusion parameter maps, with their units.
MAP_UNITS = {
    "tmax": "s",  # time to maximum of the residue function
    "cbv": "ml/100 g",  # cerebral blood volume
    "cbf": "ml/100 g/min",  # cerebral blood flow
    "mtt": "s",  # mean transit time, CBV / CBF * 60
    "delay": "s",  # bolus arrival delay relative to the AIF (phantom only)
}
# The three maps the network predicts, in the paper's order.
TARGET_MAPS = ("tmax", "cbv", "cbf")
# RAPID's hypoperfusion threshold (Tmax > 6 s; Lansberg et al., DEFUSE 2).
TMAX_THRESHOLD_S = 6.0
# Indicator-dilution constants, C_t = (rho / k_H) CBF (C_a * R): the phantom's forward model and
# the deconvolution's inverse share them (Ostergaard et al. 1996; Fieselmann et al. 2011).
RHO_G_PER_ML = 1.04  # brain tissue density
K_H = 0.73  # hematocrit correction, (1 - Hct_large) / (1 - Hct_small)


@dataclasses.dataclass
class Case:
  """One CTP case: the 4D scan, its frame times and, when known, maps and masks."""

  case_id: str  # e.g. "case_3" or "phantom_s0_i17"
  scan_hu: np.ndarray  # (S, T, H, W) float32, HU
  frame_times_s: np.ndarray  # (T,) float64, seconds from the first frame, increasing
  maps: dict[str, np.ndarray] = dataclasses.field(default_factory=dict)  # name -> (S, H, W)
  masks: dict[str, np.ndarray] = dataclasses.field(default_factory=dict)  # name -> (S, H, W) bool
  spacing_mm: tuple[float, float, float] = (5.0, 1.0, 1.0)  # (slice, row, column) spacing
  affine: np.ndarray | None = None  # 4x4 voxel-to-world of the source NIfTI, if any
  aif_hu: np.ndarray | None = None  # (T,) arterial input function (enhancement, HU), if known
  labels: np.ndarray | None = None  # (S, H, W) uint8 tissue labels, if known (phantom.LABELS)
  params: dict[str, Any] = dataclasses.field(default_factory=dict)  # generator/reader metadata
  source: str = ""  # where the case came from (folder, or "phantom")

  @property
  def num_slices(self) -> int:
    return self.scan_hu.shape[0]

  @property
  def num_frames(self) -> int:
    return self.scan_hu.shape[1]

  @property
  def frame_interval_s(self) -> float:
    """Mean frame interval in seconds."""
    t = self.frame_times_s
    return float((t[-1] - t[0]) / max(len(t) - 1, 1))
