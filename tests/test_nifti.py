"""NIfTI reading and writing: ISLES 2018 round trip, the folder layout, and clear errors."""

import gzip
import os
import pathlib
import shutil
import subprocess
import sys

import nibabel as nib
import numpy as np
import pytest

from pkd_jax.data import nifti
from pkd_jax.data.case import Case
from pkd_jax.errors import InputError
from pkd_jax.tools import validate

S, T, H, W = 3, 6, 16, 16


def make_case(seed: int = 0, num_frames: int = T, dt: float = 1.3, affine=None) -> Case:
  """A small synthetic case from seeded random arrays: integer HU, four maps, a core mask."""
  rng = np.random.default_rng(seed)
  scan = rng.integers(-1000, 1500, size=(S, num_frames, H, W)).astype(np.float32)
  maps = {name: rng.uniform(0.0, high, size=(S, H, W)).astype(np.float32)
          for name, high in (("tmax", 20.0), ("cbv", 8.0), ("cbf", 80.0), ("mtt", 15.0))}
  masks = {"core": rng.random((S, H, W)) < 0.2}
  return Case(case_id=f"synthetic_{seed}", scan_hu=scan, frame_times_s=np.arange(num_frames) * dt,
              maps=maps, masks=masks, spacing_mm=(5.0, 0.9, 0.9), affine=affine)


def rotated_affine() -> np.ndarray:
  c, s = np.cos(0.3), np.sin(0.3)
  rotation = np.array([[c, -s, 0], [s, c, 0], [0, 0, 1]])
  affine = np.eye(4)
  affine[:3, :3] = rotation @ np.diag([0.9, 0.9, 5.0])
  affine[:3, 3] = [10.0, -20.0, 30.0]
  return affine


def role_file(case_dir: pathlib.Path, role: str) -> pathlib.Path:
  (path,) = case_dir.glob(nifti.LAYOUTS["isles2018"].patterns[role])
  return path


def save(data, path, dt=1.0, dtype=None):
  img = nib.Nifti1Image(np.asarray(data), np.diag([0.9, 0.9, 5.0, 1.0]))
  if dtype is not None:
    img.set_data_dtype(dtype)
  img.header.set_xyzt_units("mm", "sec")
  if np.ndim(data) == 4:
    img.header.set_zooms((0.9, 0.9, 5.0, dt))
  nib.save(img, str(path))


def assert_same_case(read: Case, case: Case, map_tolerance: dict[str, float]):
  np.testing.assert_array_equal(read.scan_hu, case.scan_hu)
  assert read.scan_hu.dtype == np.float32 and read.scan_hu.shape == (S, case.num_frames, H, W)
  np.testing.assert_array_equal(read.frame_times_s, case.frame_times_s)
  assert read.spacing_mm == case.spacing_mm
  assert set(read.maps) == set(case.maps)
  for name, value in case.maps.items():
    assert read.maps[name].shape == (S, H, W)
    assert np.abs(read.maps[name] - value).max() <= map_tolerance[name]
  assert read.masks["core"].dtype == bool
  np.testing.assert_array_equal(read.masks["core"], case.masks["core"])


def map_tolerances(case_dir: pathlib.Path) -> dict[str, float]:
  """Half the stored scl_slope of each map (int16 quantisation), plus float32 rounding."""
  out = {}
  for role in nifti.MAP_ROLES:
    slope = nib.load(str(role_file(case_dir, role))).dataobj.slope
    out[role] = slope / 2 * (1 + 1e-4) + 1e-5
  return out


