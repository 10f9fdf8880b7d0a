"""Preprocessing: resampling in time and space, normalisation, the brain mask."""

import dataclasses

import numpy as np
import pytest

from pkd_jax.data import phantom as ph
from pkd_jax.data import preprocess as pp
from pkd_jax.errors import InputError


def test_resample_time_interpolates_in_real_frame_times_onto_the_grid():
  times = np.array([2.0, 3.0, 5.0, 6.0])  # irregular, starting at 2 s
  scan = np.broadcast_to((2 * times + 1)[None, :, None, None], (1, 4, 2, 2)).astype(np.float32)
  out, grid = pp.resample_time(scan, times, 5, 0.5, axis=1)
  np.testing.assert_allclose(grid, [0.0, 0.5, 1.0, 1.5, 2.0])  # seconds from the first frame
  np.testing.assert_allclose(out[0, :, 0, 0], 2 * (grid + 2.0) + 1, rtol=1e-6)  # linear is exact


def test_resample_time_holds_the_last_frame_of_a_short_acquisition_and_cuts_a_long_one():
  times = np.arange(4) * 2.0  # 0-6 s
  scan = np.broadcast_to(times[None, :, None, None], (1, 4, 1, 1)).astype(np.float32)
  short, grid = pp.resample_time(scan, times, 6, 1.5, axis=1)  # grid 0-7.5 s
  np.testing.assert_allclose(short[0, :, 0, 0], [0.0, 1.5, 3.0, 4.5, 6.0, 6.0], rtol=1e-6)
  long, _ = pp.resample_time(scan, times, 3, 1.0, axis=1)  # grid 0-2 s
  np.testing.assert_allclose(long[0, :, 0, 0], [0.0, 1.0, 2.0], rtol=1e-6)


def test_resample_time_leaves_a_scan_on_the_grid_untouched():
  scan = np.random.default_rng(0).normal(size=(1, 40, 3, 3)).astype(np.float32)
  out, _ = pp.resample_time(scan, 10.0 + np.arange(40) * 1.3, 40, 1.3, axis=1)
  assert out is scan


def test_resample_time_rejects_bad_times_and_intervals():
  with pytest.raises(InputError, match="increasing"):
    pp.resample_time(np.zeros((1, 3, 2, 2)), np.array([0.0, 2.0, 1.0]), 5, 1.0, axis=1)
  with pytest.raises(InputError, match="positive"):
    pp.resample_time(np.zeros((1, 3, 2, 2)), np.array([0.0, 1.0, 2.0]), 5, 0.0, axis=1)


@pytest.mark.parametrize("interval", [1.0, 1.6])
def test_any_frame_interval_lands_on_the_same_time_grid(interval):
  """Defect 2: a frame means 1.5 s in every preprocessed scan, whatever the acquisition's interval.

  The same noise-free phantom case acquired every 1.0 s or 1.6 s, once preprocessed, matches the
  case generated directly on the 1.5 s grid (up to linear interpolation of the smooth curves).
  """
  common = dict(height=32, width=32, num_frames=40, num_slices=1, noise=False)
  acquired = ph.generate_case(ph.PhantomConfig(frame_interval_s=(interval, interval), **common),
                              3, 0)
  on_grid = ph.generate_case(ph.PhantomConfig(frame_interval_s=(1.5, 1.5), **common), 3, 0)
  out = pp.preprocess_case(acquired, pp.Geometry(32, 32, 40, 1.5))
  np.testing.assert_allclose(out.frame_times_s, on_grid.frame_times_s - on_grid.frame_times_s[0])
  span = 40 * 1.5 if interval >= 1.5 else 39 * interval  # acquired seconds (shorter: held)
  covered = out.frame_times_s <= span
  error = np.abs(out.scan_hu - on_grid.scan_hu)[:, covered]
  enhancement = np.abs(on_grid.scan_hu - on_grid.scan_hu[:, :1]).max()
  assert error.max() < 0.1 * enhancement
  np.testing.assert_array_equal(out.maps["tmax"], on_grid.maps["tmax"])


def test_resample_inplane_keeps_constant_and_mask_values():
  image = np.full((2, 5, 30, 20), 7.0, np.float32)
  out = pp.resample_inplane(image, 64, 48)
  assert out.shape == (2, 5, 64, 48)
  np.testing.assert_allclose(out, 7.0)
  mask = np.zeros((1, 30, 20), bool)
  mask[0, 10:20, 5:15] = True
  out = pp.resample_inplane(mask, 60, 40, order=0)
  assert out.dtype == bool and out.sum() == 4 * mask.sum()


def test_normalisation_is_fixed_window():
  hu = np.array([-1000.0, -100.0, 0.0, 35.0, 700.0, 1200.0])
  np.testing.assert_allclose(pp.normalise_hu(hu), [-1.0, -1.0, 0.0, 0.35, 7.0, 7.0], rtol=1e-6)


def test_estimated_brain_mask_matches_phantom_truth():
  case = ph.generate_case(ph.PhantomConfig(height=128, width=128, num_slices=2), 4, 0)
  estimate = pp.estimate_brain_mask(case.scan_hu)
  truth = case.masks["brain"]
  dice = 2 * (estimate & truth).sum() / (estimate.sum() + truth.sum())
  assert dice > 0.9


def test_preprocess_case_reaches_geometry_and_estimates_mask():
  config = ph.PhantomConfig(height=64, width=48, num_frames=30, num_slices=2)
  case = ph.generate_case(config, 0, 1)
  case = dataclasses.replace(case, masks={})
  out = pp.preprocess_case(case, pp.Geometry(32, 32, 40))
  assert out.scan_hu.shape == (2, 40, 32, 32)
  assert out.maps["tmax"].shape == out.masks["brain"].shape == (2, 32, 32)
  assert out.masks["brain"].any()
  np.testing.assert_allclose(out.frame_times_s, np.arange(40) * 1.5)  # the default time grid
  assert out.params["original_shape"] == (2, 30, 64, 48)


def test_enhancement_input_keeps_frame_zero_and_amplifies_the_enhancement():
  series = np.zeros((5, 2, 2), np.float32) + 0.3  # 30 HU of tissue, normalised
  series[2:, 0, 0] += 0.05  # 5 HU of enhancement
  series[3, 1, 1] += 9.0  # an AIF voxel far above the window saturates
  out = pp.network_input(series, "enhancement", axis=0)
  np.testing.assert_allclose(out[0], series[0])  # the pre-bolus frame (anatomy) is kept
  np.testing.assert_allclose(out[2:, 0, 0], 0.3 + 0.5, rtol=1e-6)  # 10x: 5 HU is 0.5
  assert out[3, 1, 1] == pytest.approx(0.3 + 10 * pp.ENHANCEMENT_CLIP_HU[1] / 100)
  np.testing.assert_array_equal(pp.network_input(series, "hu", axis=0), series)
  with pytest.raises(InputError, match="input_norm"):
    pp.network_input(series, "zscore")
