"""Reading and writing CTP cases as NIfTI files: ISLES 2018 as distributed, or a folder per case.

Axis conventions. A 4D NIfTI scan ``data[x, y, z, t]`` becomes ``Case.scan_hu[z, t, x, y]``, shape
``(S, T, H, W)`` = ``(Z, T, X, Y)``: H is the NIfTI's first axis, W its second, S its third (axial
slices). A 3D map or mask ``data[x, y, z]`` becomes ``map[z, x, y]``, shape ``(S, H, W)``. The voxel
spacing is stored in our order as ``Case.spacing_mm = (dz, dx, dy)`` in millimetres, and
``Case.affine`` is the scan's 4x4 voxel-to-world matrix in NIfTI voxel order ``(x, y, z)``.

Units. Scans in Hounsfield units (read as float32 with the file's scl_slope / scl_inter applied);
maps in the units of :data:`pkd_jax.data.case.MAP_UNITS` (Tmax and MTT in s, CBV in ml/100 g, CBF in
ml/100 g/min; real data carries whatever scale its software wrote); frame times in seconds, from
pixdim[4] with the header's time unit (s, ms or us) honoured.

Layouts (:data:`LAYOUTS`). A layout is a set of glob patterns, one per *role*, relative to a case
folder; a case folder is any subfolder of the data root holding a file that matches the ``scan``
pattern. Roles: ``scan`` (the 4D CTP, required), ``ct`` (a non-contrast CT: located, not read),
maps ``tmax``, ``cbv``, ``cbf``, ``mtt`` (into ``Case.maps``) and ``core`` (the core lesion mask,
into ``Case.masks['core']`` as bool). Only files ending in ``.nii`` or ``.nii.gz`` match.

* ``isles2018``: ISLES 2018 exactly as distributed::

      root/case_N/SMIR.Brain.XX.O.CT_4DPWI.<id>/SMIR.Brain.XX.O.CT_4DPWI.<id>.nii   (4D scan)
      root/case_N/SMIR.Brain.XX.O.CT.<id>/...        (non-contrast CT, optional)
      root/case_N/SMIR.Brain.XX.O.CT_CBF.<id>/...    CT_CBV, CT_MTT, CT_Tmax (maps), OT (core)

  (``.nii.gz`` accepted too). User patterns, if given, override or add to these.
* ``folder``: no preset; the user gives the patterns, e.g.
  ``{"scan": "*_ctp.nii.gz", "tmax": "maps/**/tmax.nii*"}`` (recursive globs allowed).

Case folders are sorted "naturally" (``case_2`` before ``case_10``); folders starting with ``.``
(such as an interrupted write's temporary folder) are skipped.

Writing (:func:`write_isles_case`, :func:`write_isles_dataset`) stores a :class:`Case` in the ISLES
2018 layout as NIfTI-1 ``.nii`` files that :func:`read_case` reads back: the scan as unscaled int16
(HU rounded), maps as int16 with an automatic scl_slope / scl_inter, the core mask as uint8, and
frame 0 as the non-contrast CT. Each case is written under a temporary name and renamed into place.

Command line: ``python -m pkd_jax.tools.validate ROOT [--layout isles2018|folder] [--pattern
ROLE=GLOB ...] [--no-maps] [--frame-interval S]`` reads and validates every case and prints a
summary; bad input ends with ``error: <path>: <problem>`` and exit status 2.
"""

from __future__ import annotations

import dataclasses
import os
import pathlib
import re
import warnings
from typing import Iterable, Mapping, Sequence

import nibabel as nib
import numpy as np
from tqdm import tqdm

from pkd_jax import fileio
from pkd_jax.data.case import TARGET_MAPS, Case
from pkd_jax.errors import InputError