def test_round_trip_isles(tmp_path):
  cases = [make_case(0, affine=rotated_affine()), make_case(1), make_case(2, dt=2.0)]
  # Written out of order and past 9, so numeric sorting matters (case_2 before case_10).
  numbers = [10, 2, 1]
  paths = [nifti.write_isles_case(c, tmp_path, n) for c, n in zip(cases, numbers)]
  assert [p.name for p in paths] == ["case_10", "case_2", "case_1"]
  found = nifti.find_cases(tmp_path)
  assert [p.name for p in found] == ["case_1", "case_2", "case_10"]
  for case, path in zip(cases, paths):
    read = nifti.read_case(path)
    assert read.case_id == path.name and read.source == str(path)
    assert_same_case(read, case, map_tolerances(path))
    expected_affine = (case.affine if case.affine is not None else
                       nifti.default_affine((H, W, S), (0.9, 0.9, 5.0)))
    np.testing.assert_allclose(read.affine, expected_affine, atol=1e-4)
    assert read.params["frame_interval_source"] == "header"
    assert nifti.scan_shape(path)[1][2] == S
  # The scan is stored unscaled int16; the default affine centres the volume on the origin.
  scan_img = nib.load(str(role_file(paths[1], "scan")))
  assert scan_img.get_data_dtype() == np.int16 and scan_img.shape == (H, W, S, T)
  centre = nib.affines.apply_affine(nifti.read_case(paths[1]).affine, [(H - 1) / 2, (W - 1) / 2,
                                                                       (S - 1) / 2])
  np.testing.assert_allclose(centre, 0.0, atol=1e-5)


def test_isles_patterns_match_one_file_each(tmp_path):
  """'CT' matches neither CT_4DPWI nor CT_CBF..., the scan's pattern no map; ids are distinct."""
  case_dir = nifti.write_isles_case(make_case(), tmp_path, 1)
  nifti.write_isles_case(make_case(1), tmp_path, 2)
  files = {role: role_file(case_dir, role) for role in nifti.ROLES}
  assert len(set(files.values())) == len(nifti.ROLES)
  assert ".O.CT." in files["ct"].name and ".O.CT_4DPWI." in files["scan"].name
  ct = nib.load(str(files["ct"]))
  assert ct.shape == (H, W, S)
  ids = {int(p.name.split(".")[-1]) for p in tmp_path.glob("case_*/SMIR.*")}
  assert len(ids) == 2 * len(nifti.ROLES)


def test_gz_accepted_and_read_scan(tmp_path):
  case = make_case()
  case_dir = nifti.write_isles_case(case, tmp_path, 1)
  scan_path = role_file(case_dir, "scan")
  gz_path = scan_path.with_name(scan_path.name + ".gz")
  nib.save(nib.load(str(scan_path)), str(gz_path))
  scan_path.unlink()
  read = nifti.read_case(case_dir)
  np.testing.assert_array_equal(read.scan_hu, case.scan_hu)
  single = nifti.read_scan(gz_path)
  assert single.case_id == scan_path.stem and not single.maps
  np.testing.assert_array_equal(single.scan_hu, case.scan_hu)
  np.testing.assert_array_equal(single.frame_times_s, case.frame_times_s)
  from_folder = nifti.read_scan(case_dir)
  assert set(from_folder.maps) == set(case.maps)


def test_folder_layout_with_user_patterns(tmp_path):
  case = make_case(3)
  isles_dir = nifti.write_isles_case(case, tmp_path / "isles", 1)
  root = tmp_path / "generic"
  for name in ("patient_b", "patient_a"):
    (root / name / "derived" / "maps").mkdir(parents=True)
    shutil.copy(role_file(isles_dir, "scan"), root / name / f"{name}_ctp.nii")
    for role in ("tmax", "cbv", "cbf"):
      shutil.copy(role_file(isles_dir, role), root / name / "derived" / "maps" / f"{role}.nii")
    shutil.copy(role_file(isles_dir, "core"), root / name / "core_mask.nii")
  (root / "notes").mkdir()  # no scan: not a case
  patterns = {"scan": "*_ctp.nii*", "tmax": "**/tmax.nii*", "cbv": "**/cbv.nii*",
              "cbf": "**/cbf.nii*", "core": "core_mask.nii*"}
  found = nifti.find_cases(root, "folder", patterns)
  assert [p.name for p in found] == ["patient_a", "patient_b"]
  reference = nifti.read_case(isles_dir)
  read = nifti.read_case(found[0], "folder", patterns)
  assert set(read.maps) == {"tmax", "cbv", "cbf"}
  for name in read.maps:
    np.testing.assert_array_equal(read.maps[name], reference.maps[name])
  np.testing.assert_array_equal(read.scan_hu, reference.scan_hu)
  np.testing.assert_array_equal(read.masks["core"], reference.masks["core"])
  np.testing.assert_array_equal(read.frame_times_s, reference.frame_times_s)


