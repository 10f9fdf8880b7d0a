"""Prediction: perfusion maps (Tmax, CBV, CBF) of a new scan from a trained run.

Command line::

    python -m pkd_jax.predict --workdir=RUN --input=scan.nii.gz --output=DIR \
        [--temporal-factor=N] [--checkpoint=best|latest] [--force]

RUN is a trained run folder as :func:`pkd_jax.train.train_and_evaluate` leaves it (``model.json``
and ``checkpoints/``): a teacher (``WORKDIR/teachers/<name>``) or a student
(``WORKDIR/student_<strategy>``). The model is rebuilt from ``model.json`` (architecture, filters,
frames, factor, the preprocessing grid it was trained at, time grid, input transform); the
convolution implementations, which do not change the parameters, are the fast ones of the
backend. No geometry flag: the grid (``config.data.height/width/num_frames``) and the seconds per
frame are the run's.

A scan unlike what the run was trained on is refused in one line (:func:`check_scan`; --force
predicts anyway): no contrast enhancement (:func:`pkd_jax.data.preprocess.peak_enhancement_hu`
below :data:`MIN_ENHANCEMENT_HU`), an in-plane size more than :data:`MAX_INPLANE_RATIO` times
larger or smaller than the run's grid, an acquisition shorter than half the run's time window, or
frames more than :data:`MAX_SPACING_RATIO` times further apart than the frames the model sees.

The scan (a 4D NIfTI file, or a case folder as :func:`pkd_jax.data.nifti.read_scan` reads it) goes
through exactly the training preprocessing: in-plane and temporal resampling to the geometry
(:func:`pkd_jax.data.preprocess.preprocess_case`), intensity normalisation
(:func:`~pkd_jax.data.preprocess.normalise_hu`), the run's input transform, sample-and-hold to the
run's temporal factor and the window rule of :mod:`pkd_jax.inference` (the mean over T-frame
windows covering the series). Every slice is predicted, in batches, and the maps are resampled back to the scan's in-plane shape (linear,
:func:`~pkd_jax.data.preprocess.resample_inplane`, the inverse of the preprocessing's resampling).

DIR receives ``tmax.nii.gz``, ``cbv.nii.gz``, ``cbf.nii.gz`` (float32, ``data[x, y, z] = map[z, x,
y]``, on the scan's affine; units of :data:`pkd_jax.data.case.MAP_UNITS`, as the network predicts
them, unclipped, 0 outside the head: :func:`pkd_jax.data.preprocess.head_mask`) and
``overview.png`` (a row per map over a few slices). Everything is written into a temporary folder
next to DIR and renamed into place, so a failure leaves nothing partial; an existing non-empty DIR
is replaced only with --overwrite. Bad input (a missing or 3D scan, too few frames for the factor,
a scan unlike the training data, a run without model.json or checkpoint, an unwritable output)
ends with ``error: <path>: <problem>`` and exit status 2.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import pathlib
from typing import Any, Sequence

import numpy as np

from pkd_jax import fileio, runtime
from pkd_jax.data import nifti, preprocess, temporal
from pkd_jax.data.case import MAP_UNITS, TARGET_MAPS, Case
from pkd_jax.data.preprocess import Geometry
from pkd_jax.errors import InputError, exit_on_input_error

MAP_FILES = {key: f"{key}.nii.gz" for key in TARGET_MAPS}
OVERVIEW_FILE = "overview.png"
SPEC_KEYS = ("model", "filters", "num_frames", "factor", "grid", "frame_interval_s", "input_norm",
             "scale_outputs", "map_ranges")
GRID_KEYS = ("height", "width", "num_frames")
MIN_ENHANCEMENT_HU = 50.0  # below: no bolus (see preprocess.peak_enhancement_hu)
MAX_INPLANE_RATIO = 4.0  # a scan's rows or columns over the run's grid's (or under)
MAX_SPACING_RATIO = 3.0  # a scan's median frame spacing over the run's seconds per frame x factor
MIN_DURATION_FRACTION = 0.5  # of the run's time window, (num_frames - 1) x seconds per frame
MAX_OVERVIEW_SLICES = 4


@dataclasses.dataclass
class Run:
  """A trained model ready to predict: its spec (model.json), config, module and variables."""

  workdir: pathlib.Path
  spec: dict[str, Any]  # model.json: pkd_jax.checkpoints.model_spec
  geometry: Geometry  # the preprocessing geometry the model was trained at
  config: Any  # ml_collections.ConfigDict rebuilt from the spec
  model: Any
  variables: dict[str, Any]

  @property
  def factor(self) -> int:
    return int(self.spec["factor"])


# ----------------------------------------------------------------------------------------------
# The run.


def read_spec(workdir: os.PathLike | str) -> dict[str, Any]:
  """model.json of a run folder, checked, with a checkpoint present; else InputError."""
  from pkd_jax import checkpoints  # pylint: disable=import-outside-toplevel

  workdir = pathlib.Path(workdir)
  if not workdir.exists():
    raise InputError(workdir, "run folder does not exist")
  if not workdir.is_dir():
    raise InputError(workdir, "is not a folder (expected a trained run folder holding model.json "
                     "and checkpoints/)")
  path = workdir / checkpoints.MODEL_SPEC_FILE
  if not path.is_file():
    raise InputError(workdir, f"no trained model here (no {checkpoints.MODEL_SPEC_FILE}); expected a "
                     "run folder such as WORKDIR/teachers/x8 or WORKDIR/student_pkd")
  try:
    spec = json.loads(path.read_text())
  except (OSError, ValueError) as e:
    raise InputError(path, f"cannot read the model spec: {e}") from e
  if not isinstance(spec, dict) or any(k not in spec for k in SPEC_KEYS):
    missing = [k for k in SPEC_KEYS if not isinstance(spec, dict) or k not in spec]
    hint = (" (written before runs recorded their training grid: add \"grid\": {\"height\": H, "
            "\"width\": W, \"num_frames\": T} with the run's config.data values)"
            if missing == ["grid"] else "")
    raise InputError(path, f"not a model spec: expected the keys {', '.join(SPEC_KEYS)}{hint}")
  grid = spec["grid"]
  if (not isinstance(grid, dict) or any(not isinstance(grid.get(k), int) or grid[k] < 1
                                        for k in GRID_KEYS)):
    raise InputError(path, f"bad grid {grid!r}: expected positive integers {', '.join(GRID_KEYS)}")
  checkpoints = workdir / "checkpoints"
  steps = [p for p in checkpoints.iterdir() if p.is_dir() and p.name.isdigit()] \
      if checkpoints.is_dir() else []
  if not steps:
    raise InputError(workdir, "holds no checkpoint (checkpoints/ is missing or empty): the run "
                     "has not finished a validation yet")
  return spec


def run_geometry(spec: dict[str, Any]) -> Geometry:
  """The preprocessing geometry and time grid a run was trained at (its model.json)."""
  grid = spec["grid"]
  return Geometry(int(grid["height"]), int(grid["width"]), int(grid["num_frames"]),
                  float(spec["frame_interval_s"]))


def run_config(spec: dict[str, Any]):
  """The config of a run rebuilt from its model.json."""
  from configs import base  # pylint: disable=import-outside-toplevel

  geometry = run_geometry(spec)
  config = base.get_config()
  config.model.name = spec["model"]
  config.model.filters = int(spec["filters"])
  config.data.height, config.data.width = geometry.height, geometry.width
  config.data.num_frames = geometry.num_frames
  config.data.frame_interval_s = float(spec["frame_interval_s"])
  config.data.input_norm = spec["input_norm"]
  config.model.scale_outputs = bool(spec["scale_outputs"])
  config.data.map_ranges.update({k: float(v) for k, v in spec["map_ranges"].items()})
  config.data.patch.num_frames = int(spec["num_frames"])
  config.data.patch.height = config.data.patch.width = 16  # parameters do not depend on it
  config.train.factor = int(spec["factor"])
  config.data.factors = (int(spec["factor"]),)
  config.lock()
  return config


def load_run(workdir: os.PathLike | str, which: str = "best") -> Run:
  """Loads a trained run folder's model: the "best" (validation loss) or "latest" checkpoint."""
  from pkd_jax import checkpoints, models  # pylint: disable=import-outside-toplevel

  if which not in ("best", "latest"):
    raise InputError("checkpoint", f"must be 'best' or 'latest', got {which!r}")
  spec = read_spec(workdir)
  config = run_config(spec)
  model = models.from_config(config)
  try:
    variables = checkpoints.load_variables(str(workdir), config, which)
  except InputError:
    raise
  except Exception as e:  # orbax raises many kinds on bad checkpoints pylint: disable=broad-except
    message = " ".join(str(e).split())[:300] or type(e).__name__
    raise InputError(pathlib.Path(workdir) / "checkpoints",
                     f"cannot restore the checkpoint: {message}") from e
  return Run(pathlib.Path(workdir), spec, run_geometry(spec), config, model, variables)