# Every role a layout can name; see the module docstring.
ROLES = ("scan", "ct", "tmax", "cbv", "cbf", "mtt", "core")
MAP_ROLES = ("tmax", "cbv", "cbf", "mtt")  # role -> Case.maps[role]
MASK_ROLES = ("core",)  # role -> Case.masks[role], bool
# The maps a case must have when read with require_maps=True (the network's targets).
REQUIRED_MAPS = TARGET_MAPS
NIFTI_SUFFIXES = (".nii", ".nii.gz")


@dataclasses.dataclass(frozen=True)
class Layout:
  """A named set of preset glob patterns (role -> glob, relative to a case folder)."""

  name: str
  description: str
  patterns: Mapping[str, str]


# ISLES 2018 modality names per role, in the order used for file ids.
ISLES_MODALITIES = {
    "ct": "CT",
    "scan": "CT_4DPWI",
    "cbf": "CT_CBF",
    "cbv": "CT_CBV",
    "mtt": "CT_MTT",
    "tmax": "CT_Tmax",
    "core": "OT",
}
# Written files get ids ISLES_FILE_ID_BASE + 10 * case_number + (the modality's position above).
ISLES_FILE_ID_BASE = 300000


def _isles_glob(modality: str) -> str:
  # The literal ".O.<modality>." keeps "CT" from matching "CT_4DPWI" or "CT_CBF".
  stem = f"SMIR.Brain.*.O.{modality}.*"
  return f"{stem}/{stem}.nii*"


def isles_name(role: str, file_id: int) -> str:
  """The ISLES 2018 folder and file stem of one modality, e.g. 'SMIR.Brain.XX.O.CT_4DPWI.300011'."""
  return f"SMIR.Brain.XX.O.{ISLES_MODALITIES[role]}.{file_id}"


def isles_file_id(case_number: int, role: str) -> int:
  """A deterministic file id, distinct for every (case number >= 0, role)."""
  return ISLES_FILE_ID_BASE + 10 * case_number + list(ISLES_MODALITIES).index(role)


LAYOUTS: dict[str, Layout] = {
    "isles2018": Layout(
        "isles2018", "ISLES 2018 as distributed (case_N/SMIR.Brain.XX.O.<modality>.<id>/...)",
        {role: _isles_glob(modality) for role, modality in ISLES_MODALITIES.items()}),
    "folder": Layout(
        "folder", "one folder per case, files found by user patterns (role=glob)", {}),
}


# ----------------------------------------------------------------------------------------------
# Finding files.


def resolve_patterns(layout: str = "isles2018",
                     patterns: Mapping[str, str] | None = None) -> dict[str, str]:
  """The layout's preset patterns updated with the user's; checks layout, roles and the scan's."""
  if layout not in LAYOUTS:
    raise InputError("layout", f"unknown layout {layout!r}; valid layouts: {', '.join(LAYOUTS)}")
  resolved = dict(LAYOUTS[layout].patterns)
  for role, pattern in (patterns or {}).items():
    if role not in ROLES:
      raise InputError("patterns", f"unknown role {role!r}; valid roles: {', '.join(ROLES)}")
    if not pattern or os.path.isabs(pattern):
      raise InputError("patterns", f"the pattern for {role!r} must be a non-empty glob relative "
                       f"to the case folder, got {pattern!r}")
    resolved[role] = pattern
  if "scan" not in resolved:
    raise InputError("patterns", f"layout {layout!r} needs a pattern for the role 'scan' (the 4D "
                     "CTP), e.g. scan='*_ctp.nii.gz'")
  return resolved


def parse_patterns(items: Sequence[str]) -> dict[str, str]:
  """Parses command-line ``ROLE=GLOB`` items into a role -> glob dict."""
  patterns = {}
  for item in items:
    role, sep, pattern = item.partition("=")
    role = role.strip()
    if not sep or not role:
      raise InputError("--pattern", f"expected ROLE=GLOB, got {item!r}")
    if role in patterns:
      raise InputError("--pattern", f"role {role!r} given twice")
    patterns[role] = pattern.strip()
  return patterns


def _is_nifti(path: pathlib.Path) -> bool:
  return path.name.endswith(NIFTI_SUFFIXES)