def test_frame_interval_units_and_default(tmp_path, capsys, recwarn):
  scan = np.zeros((H, W, S, T), np.int16)
  save(scan, tmp_path / "ms.nii", dt=1300.0)
  img = nib.load(str(tmp_path / "ms.nii"), mmap=False)
  img.header.set_xyzt_units("mm", "msec")
  nib.save(img, str(tmp_path / "ms.nii"))
  np.testing.assert_array_equal(nifti.read_scan(tmp_path / "ms.nii").frame_times_s,
                                np.arange(T) * 1.3)
  save(scan, tmp_path / "zero_dt.nii", dt=0.0)
  capsys.readouterr()
  case = nifti.read_scan(tmp_path / "zero_dt.nii")
  np.testing.assert_array_equal(case.frame_times_s, np.arange(T) * 1.0)
  assert case.params["frame_interval_source"] == "default"
  # One plain line on stderr, with advice that holds for every caller: no Python warning, no
  # suggestion of a flag or argument the caller may not have.
  err = capsys.readouterr().err
  assert err.splitlines() == [
      f"warning: {tmp_path / 'zero_dt.nii'}: no usable frame interval in the header (pixdim[4] = "
      f"0, time unit 'sec'); assuming 1.0 s per frame; {nifti.INTERVAL_ADVICE}"], err
  assert "pixdim[4]" in nifti.INTERVAL_ADVICE and "frame_interval_s" not in err
  assert not recwarn.list
  case = nifti.read_scan(tmp_path / "zero_dt.nii", frame_interval_s=2.0)  # no warning
  np.testing.assert_array_equal(case.frame_times_s, np.arange(T) * 2.0)
  # A caller's own advice ends the line; a file is warned about once per process.
  save(scan, tmp_path / "zero_dt_2.nii", dt=0.0)
  nifti.read_scan(tmp_path / "zero_dt_2.nii", interval_advice="use --its-flag")
  nifti.read_scan(tmp_path / "zero_dt_2.nii", interval_advice="use --its-flag")
  (line,) = capsys.readouterr().err.splitlines()
  assert line.startswith(f"warning: {tmp_path / 'zero_dt_2.nii'}: ")
  assert line.endswith("; use --its-flag")
  assert not recwarn.list


def test_trailing_singleton_map_is_squeezed(tmp_path):
  case_dir = nifti.write_isles_case(make_case(), tmp_path, 1)
  path = role_file(case_dir, "mtt")
  img = nib.load(str(path), mmap=False)
  data = np.asarray(img.dataobj)[..., None]
  nib.save(nib.Nifti1Image(data, img.affine, img.header), str(path))
  assert nifti.read_case(case_dir).maps["mtt"].shape == (S, H, W)


# ------------------------------------------------------------------------------------------------
# Bad input: each case builds a bad dataset, runs the reader or writer, and names what to expect.


def _written(tmp_path, **kwargs) -> pathlib.Path:
  return nifti.write_isles_case(make_case(**kwargs), tmp_path, 1)


def bad_missing_case_folder(tmp_path):
  return lambda: nifti.read_case(tmp_path / "case_99"), "case_99", "does not exist"


def bad_missing_root(tmp_path):
  return lambda: nifti.find_cases(tmp_path / "nowhere"), "nowhere", "does not exist"


