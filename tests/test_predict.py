"""Prediction from a trained run: NIfTI maps on the input's grid, the API, and clear errors."""

import json
import os
import pathlib
import shutil
import subprocess
import sys

import nibabel as nib
import numpy as np
import pytest

from configs import teacher as teacher_config
from pkd_jax import predict, train
from pkd_jax.data import phantom
from pkd_jax.data.case import TARGET_MAPS
from tests.helpers import config_with

REPO = pathlib.Path(__file__).resolve().parents[1]
# The test scale preprocesses to 48 x 48 x 40 (the phantom's size; model.json records it) and
# trains on 16-frame patches.
# Factor 8, not 1: at factor 1 every readable scan (>= 2 frames) is long enough, so the raw frame
# count check could not be tested.
FACTOR = 8


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
  """A tiny trained teacher run: the test scale's 6 steps, checkpoints at 3 and 6.

  The same config as tests/test_train.py's resume test, so in a full test run the train step
  comes from the shared compilation cache (conftest.py) instead of being compiled again.
  """
  config = config_with(teacher_config.get_config, f"{FACTOR},test", train__steps=6,
                       train__eval_every=3)
  workdir = tmp_path_factory.mktemp("run")
  train.train_and_evaluate(config, str(workdir))
  return workdir


def _affine():
  c, s = np.cos(0.4), np.sin(0.4)
  affine = np.eye(4)
  affine[:3, :3] = np.array([[c, -s, 0], [s, c, 0], [0, 0, 1]]) @ np.diag([1.1, 0.9, 4.0])
  affine[:3, 3] = [-20.0, 15.0, 40.0]
  return affine


def _save_scan(path, scan_hu, affine, dt=1.2):
  """(S, T, H, W) HU -> a 4D NIfTI data[x, y, z, t]."""
  img = nib.Nifti1Image(np.ascontiguousarray(scan_hu.transpose(2, 3, 0, 1), np.float32), affine)
  img.header.set_xyzt_units("mm", "sec")
  zooms = np.sqrt((affine[:3, :3] ** 2).sum(axis=0))
  img.header.set_zooms((*zooms, dt))
  nib.save(img, str(path))
  return path


@pytest.fixture(scope="module")
def scan_path(tmp_path_factory):
  """A 40 x 40 x 2 scan of 30 frames (training: 48 x 48, 40 frames) on a rotated affine."""
  case = phantom.generate_case(
      phantom.PhantomConfig(height=40, width=40, num_frames=30, num_slices=2), 0, 0)
  return _save_scan(tmp_path_factory.mktemp("input") / "scan.nii.gz", case.scan_hu, _affine())


@pytest.fixture(scope="module")
def api_maps(run_dir, scan_path):
  return predict.predict_scan(run_dir, scan_path)


def _args(run_dir, scan, output, *extra):
  return [f"--workdir={run_dir}", f"--input={scan}", f"--output={output}", *extra]


def _main_exit_code(argv) -> int:
  try:
    predict.main(argv)
  except SystemExit as e:
    return e.code
  return 0


def _assert_outputs(output: pathlib.Path, maps, atol=0.0):
  assert sorted(p.name for p in output.iterdir()) == sorted(
      [*predict.MAP_FILES.values(), predict.OVERVIEW_FILE])
  for key in TARGET_MAPS:
    img = nib.load(str(output / predict.MAP_FILES[key]))
    assert img.shape == (40, 40, 2)
    assert img.get_data_dtype() == np.float32
    np.testing.assert_allclose(img.affine, _affine(), atol=1e-5)
    data = np.asarray(img.dataobj)
    np.testing.assert_allclose(data, maps[key].transpose(1, 2, 0), rtol=0, atol=atol)


def test_api_predicts_maps_at_the_input_shape(api_maps):
  assert set(api_maps) == set(TARGET_MAPS)
  for key in TARGET_MAPS:
    assert api_maps[key].shape == (2, 40, 40) and api_maps[key].dtype == np.float32
    assert np.isfinite(api_maps[key]).all()


def test_the_run_records_its_grid_and_prediction_needs_no_geometry(run_dir):
  spec = json.loads((run_dir / "model.json").read_text())
  assert spec["grid"] == {"height": 48, "width": 48, "num_frames": 40}
  run = predict.load_run(run_dir)
  assert run.geometry == predict.Geometry(48, 48, 40, 1.5)
  assert (run.config.data.height, run.config.data.width, run.config.data.num_frames) == (48, 48, 40)