def _matches(case_dir: pathlib.Path, pattern: str) -> list[pathlib.Path]:
  return sorted(p for p in case_dir.glob(pattern) if _is_nifti(p) and p.is_file())


def _natural_key(path: pathlib.Path):
  return [int(t) if t.isdigit() else t.lower() for t in re.split(r"(\d+)", path.name)]


def _find_role(case_dir: pathlib.Path, role: str, pattern: str,
               required: bool) -> pathlib.Path | None:
  """The one file of a role in a case folder; None if absent and not required."""
  found = _matches(case_dir, pattern)
  if len(found) > 1:
    names = ", ".join(str(p.relative_to(case_dir)) for p in found)
    raise InputError(case_dir, f"more than one file ({len(found)}) matches the {role} pattern "
                     f"{pattern!r}: {names}")
  if not found:
    if required:
      what = "scan" if role == "scan" else f"{role} map"
      raise InputError(case_dir, f"missing {what}: no NIfTI file (.nii or .nii.gz) matches "
                       f"the {role} pattern {pattern!r}")
    return None
  return found[0]


def _check_case_dir(case_dir: os.PathLike | str) -> pathlib.Path:
  case_dir = pathlib.Path(case_dir)
  if not case_dir.exists():
    raise InputError(case_dir, "case folder does not exist")
  if not case_dir.is_dir():
    raise InputError(case_dir, "is not a folder (expected a case folder)")
  return case_dir


def find_cases(root: os.PathLike | str, layout: str = "isles2018",
               patterns: Mapping[str, str] | None = None) -> list[pathlib.Path]:
  """The case folders under root: its subfolders holding a file that matches the scan pattern.

  Args:
    root: the data folder (for ISLES 2018, the folder holding case_1, case_2, ...).
    layout: a key of :data:`LAYOUTS`.
    patterns: role -> glob relative to a case folder, overriding or adding to the layout's.

  Returns:
    The case folders, sorted naturally by name (case_2 before case_10).

  Raises:
    InputError: unknown layout or role; root missing; no case found.
  """
  resolved = resolve_patterns(layout, patterns)
  root = pathlib.Path(root)
  if not root.exists():
    raise InputError(root, "data folder does not exist")
  if not root.is_dir():
    raise InputError(root, "is not a folder (expected the data folder holding one folder per case)")
  folders = [d for d in root.iterdir() if d.is_dir() and not d.name.startswith(".")]
  cases = [d for d in folders if _matches(d, resolved["scan"])]
  if not cases:
    raise InputError(root, f"no case found: no subfolder holds a file matching the scan pattern "
                     f"{resolved['scan']!r} (layout {layout!r})")
  return sorted(cases, key=_natural_key)


# ----------------------------------------------------------------------------------------------
# Reading.


def _one_line(error: Exception) -> str:
  return " ".join(str(error).split()) or type(error).__name__


def _load(path: pathlib.Path):
  """The NIfTI image at path (header read, data not yet)."""
  try:
    img = nib.load(str(path), mmap=False)
  except Exception as e:  # nibabel raises many kinds on bad files pylint: disable=broad-except
    raise InputError(path, f"cannot read NIfTI (truncated or corrupt): {_one_line(e)}") from e
  if not isinstance(img, (nib.Nifti1Image, nib.Nifti2Image)):
    raise InputError(path, f"not a NIfTI-1/2 image ({type(img).__name__})")
  return img


def _read_data(img, path: pathlib.Path) -> np.ndarray:
  """The voxels as float32 with scaling applied; checks that all are finite."""
  try:
    data = np.asarray(img.get_fdata(dtype=np.float32))
  except Exception as e:  # EOFError, zlib.error, ValueError, OSError... pylint: disable=broad-except
    raise InputError(path, f"cannot read NIfTI (truncated or corrupt): {_one_line(e)}") from e
  finally:
    img.uncache()
  finite = np.isfinite(data)
  if not finite.all():
    num_nan = int(np.isnan(data).sum())
    num_inf = int(data.size - finite.sum()) - num_nan
    raise InputError(path, f"{num_nan + num_inf} of {data.size} voxels are not finite "
                     f"({num_nan} NaN, {num_inf} Inf)")
  return data