def bad_no_cases(tmp_path):
  (tmp_path / "empty" / "case_1").mkdir(parents=True)
  return lambda: nifti.find_cases(tmp_path / "empty"), "empty", "no case found"


def bad_missing_map(tmp_path):
  case_dir = _written(tmp_path)
  shutil.rmtree(role_file(case_dir, "tmax").parent)
  return lambda: nifti.read_case(case_dir), "case_1", "missing tmax map"


def bad_two_files_for_a_role(tmp_path):
  case_dir = _written(tmp_path)
  path = role_file(case_dir, "cbv")
  shutil.copy(path, path.with_name(path.name + ".gz"))
  return lambda: nifti.read_case(case_dir), "case_1", "more than one file"


def bad_3d_scan(tmp_path):
  case_dir = _written(tmp_path)
  path = role_file(case_dir, "scan")
  save(np.zeros((H, W, S), np.int16), path)
  return lambda: nifti.read_case(case_dir), path.name, "3D"


def bad_4d_map(tmp_path):
  case_dir = _written(tmp_path)
  path = role_file(case_dir, "cbf")
  save(np.zeros((H, W, S, 2), np.float32), path)
  return lambda: nifti.read_case(case_dir), path.name, "expected a 3D map"


def bad_truncated_gz(tmp_path):
  case_dir = _written(tmp_path)
  path = role_file(case_dir, "scan")
  gz = path.with_name(path.name + ".gz")
  nib.save(nib.load(str(path)), str(gz))
  path.unlink()
  raw = gz.read_bytes()
  assert gzip.decompress(raw)  # a real .nii.gz
  gz.write_bytes(raw[:len(raw) // 2])
  return lambda: nifti.read_case(case_dir), gz.name, "truncated or corrupt"


def bad_truncated_nii(tmp_path):
  case_dir = _written(tmp_path)
  path = role_file(case_dir, "cbv")
  raw = path.read_bytes()
  path.write_bytes(raw[:len(raw) - 100])
  return lambda: nifti.read_case(case_dir), path.name, "truncated or corrupt"


def bad_nan_voxels(tmp_path):
  case_dir = _written(tmp_path)
  path = role_file(case_dir, "scan")
  data = np.zeros((H, W, S, T), np.float32)
  data[0, 0, 0, :3] = np.nan
  data[1, 1, 1, 1] = np.inf
  save(data, path)
  return lambda: nifti.read_case(case_dir), path.name, "(3 NaN, 1 Inf)"


def bad_map_shape(tmp_path):
  case_dir = _written(tmp_path)
  path = role_file(case_dir, "cbv")
  save(np.zeros((H - 1, W, S), np.float32), path)
  return lambda: nifti.read_case(case_dir), path.name, "does not match the scan's"


def bad_unknown_layout(tmp_path):
  _written(tmp_path)
  return lambda: nifti.find_cases(tmp_path, layout="isles2019"), "isles2019", "isles2018"


def bad_unknown_role(tmp_path):
  return (lambda: nifti.find_cases(tmp_path, "folder", {"scan": "*.nii", "ttp": "ttp.nii"}),
          "ttp", "unknown role")


def bad_one_frame(tmp_path):
  case_dir = _written(tmp_path)
  path = role_file(case_dir, "scan")
  save(np.zeros((H, W, S, 1), np.int16), path)
  return lambda: nifti.read_case(case_dir), path.name, "at least 2 frames"


def bad_existing_case_folder(tmp_path):
  _written(tmp_path)
  return lambda: nifti.write_isles_case(make_case(), tmp_path, 1), "case_1", "already exists"


def bad_output_root_under_a_file(tmp_path):
  (tmp_path / "a_file").write_text("x")
  return (lambda: nifti.write_isles_case(make_case(), tmp_path / "a_file" / "out", 1), "a_file",
          "cannot create")


BAD_INPUTS = [bad_missing_case_folder, bad_missing_root, bad_no_cases, bad_missing_map,
              bad_two_files_for_a_role, bad_3d_scan, bad_4d_map, bad_truncated_gz,
              bad_truncated_nii, bad_nan_voxels, bad_map_shape, bad_unknown_layout,
              bad_unknown_role, bad_one_frame, bad_existing_case_folder,
              bad_output_root_under_a_file]


@pytest.mark.parametrize("make_bad", BAD_INPUTS, ids=lambda f: f.__name__[4:])
def test_bad_input_raises_clear_error(tmp_path, make_bad):
  action, name, keyword = make_bad(tmp_path)
  with pytest.raises(InputError) as info:
    action()
  message = str(info.value)
  assert name in message and keyword in message, message


def test_cli_reports_bad_input_without_traceback(tmp_path):
  case_dir = _written(tmp_path)
  shutil.rmtree(role_file(case_dir, "cbf").parent)
  result = subprocess.run([sys.executable, "-m", "pkd_jax.tools.validate", str(tmp_path)],
                          capture_output=True, text=True, timeout=60,
                          cwd=pathlib.Path(__file__).resolve().parents[1])
  assert result.returncode == 2, result.stderr
  assert result.stderr.splitlines() == [
      f"error: {case_dir}: missing cbf map: no NIfTI file (.nii or .nii.gz) matches the cbf "
      f"pattern {nifti.LAYOUTS['isles2018'].patterns['cbf']!r}"]
  assert result.stdout.splitlines()[-1].startswith("1 cases: 0 valid, 1 invalid")


def test_cli_summary(tmp_path, capsys):
  nifti.write_isles_dataset([make_case(0), make_case(1)], tmp_path)
  shutil.rmtree(role_file(tmp_path / "case_2", "tmax").parent)
  validate.main([str(tmp_path), "--no-maps"])
  lines = capsys.readouterr().out.splitlines()
  assert len(lines) == 3
  assert lines[0].startswith("case_1: (S, T, H, W) = (3, 6, 16, 16), frame interval 1.3 s")
  assert "maps: tmax, cbv, cbf, mtt" in lines[0] and "maps: cbv, cbf, mtt" in lines[1]
  assert lines[2] == f"2 cases: 2 valid, 0 invalid; 6 slices in the valid ones; read {tmp_path}"
  with pytest.raises(SystemExit) as info:
    validate.main([str(tmp_path), "--pattern", "tmax"])
  assert info.value.code == 2
  assert "--pattern: expected ROLE=GLOB" in capsys.readouterr().err


@pytest.mark.parametrize("error", [OSError("disk full"), RuntimeError("boom")])
def test_failed_write_leaves_no_partial_folder(tmp_path, monkeypatch, error):
  save_calls = []
  real_save = nib.save

  def failing_save(img, filename):
    save_calls.append(filename)
    if len(save_calls) == 3:
      raise error
    real_save(img, filename)

  monkeypatch.setattr(nib, "save", failing_save)
  with pytest.raises(InputError if isinstance(error, OSError) else RuntimeError) as info:
    nifti.write_isles_case(make_case(), tmp_path, 1)
  if isinstance(error, OSError):
    assert "case_1" in str(info.value) and "disk full" in str(info.value)
  assert len(save_calls) == 3
  assert os.listdir(tmp_path) == []


def test_failed_overwrite_keeps_the_old_case(tmp_path, monkeypatch):
  old = make_case(0)
  case_dir = nifti.write_isles_case(old, tmp_path, 1)

  def failing_save(img, filename):
    raise OSError("disk full")

  monkeypatch.setattr(nib, "save", failing_save)
  with pytest.raises(InputError):
    nifti.write_isles_case(make_case(1), tmp_path, 1, overwrite=True)
  monkeypatch.undo()
  assert os.listdir(tmp_path) == ["case_1"]
  np.testing.assert_array_equal(nifti.read_case(case_dir).scan_hu, old.scan_hu)
  new = make_case(1)
  nifti.write_isles_case(new, tmp_path, 1, overwrite=True)
  assert os.listdir(tmp_path) == ["case_1"]
  np.testing.assert_array_equal(nifti.read_case(case_dir).scan_hu, new.scan_hu)


# ------------------------------------------------------------------------------------------------
# A header that claims more voxels than its file holds: an error before any voxel is read.


def header_only_nifti(path: pathlib.Path, shape, padding: int = 64) -> pathlib.Path:
  """A NIfTI-1 file whose header claims int16 voxels of shape, followed by `padding` zero bytes."""
  hdr = nib.Nifti1Header()
  hdr.set_data_shape(shape)
  hdr.set_data_dtype(np.int16)
  hdr.set_xyzt_units("mm", "sec")
  hdr.set_zooms((0.9, 0.9, 5.0, 1.5)[:len(shape)])
  hdr["vox_offset"] = 352
  raw = hdr.binaryblock + bytes(4 + padding)  # 348-byte header, 4-byte extension flag, "data"
  path.write_bytes(gzip.compress(raw) if path.name.endswith(".gz") else raw)
  return path


# (file name, claimed shape, what the file is said to hold). 72 GB is above the gzip trailer's
# 4 GiB, so the .nii.gz bound there is deflate's expansion; 80 MB is below, read off the trailer.
HUGE_HEADERS = [
    ("huge.nii", (30000, 30000, 1, 40), "(72 GB from byte 352) but the file holds only 416 bytes"),
    ("huge.nii.gz", (30000, 30000, 1, 40), "(72 GB from byte 352) but the file holds only "),
    ("large.nii.gz", (1000, 1000, 1, 40), "(80 MB from byte 352) but the file holds only 416 "
     "bytes uncompressed"),
]


@pytest.mark.parametrize("name, shape, holds", HUGE_HEADERS, ids=[h[0] for h in HUGE_HEADERS])
def test_header_claiming_more_voxels_than_the_file_holds(tmp_path, name, shape, holds):
  path = header_only_nifti(tmp_path / name, shape)
  claim = f"{path}: the header claims {' x '.join(map(str, shape))} int16 voxels "
  with pytest.raises(InputError) as info:
    nifti.read_scan(path)
  message = str(info.value)
  assert message.startswith(claim) and holds in message, message
  assert message.endswith(": truncated or corrupt"), message
  if name == "huge.nii.gz":
    assert "compressed (deflate expands at most 1032-fold" in message, message
  # In a case folder, and from the header alone (the training pipeline's first look at a case).
  case_dir = _written(tmp_path / "data")
  scan_path = role_file(case_dir, "scan")
  scan_path.unlink()
  shutil.copy(path, scan_path.with_name(scan_path.stem + name[name.index("."):]))
  for action in (lambda: nifti.read_case(case_dir), lambda: nifti.scan_shape(case_dir)):
    with pytest.raises(InputError, match="the header claims"):
      action()


def test_gzip_of_several_members_is_read(tmp_path):
  """The trailer holds only the last member's size: a short one is counted, not refused."""
  case = make_case()
  case_dir = nifti.write_isles_case(case, tmp_path, 1)
  scan_path = role_file(case_dir, "scan")
  raw = scan_path.read_bytes()
  scan_path.with_name(scan_path.name + ".gz").write_bytes(
      gzip.compress(raw[:1000]) + gzip.compress(raw[1000:]))
  scan_path.unlink()
  np.testing.assert_array_equal(nifti.read_case(case_dir).scan_hu, case.scan_hu)


# ------------------------------------------------------------------------------------------------
# Finding cases: ISLES 2018's TRAINING / TESTING, incomplete case folders, exclusions.


def test_find_cases_reads_a_split_of_the_isles_root(tmp_path):
  nifti.write_isles_dataset([make_case(0), make_case(1)], tmp_path / "TRAINING")
  nifti.write_isles_dataset([make_case(2)], tmp_path / "TESTING")
  found = nifti.find_cases(tmp_path)
  assert [p.name for p in found] == ["case_1", "case_2"] and len(found) == 2
  assert found.split == "training" and found.folder == tmp_path / "TRAINING"
  assert found.splits == ("training", "testing")
  testing = nifti.find_cases(tmp_path, split="testing")
  assert list(testing) == [tmp_path / "TESTING" / "case_1"] and testing.split == "testing"
  shutil.rmtree(tmp_path / "TRAINING")
  assert nifti.find_cases(tmp_path).split == "testing"  # the only one there
  with pytest.raises(InputError, match=r"has no TRAINING folder \(split 'training' asked for\); "
                     "it has TESTING"):
    nifti.find_cases(tmp_path, split="training")
  with pytest.raises(InputError, match="unknown split 'train'; valid splits: training, testing"):
    nifti.find_cases(tmp_path, split="train")
  flat = nifti.find_cases(tmp_path / "TESTING")  # case folders of its own: no split
  assert flat.split is None and flat.folder == tmp_path / "TESTING" and len(flat) == 1


def test_incomplete_case_folder_is_named_unless_excluded(tmp_path):
  nifti.write_isles_dataset([make_case(0), make_case(1), make_case(2)], tmp_path)
  shutil.rmtree(role_file(tmp_path / "case_2", "scan").parent)  # no 4DPWI: was skipped silently
  with pytest.raises(InputError) as info:
    nifti.find_cases(tmp_path)
  message = str(info.value)
  assert message.startswith(f"{tmp_path / 'case_2'}: missing scan: no NIfTI file"), message
  # With the maps required (training), every incomplete folder and all it lacks, in one error.
  shutil.rmtree(role_file(tmp_path / "case_3", "tmax").parent)
  shutil.rmtree(role_file(tmp_path / "case_3", "cbf").parent)
  with pytest.raises(InputError) as info:
    nifti.find_cases(tmp_path, require_maps=True)
  assert str(info.value) == (f"{tmp_path}: 2 case folders lack a required file: case_2 (no scan); "
                             "case_3 (no tmax map, cbf map); add the files or exclude these case "
                             "folders by name")
  without_maps = nifti.find_cases(tmp_path, exclude=["case_2"])  # case_3 has its scan
  assert list(without_maps) == [tmp_path / "case_1", tmp_path / "case_3"]
  found = nifti.find_cases(tmp_path, exclude=["case_2", "case_3"], require_maps=True)
  assert list(found) == [tmp_path / "case_1"]
  assert found.excluded == (tmp_path / "case_2", tmp_path / "case_3")
  assert list(nifti.find_cases(tmp_path, exclude="case_2")) == [tmp_path / "case_1",
                                                                 tmp_path / "case_3"]
  everything = nifti.find_cases(tmp_path, complete=False)  # for a caller that reports each case
  assert [p.name for p in everything] == ["case_1", "case_2", "case_3"]
  with pytest.raises(InputError, match=r"exclude: not a case folder of .*: 'case_9'"):
    nifti.find_cases(tmp_path, exclude=["case_9"])


def test_training_source_refuses_an_incomplete_case_unless_excluded(tmp_path):
  from configs import base
  from pkd_jax.data import pipeline

  nifti.write_isles_dataset([make_case(0), make_case(1)], tmp_path / "train")
  shutil.rmtree(role_file(tmp_path / "train" / "case_2", "scan").parent)
  data = base.get_config().data
  data.source, data.root = "nifti", str(tmp_path)
  with pytest.raises(InputError, match=f"{tmp_path / 'train' / 'case_2'}: missing scan"):
    pipeline.make_source(data, "train")
  data.exclude = ("train/case_2", "test/case_5")  # another split's entries are left to it
  source = pipeline.make_source(data, "train")
  assert list(source.case_dirs) == [tmp_path / "train" / "case_1"] and len(source) == S
  data.exclude = ("case_2",)
  with pytest.raises(InputError, match="config.data.exclude: each entry is SPLIT/CASE_FOLDER"):
    pipeline.make_source(data, "train")
