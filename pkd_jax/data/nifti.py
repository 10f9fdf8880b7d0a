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
folder; a case folder is any subfolder of the data root holding a file that matches one of the
patterns. Roles: ``scan`` (the 4D CTP, required), ``ct`` (a non-contrast CT: located, not read),
maps ``tmax``, ``cbv``, ``cbf``, ``mtt`` (into ``Case.maps``) and ``core`` (the core lesion mask,
into ``Case.masks['core']`` as bool). Only files ending in ``.nii`` or ``.nii.gz`` match. A case
folder without a required file (its scan; for training, the tmax, cbv and cbf maps too) is an
error naming it and what it lacks, never skipped, unless it is excluded by name
(:func:`find_cases`' ``exclude``).

* ``isles2018``: ISLES 2018 exactly as distributed::

      root/case_N/SMIR.Brain.XX.O.CT_4DPWI.<id>/SMIR.Brain.XX.O.CT_4DPWI.<id>.nii   (4D scan)
      root/case_N/SMIR.Brain.XX.O.CT.<id>/...        (non-contrast CT, optional)
      root/case_N/SMIR.Brain.XX.O.CT_CBF.<id>/...    CT_CBV, CT_MTT, CT_Tmax (maps), OT (core)

  (``.nii.gz`` accepted too). User patterns, if given, override or add to these.
* ``folder``: no preset; the user gives the patterns, e.g.
  ``{"scan": "*_ctp.nii.gz", "tmax": "maps/**/tmax.nii*"}`` (recursive globs allowed).

Case folders are sorted "naturally" (``case_2`` before ``case_10``); folders starting with ``.``
(such as an interrupted write's temporary folder) are skipped. A root without case folders of its
own but with ``TRAINING/`` and ``TESTING/`` below it (ISLES 2018 as distributed; :data:`SPLITS`) is
read in one of them: ``TRAINING`` unless ``split="testing"`` is asked for; :class:`CaseFolders`
says which was read.

Before any voxel is read, the file must be able to hold the voxels its header claims (a header
claiming 30000 x 30000 x 1 x 40 voxels over a few hundred bytes is an error, not an attempt to
allocate 72 GB): for ``.nii``, vox_offset + voxels x bytes per voxel must not exceed the file's
size; for ``.nii.gz``, the gzip trailer's uncompressed size (confirmed by counting when it falls
short, as with several gzip members) where the claim is below 4 GiB, and deflate's largest
expansion (about 1032 to 1) above that. A scan without a usable frame interval is read at 1.0 s
per frame with one ``warning: <file>: ...`` line on stderr (once per file and process) whose
advice the caller may give (``interval_advice``).

Writing (:func:`write_isles_case`, :func:`write_isles_dataset`) stores a :class:`Case` in the ISLES
2018 layout as NIfTI-1 ``.nii`` files that :func:`read_case` reads back: the scan as unscaled int16
(HU rounded), maps as int16 with an automatic scl_slope / scl_inter, the core mask as uint8, and
frame 0 as the non-contrast CT. Each case is written under a temporary name and renamed into place.

Command line: ``python -m pkd_jax.tools.validate ROOT [--layout isles2018|folder] [--pattern
ROLE=GLOB ...] [--no-maps] [--frame-interval S] [--split training|testing] [--exclude CASE ...]``
reads and validates every case, prints one line per case (``error: <path>: <problem>`` for a bad
one) and a summary, and exits with status 2 if any case is invalid.
"""

from __future__ import annotations

import collections.abc
import dataclasses
import gzip
import os
import pathlib
import re
import sys
import warnings
import zlib
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


def _role_text(role: str) -> str:
  return "scan" if role == "scan" else f"{role} map"


def _required_roles(resolved: Mapping[str, str], layout: str,
                    require_maps: bool) -> tuple[str, ...]:
  """The roles a case folder must hold a file for: the scan, and with require_maps the maps."""
  if not require_maps:
    return ("scan",)
  missing = [role for role in REQUIRED_MAPS if role not in resolved]
  if missing:
    raise InputError("patterns", f"require_maps needs patterns for the maps {', '.join(missing)}"
                     f"; layout {layout!r} has none for them")
  return ("scan", *REQUIRED_MAPS)


def _missing_roles(case_dir: pathlib.Path, resolved: Mapping[str, str],
                   roles: Sequence[str]) -> list[str]:
  return [role for role in roles if not _matches(case_dir, resolved[role])]


def _missing_text(missing: Sequence[str], resolved: Mapping[str, str]) -> str:
  """'missing scan, tmax map: no NIfTI file (.nii or .nii.gz) matches the scan pattern ...'."""
  patterns = " or ".join(f"the {role} pattern {resolved[role]!r}" for role in missing)
  return (f"missing {', '.join(_role_text(role) for role in missing)}: no NIfTI file (.nii or "
          f".nii.gz) matches {patterns}")


def _find_role(case_dir: pathlib.Path, role: str, pattern: str) -> pathlib.Path | None:
  """The one file of a role in a case folder; None if absent."""
  found = _matches(case_dir, pattern)
  if len(found) > 1:
    names = ", ".join(str(p.relative_to(case_dir)) for p in found)
    raise InputError(case_dir, f"more than one file ({len(found)}) matches the {role} pattern "
                     f"{pattern!r}: {names}")
  return found[0] if found else None


def _check_case_dir(case_dir: os.PathLike | str) -> pathlib.Path:
  case_dir = pathlib.Path(case_dir)
  if not case_dir.exists():
    raise InputError(case_dir, "case folder does not exist")
  if not case_dir.is_dir():
    raise InputError(case_dir, "is not a folder (expected a case folder)")
  return case_dir


# Subfolders of a data root that hold its case folders, as ISLES 2018 is distributed (split ->
# folder name, matched regardless of case). Read when the root has no case folders of its own.
SPLITS = {"training": "TRAINING", "testing": "TESTING"}
DEFAULT_SPLIT = "training"  # read when both are there and no split is asked for


@dataclasses.dataclass(frozen=True)
class CaseFolders(collections.abc.Sequence):
  """What :func:`find_cases` found: a sequence of case folders, and where they came from.

  Attributes:
    folders: the case folders, sorted naturally (indexing and iterating the object gives these).
    folder: the folder holding them: the root, or its TRAINING or TESTING subfolder.
    split: "training" or "testing" when read from such a subfolder of the root, else None.
    splits: the splits (keys of :data:`SPLITS`) the root has a subfolder for; () when its case
      folders sit directly in it.
    excluded: the case folders left out by name (find_cases' ``exclude``).
  """

  folders: tuple[pathlib.Path, ...]
  folder: pathlib.Path
  split: str | None = None
  splits: tuple[str, ...] = ()
  excluded: tuple[pathlib.Path, ...] = ()

  def __getitem__(self, index):
    return self.folders[index]

  def __len__(self) -> int:
    return len(self.folders)


def _subfolders(folder: pathlib.Path) -> list[pathlib.Path]:
  return [d for d in folder.iterdir() if d.is_dir() and not d.name.startswith(".")]


def _case_folders(folder: pathlib.Path, resolved: Mapping[str, str],
                  skip: Sequence[str] = ()) -> list[pathlib.Path]:
  """The subfolders of folder (but those named in skip, any case) holding a file that matches
  one of the patterns."""
  skip = {name.lower() for name in skip}
  return [d for d in _subfolders(folder) if d.name.lower() not in skip and
          any(_matches(d, p) for p in resolved.values())]


def _split_folder(root: pathlib.Path, split: str | None, has_cases: bool
                  ) -> tuple[pathlib.Path, str | None, tuple[str, ...]]:
  """(folder holding the case folders, the split read or None, the splits the root has)."""
  if split is not None and split not in SPLITS:
    raise InputError("split", f"unknown split {split!r}; valid splits: {', '.join(SPLITS)}")
  named = {d.name.lower(): d for d in _subfolders(root)}
  present = tuple(s for s, name in SPLITS.items() if name.lower() in named)
  if split is None:
    if has_cases or not present:
      return root, None, present
    split = DEFAULT_SPLIT if DEFAULT_SPLIT in present else present[0]
  if split not in present:
    raise InputError(root, f"has no {SPLITS[split]} folder (split {split!r} asked for)"
                     + (f"; it has {', '.join(SPLITS[s] for s in present)}" if present else ""))
  return named[SPLITS[split].lower()], split, present


def find_cases(root: os.PathLike | str, layout: str = "isles2018",
               patterns: Mapping[str, str] | None = None, *, split: str | None = None,
               exclude: Sequence[str] = (), require_maps: bool = False,
               complete: bool = True) -> CaseFolders:
  """The case folders under root: its subfolders holding a file that matches a layout pattern.

  A root without case folders of its own but with TRAINING and/or TESTING subfolders (ISLES 2018
  as distributed) is read in one of them: TRAINING unless split says otherwise.

  Args:
    root: the data folder (for ISLES 2018, the folder holding case_1, case_2, ..., or the one
      holding TRAINING/ and TESTING/).
    layout: a key of :data:`LAYOUTS`.
    patterns: role -> glob relative to a case folder, overriding or adding to the layout's.
    split: "training" or "testing" (:data:`SPLITS`): read root/TRAINING or root/TESTING; None
      reads the root's own case folders, or if it has none TRAINING (TESTING if alone).
    exclude: names of case folders (as in the folder holding them, e.g. "case_7") to leave out;
      each must be one of the case folders found.
    require_maps: the tmax, cbv and cbf maps are required files too (for training).
    complete: True: every case folder must hold its required files (the scan, and the maps with
      require_maps), else one error names each folder that lacks one and what it lacks. False:
      incomplete folders are returned too, for a caller that reads and reports each case.

  Returns:
    A :class:`CaseFolders` (a sequence of the case folders, sorted naturally: case_2 before
    case_10) that also says which folder and split were read and what was excluded.

  Raises:
    InputError: unknown layout, role or split; root missing; no case found; an excluded name
      that is not a case folder; with complete, case folders lacking a required file.
  """
  resolved = resolve_patterns(layout, patterns)
  required = _required_roles(resolved, layout, require_maps)
  root = pathlib.Path(root)
  if not root.exists():
    raise InputError(root, "data folder does not exist")
  if not root.is_dir():
    raise InputError(root, "is not a folder (expected the data folder holding one folder per case)")
  # A recursive pattern could match through TRAINING/case_N/...: split folders are never cases.
  cases = _case_folders(root, resolved, skip=SPLITS.values())
  folder, split, splits = _split_folder(root, split, bool(cases))
  if folder != root:
    cases = _case_folders(folder, resolved)
  if not cases:
    raise InputError(folder, f"no case found: no subfolder holds a NIfTI file matching the "
                     f"layout's patterns (layout {layout!r}, scan pattern {resolved['scan']!r})")
  if isinstance(exclude, (str, os.PathLike)):  # one name, not its characters
    exclude = [exclude]
  exclude = [os.fspath(name) for name in exclude]
  by_name = {d.name: d for d in cases}
  unknown = [name for name in exclude if name not in by_name]
  if unknown:
    example = min(cases, key=_natural_key).name
    raise InputError("exclude", f"not a case folder of {folder}: {', '.join(map(repr, unknown))} "
                     f"(give case folder names, such as {example!r})")
  excluded = tuple(sorted((by_name[name] for name in set(exclude)), key=_natural_key))
  cases = sorted((d for d in cases if d not in excluded), key=_natural_key)
  if complete:
    incomplete = {d: _missing_roles(d, resolved, required) for d in cases}
    incomplete = {d: missing for d, missing in incomplete.items() if missing}
    if len(incomplete) == 1:
      ((case_dir, missing),) = incomplete.items()
      raise InputError(case_dir, f"{_missing_text(missing, resolved)}; add the file or exclude "
                       "this case folder by name")
    if incomplete:
      listed = "; ".join(f"{d.name} (no {', '.join(map(_role_text, missing))})"
                         for d, missing in incomplete.items())
      raise InputError(folder, f"{len(incomplete)} case folders lack a required file: {listed}; "
                       "add the files or exclude these case folders by name")
  return CaseFolders(tuple(cases), folder, split, splits, excluded)


# ----------------------------------------------------------------------------------------------
# Reading.


def _one_line(error: Exception) -> str:
  return " ".join(str(error).split()) or type(error).__name__


# Deflate (RFC 1951) expands at most about 1032-fold (a 258-byte match in under 2 bits), so a
# .nii.gz of N bytes holds at most this many times N bytes.
DEFLATE_MAX_EXPANSION = 1032
_GZIP_ISIZE_MODULUS = 2 ** 32  # the gzip trailer holds the uncompressed size modulo 2^32


def _bytes_text(num_bytes: int) -> str:
  """A size for people, in decimal units: '352 bytes', '1.54 kB', '72 GB'."""
  for unit, size in (("TB", 10 ** 12), ("GB", 10 ** 9), ("MB", 10 ** 6), ("kB", 10 ** 3)):
    if num_bytes >= size:
      return f"{num_bytes / size:.3g} {unit}"
  return f"{num_bytes} bytes"


def _gzip_isize(path: pathlib.Path) -> int:
  """The last gzip member's uncompressed size modulo 2^32, from the file's last 4 bytes."""
  with open(path, "rb") as f:
    f.seek(0, os.SEEK_END)
    if f.tell() < 4:
      return 0
    f.seek(-4, os.SEEK_END)
    return int.from_bytes(f.read(4), "little")


def _uncompressed_size(path: pathlib.Path, limit: int) -> int:
  """Bytes a gzip file decompresses to, all members, counted up to limit (nothing kept)."""
  count = 0
  with gzip.open(path, "rb") as f:
    while count < limit:
      chunk = f.read(min(1 << 20, limit - count))
      if not chunk:
        break
      count += len(chunk)
  return count


def _check_data_size(img, path: pathlib.Path) -> None:
  """Raises if the file cannot hold the voxels its header claims; reads no voxel.

  .nii: vox_offset + voxels x bytes per voxel must not exceed the file's size. .nii.gz: where
  that claim is below 4 GiB, the gzip trailer's uncompressed size must reach it (counted by
  decompressing, without keeping anything, when it falls short: a file of several gzip members
  has only the last one's size there); above 4 GiB, the compressed size x DEFLATE_MAX_EXPANSION.
  """
  proxy = img.dataobj  # nibabel's array proxy: the file's data offset, on-disk shape and type
  shape = tuple(int(n) for n in proxy.shape)
  dtype = np.dtype(proxy.dtype)
  offset = int(proxy.offset)
  data_bytes = int(np.prod(shape, dtype=object)) * dtype.itemsize  # Python ints: no overflow
  claimed = offset + data_bytes
  file_bytes = path.stat().st_size
  if not path.name.endswith(".gz"):
    if claimed <= file_bytes:
      return
    holds = f"{file_bytes} bytes"
  elif claimed < _GZIP_ISIZE_MODULUS:
    if _gzip_isize(path) >= claimed:
      return
    try:
      held = _uncompressed_size(path, claimed)
    except (OSError, EOFError, zlib.error) as e:  # gzip.BadGzipFile is an OSError
      raise InputError(path, f"cannot read NIfTI (truncated or corrupt): {_one_line(e)}") from e
    if held >= claimed:
      return
    holds = f"{held} bytes uncompressed"
  else:
    if file_bytes * DEFLATE_MAX_EXPANSION >= claimed:
      return
    holds = (f"{file_bytes} bytes compressed (deflate expands at most "
             f"{DEFLATE_MAX_EXPANSION}-fold: {_bytes_text(file_bytes * DEFLATE_MAX_EXPANSION)})")
  dims = " x ".join(map(str, shape))
  raise InputError(path, f"the header claims {dims} {dtype.name} voxels ({_bytes_text(data_bytes)} "
                   f"from byte {offset}) but the file holds only {holds}: truncated or corrupt")


def _load(path: pathlib.Path):
  """The NIfTI image at path (header read, data not yet), checked to hold the data it claims."""
  try:
    img = nib.load(str(path), mmap=False)
  except Exception as e:  # nibabel raises many kinds on bad files pylint: disable=broad-except
    raise InputError(path, f"cannot read NIfTI (truncated or corrupt): {_one_line(e)}") from e
  if not isinstance(img, (nib.Nifti1Image, nib.Nifti2Image)):
    raise InputError(path, f"not a NIfTI-1/2 image ({type(img).__name__})")
  _check_data_size(img, path)
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


# What to do about a scan without a usable frame interval, for callers with no better advice (the
# validator has --frame-interval; training and prediction read the header alone).
INTERVAL_ADVICE = "set the interval in the file's header (pixdim[4], with its time unit)"
_warned_no_interval: set[str] = set()  # files warned about, once per file and process


def _frame_interval(img, path: pathlib.Path, frame_interval_s: float | None,
                    interval_advice: str) -> tuple[float, str]:
  """(seconds per frame, where it came from: 'argument', 'header' or 'default').

  Without a usable interval, 1.0 s is assumed with one line on stderr (once per file), ending in
  interval_advice.
  """
  if frame_interval_s is not None:
    if not (np.isfinite(frame_interval_s) and frame_interval_s > 0):
      raise InputError("frame_interval_s", f"must be a positive number, got {frame_interval_s}")
    return float(frame_interval_s), "argument"
  hdr = img.header
  raw = hdr["pixdim"][4]
  time_unit = hdr.get_xyzt_units()[1]
  if time_unit in _TIME_DIVISORS and np.isfinite(raw) and raw > 0:
    return _tidy(raw, hdr["pixdim"].dtype) / _TIME_DIVISORS[time_unit], "header"
  if str(path) not in _warned_no_interval:
    _warned_no_interval.add(str(path))
    print(f"warning: {path}: no usable frame interval in the header (pixdim[4] = {float(raw):g}, "
          f"time unit {time_unit!r}); assuming 1.0 s per frame; {interval_advice}",
          file=sys.stderr, flush=True)
  return 1.0, "default"


def _read_4d(path: pathlib.Path, frame_interval_s: float | None,
             interval_advice: str = INTERVAL_ADVICE) -> dict:
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
  dt, dt_source = _frame_interval(img, path, frame_interval_s, interval_advice)
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
              frame_interval_s: float | None = None, *,
              interval_advice: str = INTERVAL_ADVICE) -> Case:
  """Reads and validates one case folder.

  Args:
    case_dir: the case folder (e.g. root/case_3).
    layout: a key of :data:`LAYOUTS`.
    patterns: role -> glob relative to case_dir, overriding or adding to the layout's.
    require_maps: if True, the maps tmax, cbv and cbf must be present; mtt and core are optional.
    frame_interval_s: seconds per frame; if given, overrides the header's pixdim[4]. If not given
      and pixdim[4] is not positive, 1.0 s is assumed with a one-line warning on stderr.
    interval_advice: how to set the interval, ending that warning (the caller knows its flags).

  Returns:
    A Case with case_id = the folder's name, scan_hu (S, T, H, W) float32 HU (from data[x, y, z, t]
    as [z, t, x, y]), frame_times_s (T,) in s from 0, maps (S, H, W) float32, masks['core'] (S, H, W)
    bool, spacing_mm = (dz, dx, dy), affine = the scan's voxel-to-world, source = the folder, and
    params['files'] (role -> path) and params['frame_interval_source'].

  Raises:
    InputError: naming the folder or file: missing folder, missing scan or required maps (all
      named), several files for one role, wrong dimensionality, fewer than 2 frames, a file
      smaller than its header claims, unreadable (truncated or corrupt) file, NaN/Inf voxels, a
      map whose shape differs from the scan's.
  """
  resolved = resolve_patterns(layout, patterns)
  required = _required_roles(resolved, layout, require_maps)
  case_dir = _check_case_dir(case_dir)
  missing = _missing_roles(case_dir, resolved, required)
  if missing:
    raise InputError(case_dir, _missing_text(missing, resolved))
  files = {}
  for role, pattern in resolved.items():
    path = _find_role(case_dir, role, pattern)
    if path is not None:
      files[role] = path
  scan = _read_4d(files["scan"], frame_interval_s, interval_advice)
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
  path = _find_role(case_dir, "scan", resolved["scan"])
  if path is None:
    raise InputError(case_dir, _missing_text(["scan"], resolved))
  shape = tuple(int(n) for n in _load(path).shape)
  while len(shape) > 4 and shape[-1] == 1:
    shape = shape[:-1]
  if len(shape) != 4:
    raise InputError(path, f"is {len(shape)}D (shape {shape}), expected a 4D scan (x, y, z, t)")
  return path, shape


def read_scan(path: os.PathLike | str, frame_interval_s: float | None = None,
              layout: str = "isles2018", patterns: Mapping[str, str] | None = None, *,
              interval_advice: str = INTERVAL_ADVICE) -> Case:
  """Reads a scan for prediction: one 4D NIfTI file, or a case folder (maps read if present).

  A file gives a Case with no maps, case_id = the file name without .nii/.nii.gz and the same
  conventions as :func:`read_case`; a folder is read by read_case with require_maps=False.
  interval_advice: as read_case's.
  """
  path = pathlib.Path(path)
  if path.is_dir():
    return read_case(path, layout, patterns, require_maps=False, frame_interval_s=frame_interval_s,
                     interval_advice=interval_advice)
  if not path.exists():
    raise InputError(path, "does not exist (expected a 4D NIfTI file or a case folder)")
  if not _is_nifti(path):
    raise InputError(path, "is not a NIfTI file (.nii or .nii.gz) or a case folder")
  scan = _read_4d(path, frame_interval_s, interval_advice)
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