def resolve_factor(spec: dict[str, Any], factor: int | None) -> int:
  """The temporal factor to predict at: the run's; another one is an error."""
  trained = int(spec["factor"])
  if factor is None:
    return trained
  if int(factor) != trained:
    raise InputError("--temporal-factor", f"the model was trained at temporal factor {trained}, "
                     f"not {factor}; predict at {trained} or use a run trained at {factor}")
  return trained


# ----------------------------------------------------------------------------------------------
# Prediction.


def check_scan(case: Case, spec: dict[str, Any], factor: int, force: bool = False) -> None:
  """The raw scan keeps at least two frames at the factor and, unless force, looks like what the
  run was trained on (see the module docstring); else InputError naming the file."""
  where = case.params.get("files", {}).get("scan", case.source or case.case_id)
  temporal.check_factor(factor, case.num_frames, where)
  if force:
    return
  geometry, advice = run_geometry(spec), " (--force predicts anyway)"
  _, _, height, width = case.scan_hu.shape
  for what, size, trained in (("rows", height, geometry.height),
                              ("columns", width, geometry.width)):
    if max(size / trained, trained / size) > MAX_INPLANE_RATIO:
      raise InputError(where, f"{size} {what} is far from the {trained} the model was trained at "
                       f"(more than {MAX_INPLANE_RATIO:g} times){advice}")
  times = np.asarray(case.frame_times_s, np.float64)
  window = (geometry.num_frames - 1) * geometry.frame_interval_s
  if times[-1] - times[0] < MIN_DURATION_FRACTION * window:
    raise InputError(where, f"the scan covers {times[-1] - times[0]:.3g} s; the model was trained "
                     f"on {window:.3g} s ({geometry.num_frames} frames of "
                     f"{geometry.frame_interval_s:g} s){advice}")
  spacing, seen = float(np.median(np.diff(times))), geometry.frame_interval_s * factor
  if spacing > MAX_SPACING_RATIO * seen:
    raise InputError(where, f"frames {spacing:.3g} s apart; the model saw frames {seen:g} s apart "
                     f"(more than {MAX_SPACING_RATIO:g} times){advice}")
  enhancement = preprocess.peak_enhancement_hu(case.scan_hu)
  if enhancement < MIN_ENHANCEMENT_HU:
    raise InputError(where, f"no contrast enhancement: the brightest voxels rise {enhancement:.3g} "
                     f"HU above their first frames (a bolus gives hundreds){advice}")


