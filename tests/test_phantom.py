"""The phantom obeys indicator-dilution theory and is reproducible from (seed, index)."""

import dataclasses
import subprocess
import sys

import numpy as np
import pytest
from scipy import signal

from pkd_jax.data import phantom as ph

SMALL = ph.PhantomConfig(height=48, width=48, num_frames=40, num_slices=2)


def long_noise_free(shape: str) -> ph.PhantomConfig:
  """A window long enough (240 s) that every curve returns to baseline, one lesion per case."""
  return dataclasses.replace(SMALL, num_frames=240, frame_interval_s=(1.0, 1.0), noise=False,
                             residue_shapes=(shape,), residue_weights=(1.0,),
                             lesion_count_weights=(0.0, 1.0, 0.0), recirculation_probability=1.0)


@pytest.mark.parametrize("shape", ph.RESIDUE_SHAPES)
def test_area_ratio_equals_cbv(shape):
  """Noise-free: area(C_t) / area(C_a) = (rho / k_H) * CBV / 100 within 2% in every brain voxel."""
  for index in range(3):
    case = ph.generate_case(long_noise_free(shape), seed=7, index=index)
    brain = case.masks["brain"]
    enhancement = case.scan_hu - case.scan_hu[:, :1]  # frame 0 precedes the bolus
    dt = case.frame_interval_s
    area_tissue = enhancement.sum(axis=1)[brain] * dt
    area_aif = case.aif_hu.sum() * dt
    expected = ph.RHO_G_PER_ML / ph.K_H * case.maps["cbv"][brain] / 100
    assert brain.sum() > 300
    np.testing.assert_array_less(np.abs(area_tissue / area_aif / expected - 1), 0.02)


def _numeric_residue(t, shape, mtt, delay, dispersion):
  """The residue built independently: dispersion by numerical convolution, not the closed form."""
  tau = np.maximum(t - delay, 0)
  if shape == "box":
    r = (tau < mtt).astype(float)
  else:
    r = np.exp(-tau / mtt)
  r = np.where(t >= delay, r, 0.0)
  if shape == "dispersed":
    dt = t[1] - t[0]
    kernel = np.exp(-(t - t[0]) / dispersion) / dispersion * dt
    r = signal.fftconvolve(r, kernel)[:len(t)]
  return r


@pytest.mark.parametrize("shape", ph.RESIDUE_SHAPES)
def test_tmax_is_peak_of_residue_and_curves_are_its_convolution(shape):
  config = dataclasses.replace(long_noise_free(shape), num_frames=120)
  case = ph.generate_case(config, seed=3, index=1)
  rng = np.random.default_rng(0)
  ss, ys, xs = np.nonzero(case.masks["brain"])
  fine = np.arange(0, 60, 0.002)
  aif_fine = ph.arterial_curve(fine, case.params)
  for k in rng.choice(len(ss), size=12, replace=False):
    s, y, x = ss[k], ys[k], xs[k]
    mtt, delay = case.maps["mtt"][s, y, x], case.maps["delay"][s, y, x]
    residue = _numeric_residue(fine, shape, mtt, delay, case.params["dispersion_s"])
    assert case.maps["tmax"][s, y, x] == pytest.approx(fine[np.argmax(residue)], abs=0.01)
    # The tissue curve is (rho / k_H) F (C_a (*) R), by brute-force convolution.
    flow = case.maps["cbf"][s, y, x] / 6000
    conv = signal.fftconvolve(aif_fine, residue)[:len(fine)] * 0.002
    expected = ph.RHO_G_PER_ML / ph.K_H * flow * np.interp(case.frame_times_s, fine, conv)
    measured = case.scan_hu[s, :, y, x] - case.scan_hu[s, 0, y, x]
    np.testing.assert_allclose(measured[:55], expected[:55], atol=0.015 * expected.max())


def test_same_seed_and_index_give_identical_cases_in_any_order():
  forward = [ph.generate_case(SMALL, 5, i) for i in (0, 1, 2)]
  backward = [ph.generate_case(SMALL, 5, i) for i in (2, 1, 0)][::-1]
  for a, b in zip(forward, backward):
    np.testing.assert_array_equal(a.scan_hu, b.scan_hu)
    for key in a.maps:
      np.testing.assert_array_equal(a.maps[key], b.maps[key])
    assert a.params == b.params
  alone = ph.generate_slice(SMALL, 5, 1, slice_index=1)
  np.testing.assert_array_equal(alone["scan_hu"], forward[1].scan_hu[1])
  assert not np.array_equal(forward[0].scan_hu, forward[1].scan_hu)
  assert not np.array_equal(forward[0].maps["cbf"], forward[1].maps["cbf"])
  assert not np.array_equal(ph.generate_case(SMALL, 6, 0).scan_hu, forward[0].scan_hu)


