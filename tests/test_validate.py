"""python -m pkd_jax.tools.validate: every case read, one line each, a summary, the exit status."""

import pathlib
import shutil
import subprocess
import sys

import nibabel as nib
import numpy as np
import pytest

from pkd_jax.data import nifti
from pkd_jax.tools import validate
from tests.test_nifti import make_case, role_file, save

ROOT_OF_REPO = pathlib.Path(__file__).resolve().parents[1]


def run_main(capsys, *argv) -> tuple[int, list[str], list[str]]:
  """(exit status, stdout lines, stderr lines) of validate.main(argv)."""
  capsys.readouterr()
  try:
    validate.main([str(a) for a in argv])
    code = 0
  except SystemExit as e:
    code = e.code
  captured = capsys.readouterr()
  return code, captured.out.splitlines(), captured.err.splitlines()


def test_every_case_is_read_and_each_bad_one_named(tmp_path, capsys):
  nifti.write_isles_dataset([make_case(0), make_case(1), make_case(2)], tmp_path)
  shutil.rmtree(role_file(tmp_path / "case_2", "scan").parent)  # no 4DPWI
  nan_map = role_file(tmp_path / "case_3", "cbv")
  data = np.zeros((16, 16, 3), np.float32)
  data[0, 0, 0] = np.nan
  save(data, nan_map)
  code, out, err = run_main(capsys, tmp_path)
  assert code == 2
  assert len(out) == 2 and out[0].startswith("case_1: (S, T, H, W) = (3, 6, 16, 16)")
  assert out[1] == f"3 cases: 1 valid, 2 invalid; 3 slices in the valid ones; read {tmp_path}"
  assert err == [
      f"error: {tmp_path / 'case_2'}: missing scan: no NIfTI file (.nii or .nii.gz) matches the "
      f"scan pattern {nifti.LAYOUTS['isles2018'].patterns['scan']!r}",
      f"error: {nan_map}: 1 of 768 voxels are not finite (1 NaN, 0 Inf)"]


def test_missing_scan_beside_a_good_case_fails_on_the_command_line(tmp_path):
  nifti.write_isles_dataset([make_case(0), make_case(1)], tmp_path)
  shutil.rmtree(role_file(tmp_path / "case_2", "scan").parent)
  result = subprocess.run([sys.executable, "-m", "pkd_jax.tools.validate", str(tmp_path)],
                          capture_output=True, text=True, timeout=60, cwd=ROOT_OF_REPO)
  assert result.returncode == 2, result.stderr
  assert result.stderr.splitlines() == [
      f"error: {tmp_path / 'case_2'}: missing scan: no NIfTI file (.nii or .nii.gz) matches the "
      f"scan pattern {nifti.LAYOUTS['isles2018'].patterns['scan']!r}"]
  assert result.stdout.splitlines()[-1].startswith("2 cases: 1 valid, 1 invalid;")


def test_isles_root_with_training_and_testing(tmp_path, capsys):
  nifti.write_isles_dataset([make_case(0), make_case(1)], tmp_path / "TRAINING")
  nifti.write_isles_dataset([make_case(2)], tmp_path / "TESTING")
  code, out, err = run_main(capsys, tmp_path)
  assert code == 0 and not err
  assert out[-1] == (f"2 cases: 2 valid, 0 invalid; 6 slices in the valid ones; read "
                     f"{tmp_path / 'TRAINING'} (split training; --split testing reads TESTING)")
  code, out, err = run_main(capsys, tmp_path, "--split", "testing")
  assert code == 0 and not err
  assert out[-1] == (f"1 cases: 1 valid, 0 invalid; 3 slices in the valid ones; read "
                     f"{tmp_path / 'TESTING'} (split testing; --split training reads TRAINING)")


def test_exclude(tmp_path, capsys):
  nifti.write_isles_dataset([make_case(0), make_case(1)], tmp_path)
  shutil.rmtree(role_file(tmp_path / "case_2", "scan").parent)
  code, out, err = run_main(capsys, tmp_path, "--exclude", "case_2")
  assert code == 0 and not err
  assert out[-1].startswith("1 cases: 1 valid, 0 invalid;")
  assert out[-1].endswith("; excluded: case_2")
  code, out, err = run_main(capsys, tmp_path, "--exclude", "case_9")
  assert code == 2 and not out
  assert err == [f"error: exclude: not a case folder of {tmp_path}: 'case_9' (give case folder "
                 "names, such as 'case_1')"]


def test_missing_frame_interval_is_one_line_with_this_tools_advice(tmp_path, capsys, recwarn):
  case_dir = nifti.write_isles_case(make_case(), tmp_path, 1)
  scan_path = role_file(case_dir, "scan")
  img = nib.load(str(scan_path), mmap=False)
  save(np.asarray(img.dataobj), scan_path, dt=0.0)
  code, out, err = run_main(capsys, tmp_path)
  assert code == 0
  assert err == [f"warning: {scan_path}: no usable frame interval in the header (pixdim[4] = 0, "
                 "time unit 'sec'); assuming 1.0 s per frame; pass --frame-interval SECONDS to "
                 "set it"]
  assert "frame interval 1 s (default)" in out[0]
  assert not recwarn.list  # no Python warning (no "UserWarning" and source line)
  code, out, err = run_main(capsys, tmp_path, "--frame-interval", "1.5")
  assert code == 0 and not err and "frame interval 1.5 s (argument)" in out[0]
  code, out, err = run_main(capsys, tmp_path, "--frame-interval", "-1")
  assert code == 2 and err == ["error: --frame-interval: must be a positive number of seconds, "
                               "got -1.0"]


@pytest.mark.parametrize("argv, message", [
    (["--split", "testing"], "has no TESTING folder (split 'testing' asked for)"),
    (["--layout", "folder", "--pattern", "scan=*.nii"], "require_maps needs patterns for the maps"),
])
def test_dataset_level_errors_are_one_line(tmp_path, capsys, argv, message):
  nifti.write_isles_dataset([make_case(0)], tmp_path)
  code, out, err = run_main(capsys, tmp_path, *argv)
  assert code == 2 and not out
  assert len(err) == 1 and err[0].startswith("error: ") and message in err[0], err