def _tidy(value, dtype) -> float:
  """A header float as the shortest decimal that round-trips its storage type (1.3, not 1.29999)."""
  return float(np.format_float_positional(np.dtype(dtype).type(value), unique=True))


_TIME_DIVISORS = {"sec": 1.0, "msec": 1e3, "usec": 1e6, "unknown": 1.0}
_SPACE_FACTORS = {"mm": 1.0, "meter": 1e3, "micron": 1e-3, "unknown": 1.0}


def _frame_interval(img, path: pathlib.Path, frame_interval_s: float | None) -> tuple[float, str]:
  """(seconds per frame, where it came from: 'argument', 'header' or 'default')."""
  if frame_interval_s is not None:
    if not (np.isfinite(frame_interval_s) and frame_interval_s > 0):
      raise InputError("frame_interval_s", f"must be a positive number, got {frame_interval_s}")
    return float(frame_interval_s), "argument"
  hdr = img.header
  raw = hdr["pixdim"][4]
  time_unit = hdr.get_xyzt_units()[1]
  if time_unit in _TIME_DIVISORS and np.isfinite(raw) and raw > 0:
    return _tidy(raw, hdr["pixdim"].dtype) / _TIME_DIVISORS[time_unit], "header"
  warnings.warn(f"{path}: no usable frame interval in the header (pixdim[4] = {float(raw)}, time "
                f"unit {time_unit!r}); assuming 1.0 s per frame (pass frame_interval_s to set it)",
                stacklevel=3)
  return 1.0, "default"


def _read_4d(path: pathlib.Path, frame_interval_s: float | None) -> dict:
  """The scan at path as Case fields: scan_hu (Z, T, X, Y), frame times, spacing, affine."""
  img = _load(path)
  shape = tuple(int(n) for n in img.shape)
  while len(shape) > 4 and shape[-1] == 1:  # (x, y, z, t, 1, ...) from some converters
    shape = shape[:-1]
  if len(shape) != 4:
    raise InputError(path, f"is {len(shape)}D (shape {tuple(img.shape)}), expected a 4D scan "
                     "(x, y, z, t)")
  if shape[3] < 2:
    raise InputError(path, f"has {shape[3]} frame(s) (shape {shape}); need at least 2 frames")
  dt, dt_source = _frame_interval(img, path, frame_interval_s)
  hdr = img.header
  space = _SPACE_FACTORS.get(hdr.get_xyzt_units()[0], 1.0)
  dx, dy, dz = (_tidy(z, hdr["pixdim"].dtype) * space for z in hdr["pixdim"][1:4])
  affine = np.asarray(img.affine, dtype=np.float64)
  data = _read_data(img, path).reshape(shape)
  return dict(scan_hu=np.ascontiguousarray(data.transpose(2, 3, 0, 1)),
              frame_times_s=np.arange(shape[3], dtype=np.float64) * dt,
              spacing_mm=(dz, dx, dy), affine=affine, xyz=shape[:3], dt_source=dt_source)


def _read_3d(path: pathlib.Path, xyz: tuple[int, int, int], scan_path: pathlib.Path) -> np.ndarray:
  """A 3D map or mask at path, checked against the scan's (X, Y, Z), as (Z, X, Y) float32."""
  img = _load(path)
  shape = tuple(int(n) for n in img.shape)
  while len(shape) > 3 and shape[-1] == 1:  # (x, y, z, 1): a 3D map stored as 4D
    shape = shape[:-1]
  if len(shape) != 3:
    raise InputError(path, f"is {len(shape)}D (shape {tuple(img.shape)}), expected a 3D map "
                     "(x, y, z)")
  if shape != tuple(xyz):
    raise InputError(path, f"shape {shape} does not match the scan's (x, y, z) shape "
                     f"{tuple(xyz)} ({scan_path.name})")
  data = _read_data(img, path).reshape(shape)
  return np.ascontiguousarray(data.transpose(2, 0, 1))