def test_cases_vary_within_documented_ranges():
  params = [ph.case_parameters(ph.PhantomConfig(), 0, i) for i in range(40)]
  intervals = [p["frame_interval_s"] for p in params]
  assert 1.0 <= min(intervals) < max(intervals) <= 1.6
  assert {p["residue_shape"] for p in params} == set(ph.RESIDUE_SHAPES)
  assert {len(p["lesions"]) for p in params} == {0, 1, 2}
  assert all(150 <= p["aif"]["peak"] <= 500 and 2 <= p["aif"]["t0_s"] <= 10 for p in params)


def test_lesions_have_lower_cbf_and_penumbra_tmax_above_6s():
  config = dataclasses.replace(SMALL, height=64, width=64, num_slices=3,
                               lesion_count_weights=(0.0, 1.0, 0.0))
  seen = 0
  for index in range(4):
    case = ph.generate_case(config, 11, index)
    labels, cbf = case.labels, case.maps["cbf"]
    lesion = case.masks["core"] | case.masks["penumbra"]
    if not lesion.any():
      continue
    seen += 1
    for tissue in ("gray_matter", "white_matter"):
      same = case.masks["brain"] & (labels == ph.LABELS[tissue])
      for kind in ("penumbra", "core"):
        inside = same & case.masks[kind]
        if inside.sum() >= 5:
          assert cbf[inside].mean() < 0.6 * cbf[same & ~lesion].mean()
    pen = case.masks["penumbra"]
    assert case.maps["tmax"][pen].min() > 6.0
    healthy = case.masks["brain"] & ~lesion
    assert case.maps["tmax"][healthy].max() < case.maps["tmax"][pen].min()
  assert seen >= 2


def test_noise_variance_follows_dose():
  base = dataclasses.replace(SMALL, height=256, width=256, num_frames=12, num_slices=1)
  clean = ph.generate_case(dataclasses.replace(base, noise=False), 2, 0).scan_hu
  stds = {}
  for mas in (40.0, 120.0):
    noisy = ph.generate_case(dataclasses.replace(base, mas=(mas, mas)), 2, 0).scan_hu
    noise = (noisy - clean)[0]
    stds[mas] = noise.std()
    assert stds[mas] == pytest.approx(ph.noise_sigma_hu(mas), rel=0.03)
    # Spatially correlated, temporally independent.
    assert np.corrcoef(noise[:, :, :-1].ravel(), noise[:, :, 1:].ravel())[0, 1] > 0.2
    assert abs(np.corrcoef(noise[:-1].ravel(), noise[1:].ravel())[0, 1]) < 0.05
  ratio = (stds[40.0] / stds[120.0]) ** 2
  assert ratio == pytest.approx((ph.noise_sigma_hu(40.0) / ph.noise_sigma_hu(120.0)) ** 2, rel=0.06)
  assert ph.noise_sigma_hu(190.0) == 0.0


def test_show_writes_png(tmp_path):
  out = tmp_path / "case.png"
  result = subprocess.run([sys.executable, "-m", "pkd_jax.tools.phantom", "--show", "--out", str(out),
                           "--size", "64", "--slices", "2", "--case", "1"],
                          capture_output=True, text=True, check=False)
  assert result.returncode == 0, result.stderr
  assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
  assert not [p for p in tmp_path.iterdir() if p.name != "case.png"]


def test_show_into_missing_folder_is_a_clear_error(tmp_path):
  result = subprocess.run([sys.executable, "-m", "pkd_jax.tools.phantom", "--show", "--out",
                           str(tmp_path / "nope" / "case.png"), "--size", "32"],
                          capture_output=True, text=True, check=False)
  assert result.returncode == 2
  assert "nope" in result.stderr and "does not exist" in result.stderr
  assert "Traceback" not in result.stderr


def test_write_of_no_cases_is_a_clear_error_and_creates_nothing(tmp_path):
  result = subprocess.run([sys.executable, "-m", "pkd_jax.tools.phantom", "--write",
                           str(tmp_path / "out"), "--num-cases", "0", "--size", "32"],
                          capture_output=True, text=True, check=False)
  assert result.returncode == 2
  assert "--num-cases" in result.stderr and "at least 1" in result.stderr
  assert "Traceback" not in result.stderr and not (tmp_path / "out").exists()