def test_maps_are_zero_outside_the_head_only(api_maps, scan_path):
  scan = np.asarray(nib.load(str(scan_path)).dataobj).transpose(2, 3, 0, 1)  # (S, T, H, W)
  air = scan.mean(axis=1) < -900  # the phantom's corners: air at -1000 HU
  assert air.any() and (~air).any()
  for key in TARGET_MAPS:
    assert (api_maps[key][air] == 0).all()  # unmasked, the air got CBF up to 43
    assert (api_maps[key][~air] != 0).mean() > 0.9


def test_cli_writes_maps_on_the_input_grid(run_dir, scan_path, api_maps, tmp_path):
  output = tmp_path / "out" / "pred"  # parent folders are created
  result = subprocess.run(
      [sys.executable, "-m", "pkd_jax.predict",
       *_args(run_dir, scan_path, output, f"--temporal-factor={FACTOR}")],
      cwd=REPO, capture_output=True, text=True, check=False, timeout=240)
  assert result.returncode == 0, result.stderr[-3000:]
  assert str(output) in result.stdout
  _assert_outputs(output, api_maps, atol=1e-4)
  assert os.listdir(output.parent) == ["pred"]  # no temporary folder left


def test_main_default_factor_matches_the_api_and_overwrites(run_dir, scan_path, api_maps,
                                                            tmp_path):
  output = tmp_path / "pred"
  assert _main_exit_code(_args(run_dir, scan_path, output)) == 0
  _assert_outputs(output, api_maps)
  assert _main_exit_code(_args(run_dir, scan_path, output)) == 2  # not empty, no --overwrite
  (output / "stale.txt").write_text("old")
  assert _main_exit_code(_args(run_dir, scan_path, output, "--overwrite")) == 0
  _assert_outputs(output, api_maps)  # replaced as a whole: stale.txt is gone
  assert os.listdir(tmp_path) == ["pred"]
  (tmp_path / "plain").mkdir()  # the output folder's mode is a plain mkdir's (was 0700)
  assert output.stat().st_mode & 0o777 == (tmp_path / "plain").stat().st_mode & 0o777


def _bad_inputs(root: pathlib.Path, run_dir: pathlib.Path, scan_path: pathlib.Path):
  """name -> (workdir, input, output, extra args, text the message names)."""
  out = root / "outputs"
  no_checkpoint = root / "no_checkpoint"
  no_checkpoint.mkdir()
  shutil.copy(run_dir / "model.json", no_checkpoint / "model.json")
  no_spec = root / "no_spec"
  shutil.copytree(run_dir / "checkpoints", no_spec / "checkpoints")
  case = phantom.generate_case(
      phantom.PhantomConfig(height=24, width=24, num_frames=FACTOR - 2, num_slices=1), 0, 1)
  short = _save_scan(root / "short.nii.gz", case.scan_hu, np.eye(4))
  flat = root / "flat.nii.gz"
  nib.save(nib.Nifti1Image(np.zeros((24, 24, 2), np.float32), np.eye(4)), str(flat))
  scan = phantom.generate_case(
      phantom.PhantomConfig(height=24, width=24, num_frames=30, num_slices=1), 0, 1).scan_hu
  no_contrast = _save_scan(root / "no_contrast.nii.gz", np.zeros_like(scan), np.eye(4))
  wide = _save_scan(root / "wide.nii.gz", np.repeat(np.repeat(scan, 9, 2), 9, 3), np.eye(4))
  brief = _save_scan(root / "brief.nii.gz", scan, np.eye(4), dt=0.5)  # 14.5 s of 58.5
  sparse = _save_scan(root / "sparse.nii.gz", scan[:, :16], np.eye(4), dt=40.0)  # sees 12 s
  (out / "a_file").write_text("not a folder")
  read_only = out / "read_only"
  read_only.mkdir()
  read_only.chmod(0o555)
  return {
      "missing input": (run_dir, root / "nope.nii.gz", out / "pred", [], "nope.nii.gz"),
      "no contrast": (run_dir, no_contrast, out / "pred", [], "no_contrast.nii.gz: no contrast"),
      "far larger": (run_dir, wide, out / "pred", [], "wide.nii.gz: 216 rows is far from the 48"),
      "too brief": (run_dir, brief, out / "pred", [], "brief.nii.gz: the scan covers 14.5 s"),
      "too sparse": (run_dir, sparse, out / "pred", [], "sparse.nii.gz: frames 40 s apart"),
      "3D input": (run_dir, flat, out / "pred", [], "flat.nii.gz"),
      "too few frames": (run_dir, short, out / "pred", [], "short.nii.gz"),
      "no checkpoint": (no_checkpoint, scan_path, out / "pred", [], "no_checkpoint"),
      "no model.json": (no_spec, scan_path, out / "pred", [], "no_spec"),
      "missing run": (root / "no_run", scan_path, out / "pred", [], "no_run"),
      "other factor": (run_dir, scan_path, out / "pred", ["--temporal-factor=16"],
                       "--temporal-factor"),
      "output under a file": (run_dir, scan_path, out / "a_file" / "pred", [], "a_file"),
      "read-only output": (run_dir, scan_path, read_only / "pred", [], "read_only"),
  }