def read_case(case_dir: os.PathLike | str, layout: str = "isles2018",
              patterns: Mapping[str, str] | None = None, require_maps: bool = True,
              frame_interval_s: float | None = None) -> Case:
  """Reads and validates one case folder.

  Args:
    case_dir: the case folder (e.g. root/case_3).
    layout: a key of :data:`LAYOUTS`.
    patterns: role -> glob relative to case_dir, overriding or adding to the layout's.
    require_maps: if True, the maps tmax, cbv and cbf must be present; mtt and core are optional.
    frame_interval_s: seconds per frame; if given, overrides the header's pixdim[4]. If not given
      and pixdim[4] is not positive, 1.0 s is assumed with a warning.

  Returns:
    A Case with case_id = the folder's name, scan_hu (S, T, H, W) float32 HU (from data[x, y, z, t]
    as [z, t, x, y]), frame_times_s (T,) in s from 0, maps (S, H, W) float32, masks['core'] (S, H, W)
    bool, spacing_mm = (dz, dx, dy), affine = the scan's voxel-to-world, source = the folder, and
    params['files'] (role -> path) and params['frame_interval_source'].

  Raises:
    InputError: naming the folder or file: missing folder, missing scan or required map, several
      files for one role, wrong dimensionality, fewer than 2 frames, unreadable (truncated or
      corrupt) file, NaN/Inf voxels, a map whose shape differs from the scan's.
  """
  resolved = resolve_patterns(layout, patterns)
  case_dir = _check_case_dir(case_dir)
  if require_maps:
    missing = [role for role in REQUIRED_MAPS if role not in resolved]
    if missing:
      raise InputError("patterns", f"require_maps needs patterns for the maps {', '.join(missing)}"
                       f"; layout {layout!r} has none for them")
  files = {}
  for role, pattern in resolved.items():
    required = role == "scan" or (require_maps and role in REQUIRED_MAPS)
    path = _find_role(case_dir, role, pattern, required)
    if path is not None:
      files[role] = path
  scan = _read_4d(files["scan"], frame_interval_s)
  maps, masks = {}, {}
  for role in MAP_ROLES:
    if role in files:
      maps[role] = _read_3d(files[role], scan["xyz"], files["scan"])
  for role in MASK_ROLES:
    if role in files:
      masks[role] = _read_3d(files[role], scan["xyz"], files["scan"]) > 0.5
  params = dict(layout=layout, files={role: str(p) for role, p in files.items()},
                frame_interval_source=scan["dt_source"])
  return Case(case_id=case_dir.name, scan_hu=scan["scan_hu"], frame_times_s=scan["frame_times_s"],
              maps=maps, masks=masks, spacing_mm=scan["spacing_mm"], affine=scan["affine"],
              params=params, source=str(case_dir))


def scan_shape(case_dir: os.PathLike | str, layout: str = "isles2018",
               patterns: Mapping[str, str] | None = None) -> tuple[pathlib.Path, tuple[int, ...]]:
  """(path, (x, y, z, t)) of a case's 4D scan, from its header alone (no voxels read)."""
  resolved = resolve_patterns(layout, patterns)
  case_dir = _check_case_dir(case_dir)
  path = _find_role(case_dir, "scan", resolved["scan"], required=True)
  shape = tuple(int(n) for n in _load(path).shape)
  while len(shape) > 4 and shape[-1] == 1:
    shape = shape[:-1]
  if len(shape) != 4:
    raise InputError(path, f"is {len(shape)}D (shape {shape}), expected a 4D scan (x, y, z, t)")
  return path, shape