def predict_case(run: Run, case: Case, factor: int | None = None,
                 batch_size: int = 4) -> dict[str, np.ndarray]:
  """Maps {tmax, cbv, cbf} (S, H, W) float32 at the case's own in-plane shape."""
  from pkd_jax import inference  # pylint: disable=import-outside-toplevel

  factor = resolve_factor(run.spec, factor)
  temporal.check_factor(factor, case.num_frames, case.source or case.case_id)
  _, _, height, width = case.scan_hu.shape
  prepared = preprocess.preprocess_case(case, run.geometry)
  scan = preprocess.normalise_hu(prepared.scan_hu)  # (S, T, h, w)
  num_frames = int(run.spec["num_frames"])
  inputs = np.stack([inference.slice_input(s, factor, run.config.data.input_norm) for s in scan])
  maps = inference.predict(run.model, run.variables, inputs, num_frames,
                           run.config.data.window_stride, batch_size)
  head = preprocess.head_mask(case.scan_hu)  # maps are 0 in the air around the head
  return {k: preprocess.resample_inplane(np.asarray(maps[k], np.float32), height, width, order=1)
          * head for k in TARGET_MAPS}


def predict_scan(workdir: os.PathLike | str, input_path: os.PathLike | str,
                 factor: int | None = None, which: str = "best", batch_size: int = 4,
                 force: bool = False) -> dict[str, np.ndarray]:
  """Reads a scan and predicts its maps with a run folder's model (see the module docstring).

  Returns:
    {"tmax", "cbv", "cbf"}: (S, H, W) float32 maps, map[z, x, y] for the NIfTI's data[x, y, z].
  """
  spec = read_spec(workdir)
  factor = resolve_factor(spec, factor)
  case = nifti.read_scan(input_path)
  check_scan(case, spec, factor, force)
  return predict_case(load_run(workdir, which), case, factor, batch_size)