BAD = ["missing input", "no contrast", "far larger", "too brief", "too sparse", "3D input", "too few frames", "no checkpoint", "no model.json",
       "missing run", "other factor", "output under a file", "read-only output"]


@pytest.mark.parametrize("name", BAD)
def test_bad_input_exits_2_naming_it_and_writes_nothing(name, run_dir, scan_path, tmp_path,
                                                        capsys):
  if name == "read-only output" and os.geteuid() == 0:
    pytest.skip("root writes into read-only folders")
  (tmp_path / "outputs").mkdir()
  workdir, scan, output, extra, named = _bad_inputs(tmp_path, run_dir, scan_path)[name]
  before = sorted(os.listdir(tmp_path / "outputs"))
  code = _main_exit_code(_args(workdir, scan, output, *extra))
  err = capsys.readouterr().err
  assert code == 2, err
  assert err.startswith("error: ") and named in err and "Traceback" not in err, err
  assert sorted(os.listdir(tmp_path / "outputs")) == before
  assert not output.exists()


def test_too_few_frames_message_names_the_file_and_the_factor(run_dir, tmp_path, capsys):
  case = phantom.generate_case(
      phantom.PhantomConfig(height=24, width=24, num_frames=FACTOR, num_slices=1), 0, 1)
  short = _save_scan(tmp_path / "eight.nii.gz", case.scan_hu, np.eye(4))
  assert _main_exit_code(_args(run_dir, short, tmp_path / "pred")) == 2
  err = capsys.readouterr().err
  assert f"{short}: {FACTOR} frames are too few for temporal factor {FACTOR}" in err, err


def test_a_failed_write_leaves_nothing_partial(run_dir, scan_path, api_maps, tmp_path,
                                               monkeypatch, capsys):
  def fail(*args, **kwargs):
    raise OSError(28, "No space left on device")

  monkeypatch.setattr(predict, "save_overview", fail)
  fresh = tmp_path / "a" / "b" / "pred"  # parents created for the write are removed again
  assert _main_exit_code(_args(run_dir, scan_path, fresh)) == 2
  err = capsys.readouterr().err
  assert err.startswith(f"error: {fresh}: ") and "No space left on device" in err, err
  assert os.listdir(tmp_path) == []
  kept = tmp_path / "kept"  # an existing output replaced with overwrite stays as it was
  kept.mkdir()
  (kept / "old.txt").write_text("old")
  with pytest.raises(predict.InputError, match="No space left on device"):
    predict.write_outputs(api_maps, _affine(), kept, overwrite=True)
  assert os.listdir(tmp_path) == ["kept"] and os.listdir(kept) == ["old.txt"]


def test_run_without_valid_spec_is_an_input_error(tmp_path):
  (tmp_path / "model.json").write_text(json.dumps({"model": "vnet"}))
  with pytest.raises(predict.InputError, match="not a model spec"):
    predict.read_spec(tmp_path)


def test_force_predicts_a_scan_without_contrast(run_dir, tmp_path, capsys):
  (tmp_path / "outputs").mkdir()
  scan = _bad_inputs(tmp_path, run_dir, tmp_path)["no contrast"][1]
  assert _main_exit_code(_args(run_dir, scan, tmp_path / "pred")) == 2
  assert _main_exit_code(_args(run_dir, scan, tmp_path / "pred", "--force")) == 0, \
      capsys.readouterr().err
  assert (tmp_path / "pred" / "tmax.nii.gz").exists()