def read_scan(path: os.PathLike | str, frame_interval_s: float | None = None,
              layout: str = "isles2018", patterns: Mapping[str, str] | None = None) -> Case:
  """Reads a scan for prediction: one 4D NIfTI file, or a case folder (maps read if present).

  A file gives a Case with no maps, case_id = the file name without .nii/.nii.gz and the same
  conventions as :func:`read_case`; a folder is read by read_case with require_maps=False.
  """
  path = pathlib.Path(path)
  if path.is_dir():
    return read_case(path, layout, patterns, require_maps=False, frame_interval_s=frame_interval_s)
  if not path.exists():
    raise InputError(path, "does not exist (expected a 4D NIfTI file or a case folder)")
  if not _is_nifti(path):
    raise InputError(path, "is not a NIfTI file (.nii or .nii.gz) or a case folder")
  scan = _read_4d(path, frame_interval_s)
  case_id = path.name[:-len(".nii.gz")] if path.name.endswith(".nii.gz") else path.stem
  return Case(case_id=case_id, scan_hu=scan["scan_hu"], frame_times_s=scan["frame_times_s"],
              spacing_mm=scan["spacing_mm"], affine=scan["affine"],
              params=dict(files={"scan": str(path)}, frame_interval_source=scan["dt_source"]),
              source=str(path))


# ----------------------------------------------------------------------------------------------
# Writing.


def default_affine(shape_xyz: Sequence[int], spacing_xyz: Sequence[float]) -> np.ndarray:
  """diag(dx, dy, dz, 1) with the volume's centre at the world origin (mm, NIfTI voxel order)."""
  affine = np.diag([*map(float, spacing_xyz), 1.0])
  affine[:3, 3] = -np.asarray(spacing_xyz, float) * (np.asarray(shape_xyz, float) - 1) / 2
  return affine


def _check_writable_case(case: Case) -> None:
  where = f"case {case.case_id}"
  scan = np.asarray(case.scan_hu)
  if scan.ndim != 4:
    raise InputError(where, f"scan_hu must be (S, T, H, W), got shape {scan.shape}")
  num_slices, num_frames, height, width = scan.shape
  if num_frames < 2:
    raise InputError(where, f"has {num_frames} frame(s); need at least 2 frames")
  if len(case.frame_times_s) != num_frames:
    raise InputError(where, f"{len(case.frame_times_s)} frame times for {num_frames} frames")
  if not case.frame_interval_s > 0:
    raise InputError(where, f"frame times must increase, got {case.frame_times_s}")
  if not np.isfinite(scan).all():
    raise InputError(where, "scan_hu has NaN or Inf voxels")
  for kind, arrays in (("map", case.maps), ("mask", case.masks)):
    for name, array in arrays.items():
      if np.shape(array) != (num_slices, height, width):
        raise InputError(where, f"{kind} {name!r} has shape {np.shape(array)}, expected (S, H, W) "
                         f"= {(num_slices, height, width)}")
      if kind == "map" and not np.isfinite(array).all():
        raise InputError(where, f"map {name!r} has NaN or Inf voxels")
  steps = np.diff(np.asarray(case.frame_times_s, np.float64))
  if np.abs(steps - case.frame_interval_s).max() > 1e-3 * case.frame_interval_s:
    warnings.warn(f"case {case.case_id}: frame times are not evenly spaced; NIfTI stores one "
                  f"interval, writing the mean {case.frame_interval_s:.4g} s", stacklevel=3)


def _save(data: np.ndarray, affine: np.ndarray, zooms: Sequence[float], dtype, path: pathlib.Path,
          descrip: str) -> None:
  """Saves a NIfTI-1 file; integer data unscaled, float data scaled into dtype by nibabel."""
  img = nib.Nifti1Image(data, affine)
  img.set_qform(affine, code=1)
  img.set_sform(affine, code=1)
  hdr = img.header
  hdr.set_data_dtype(dtype)
  hdr.set_xyzt_units("mm", "sec")
  hdr.set_zooms(tuple(float(z) for z in zooms))
  hdr["descrip"] = descrip.encode("ascii", "replace")[:79]
  nib.save(img, str(path))