# ----------------------------------------------------------------------------------------------
# Writing.


def _save_map(data: np.ndarray, affine: np.ndarray, path: pathlib.Path, descrip: str) -> None:
  import nibabel as nib  # pylint: disable=import-outside-toplevel

  img = nib.Nifti1Image(np.ascontiguousarray(data.transpose(1, 2, 0), np.float32), affine)
  img.set_qform(affine, code=1)
  img.set_sform(affine, code=1)
  img.header.set_data_dtype(np.float32)
  img.header.set_xyzt_units("mm", "sec")
  img.header["descrip"] = descrip.encode("ascii", "replace")[:79]
  nib.save(img, str(path))


def save_overview(maps: dict[str, np.ndarray], path: os.PathLike | str, title: str = "") -> None:
  """overview.png: a row per map over up to four evenly spaced slices, colour bars with units."""
  import matplotlib  # pylint: disable=import-outside-toplevel
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=import-outside-toplevel

  num_slices = maps[TARGET_MAPS[0]].shape[0]
  slices = sorted(set(np.linspace(0, num_slices - 1, min(num_slices, MAX_OVERVIEW_SLICES))
                      .round().astype(int).tolist()))
  fig, axes = plt.subplots(len(TARGET_MAPS), len(slices), squeeze=False,
                           figsize=(2.6 * len(slices) + 1.2, 2.6 * len(TARGET_MAPS)))
  try:
    for row, key in enumerate(TARGET_MAPS):
      values = maps[key][slices]
      vmax = float(np.percentile(values, 99.5)) if values.size else 1.0
      vmax = vmax if vmax > 0 else max(float(values.max()), 1e-6)
      for col, s in enumerate(slices):
        ax = axes[row, col]
        image = ax.imshow(maps[key][s], cmap="jet" if key == "tmax" else "viridis", vmin=0.0,
                          vmax=vmax)
        ax.set_xticks([])
        ax.set_yticks([])
        if row == 0:
          ax.set_title(f"slice {s}")
        if col == 0:
          ax.set_ylabel(key.upper() if key != "tmax" else "Tmax")
      bar = fig.colorbar(image, ax=list(axes[row]), shrink=0.85)
      bar.set_label(MAP_UNITS[key])
    if title:
      fig.suptitle(title)
    fig.savefig(path, dpi=100)
  finally:
    plt.close(fig)


def _missing_parents(folder: pathlib.Path) -> list[pathlib.Path]:
  """The ancestors of folder that do not exist, outermost first."""
  missing = []
  for parent in folder.parents:
    if parent.exists():
      break
    missing.append(parent)
  return missing[::-1]


def check_output(output: os.PathLike | str, overwrite: bool = False) -> pathlib.Path:
  """Checks, before any work, that the output folder can be written; returns it (absolute)."""
  output = pathlib.Path(os.path.abspath(output))
  if output.exists() or output.is_symlink():
    if not output.is_dir():
      raise InputError(output, "exists and is not a folder")
    if any(output.iterdir()) and not overwrite:
      raise InputError(output, "exists and is not empty (pass --overwrite to replace it)")
  existing = next(p for p in output.parents if p.exists())
  if not existing.is_dir():
    raise InputError(output, f"cannot be created: {existing} is not a folder")
  if not os.access(existing, os.W_OK | os.X_OK):
    raise InputError(output, f"cannot be written: no write permission in {existing}")
  return output