def _write_case_files(case: Case, folder: pathlib.Path, case_number: int) -> None:
  num_slices, _, height, width = case.scan_hu.shape
  dz, dx, dy = (float(s) for s in case.spacing_mm)
  if case.affine is not None:
    affine = np.asarray(case.affine, np.float64)
  else:
    affine = default_affine((height, width, num_slices), (dx, dy, dz))
  dt = case.frame_interval_s
  descrip = f"pkd_jax {case.case_id}"
  scan = np.clip(np.rint(case.scan_hu), -32768, 32767).astype(np.int16)
  volumes = {  # role -> (NIfTI-ordered data, dtype)
      "ct": (scan[:, 0].transpose(1, 2, 0), np.int16),
      "scan": (scan.transpose(2, 3, 0, 1), np.int16),
  }
  for role in MAP_ROLES:
    if role in case.maps:
      volumes[role] = (np.asarray(case.maps[role], np.float32).transpose(1, 2, 0), np.int16)
  if "core" in case.masks:
    volumes["core"] = (np.asarray(case.masks["core"]).astype(np.uint8).transpose(1, 2, 0),
                       np.uint8)
  for role, (data, dtype) in volumes.items():
    name = isles_name(role, isles_file_id(case_number, role))
    (folder / name).mkdir()
    zooms = (dx, dy, dz, dt) if data.ndim == 4 else (dx, dy, dz)
    _save(data, affine, zooms, dtype, folder / name / f"{name}.nii", descrip)


def write_isles_case(case: Case, root: os.PathLike | str, case_number: int,
                     overwrite: bool = False) -> pathlib.Path:
  """Writes one case as root/case_<case_number> in the ISLES 2018 layout, atomically.

  Files (NIfTI-1 .nii, data[x, y, z(, t)] = case array[z, (t,) x, y]): CT_4DPWI, the scan in HU
  rounded to int16 (clipped to its range), unscaled; CT, frame 0 of it; CT_Tmax, CT_CBV, CT_CBF,
  CT_MTT for each map in case.maps, int16 with nibabel's scl_slope / scl_inter (error at most half
  a slope); OT, masks['core'] as uint8 0/1. pixdim = (dx, dy, dz, frame interval) in mm and s;
  the affine is case.affine, or diag(dx, dy, dz) centred on the origin when None. Other maps and
  masks, aif_hu, labels and params are not stored.

  The case is written to a temporary folder inside root and renamed to case_<N>; on failure the
  temporary folder is removed (and an overwritten case left as it was).

  Returns:
    The case folder.

  Raises:
    InputError: the case folder exists and overwrite is False; root cannot be created or written;
      writing fails (OSError); the case's arrays are malformed.
  """
  if int(case_number) != case_number or case_number < 0:
    raise InputError("case_number", f"must be a non-negative integer, got {case_number!r}")
  _check_writable_case(case)
  root = pathlib.Path(root)
  try:
    root.mkdir(parents=True, exist_ok=True)
  except OSError as e:
    raise InputError(root, f"cannot create the output folder: {e.strerror or e}") from e
  final = root / f"case_{case_number}"
  if final.exists() and not overwrite:
    raise InputError(final, "case folder already exists (pass overwrite=True to replace it)")
  with fileio.replace_folder(final, "the case") as tmp:
    _write_case_files(case, tmp, case_number)
  return final


def write_isles_dataset(cases: Iterable[Case], root: os.PathLike | str, start: int = 1,
                        overwrite: bool = False) -> list[pathlib.Path]:
  """Writes cases as root/case_<start>, root/case_<start + 1>, ... (see write_isles_case)."""
  paths = []
  for k, case in enumerate(tqdm(cases, desc=f"writing {root}", unit="case")):
    paths.append(write_isles_case(case, root, start + k, overwrite=overwrite))
  return paths