def write_outputs(maps: dict[str, np.ndarray], affine: np.ndarray | None,
                  output: os.PathLike | str, overwrite: bool = False,
                  spacing_mm: Sequence[float] = (1.0, 1.0, 1.0), title: str = "") -> pathlib.Path:
  """Writes the maps and overview.png into the folder output, atomically (see module docstring).

  affine: the scan's voxel-to-world (NIfTI order x, y, z); None: diag(dx, dy, dz) from spacing_mm
  = (dz, dx, dy), centred.
  """
  output = check_output(output, overwrite)
  num_slices, height, width = maps[TARGET_MAPS[0]].shape
  if affine is None:
    dz, dx, dy = spacing_mm
    affine = nifti.default_affine((height, width, num_slices), (dx, dy, dz))
  affine = np.asarray(affine, np.float64)
  created = _missing_parents(output)
  try:
    try:
      output.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
      raise InputError(output, f"cannot write the output: {e.strerror or e}") from e
    with fileio.replace_folder(output, "the output") as tmp:
      for key in TARGET_MAPS:
        _save_map(maps[key], affine, tmp / MAP_FILES[key], f"pkd_jax {key} ({MAP_UNITS[key]})")
      save_overview(maps, tmp / OVERVIEW_FILE, title)
  except BaseException:
    for folder in reversed(created):  # parents made for the output go too
      try:
        folder.rmdir()
      except OSError:
        break
    raise
  return output


def predict_to_folder(workdir: os.PathLike | str, input_path: os.PathLike | str,
                      output: os.PathLike | str, factor: int | None = None,
                      which: str = "best", batch_size: int = 4, overwrite: bool = False,
                      force: bool = False) -> tuple[pathlib.Path, dict[str, np.ndarray]]:
  """The command line's work: checks everything cheap first, predicts, writes; (folder, maps)."""
  spec = read_spec(workdir)
  factor = resolve_factor(spec, factor)
  check_output(output, overwrite)
  case = nifti.read_scan(input_path)
  check_scan(case, spec, factor, force)
  maps = predict_case(load_run(workdir, which), case, factor, batch_size)
  title = f"{case.case_id}: {spec['model']} at 1/{factor}" if factor > 1 else \
      f"{case.case_id}: {spec['model']} at full temporal resolution"
  folder = write_outputs(maps, case.affine, output, overwrite, case.spacing_mm, title)
  return folder, maps


# ----------------------------------------------------------------------------------------------
# Command line.


def build_parser() -> argparse.ArgumentParser:
  parser = argparse.ArgumentParser(
      prog="python -m pkd_jax.predict",
      description="Predict Tmax, CBV and CBF maps of a 4D CTP scan with a trained run; writes "
      "tmax.nii.gz, cbv.nii.gz, cbf.nii.gz and overview.png into --output.")
  parser.add_argument("--workdir", required=True, metavar="RUN",
                      help="a trained run folder (model.json and checkpoints/), e.g. "
                      "WORKDIR/student_pkd or WORKDIR/teachers/x8")
  parser.add_argument("--input", required=True, metavar="SCAN",
                      help="the 4D CTP scan (.nii or .nii.gz), or a case folder")
  parser.add_argument("--output", required=True, metavar="DIR", help="the folder to write")
  parser.add_argument("--temporal-factor", type=int, default=None, metavar="N",
                      help="temporal factor of the prediction (default: the run's; it must be "
                      "the factor the run was trained at)")
  parser.add_argument("--checkpoint", choices=("best", "latest"), default="best",
                      help="the checkpoint to use: best validation loss (default) or latest")
  parser.add_argument("--batch-size", type=int, default=4,
                      help="slices per forward pass, at most (halved while the compiled batch "
                      "needs more memory than is free)")
  parser.add_argument("--overwrite", action="store_true",
                      help="replace --output if it exists and is not empty")
  parser.add_argument("--force", action="store_true",
                      help="predict a scan unlike the training data (no enhancement; size or "
                      "time base far off) instead of refusing it")
  parser.add_argument("--verbosity", type=int, default=None,
                      help="library logging: -1 warnings and errors (default), 0 INFO, 1 DEBUG")
  return parser


@exit_on_input_error
def main(argv: Sequence[str] | None = None) -> None:
  args = build_parser().parse_args(argv)
  if args.batch_size < 1:
    raise InputError("--batch-size", f"must be positive, got {args.batch_size}")
  runtime.enable_compilation_cache()
  runtime.set_library_logging(args.verbosity)
  folder, maps = predict_to_folder(args.workdir, args.input, args.output, args.temporal_factor,
                                   args.checkpoint, args.batch_size, args.overwrite, args.force)
  shape = maps[TARGET_MAPS[0]].shape
  print(f"wrote {', '.join(MAP_FILES.values())} and {OVERVIEW_FILE} ((x, y, z) = "
        f"({shape[1]}, {shape[2]}, {shape[0]})) to {folder}")


if __name__ == "__main__":
  main()
