"""Preprocessing: resampling in time and space, normalisation, the brain mask."""

import dataclasses

import numpy as np
import pytest

from pkd_jax.data import phantom as ph
from pkd_jax.data import preprocess as pp
from pkd_jax.errors import InputError


def test_resample_time_interpolates_in_real_frame_times():
  times = np.array([0.0, 1.0, 3.0, 4.0])  # irregular
  scan = np.broadcast_to((2 * times + 1)[None, :, None, None], (1, 4, 2, 2)).astype(np.float32)
  out, new_times = pp.resample_time(scan, times, 9, axis=1)
  np.testing.assert_allclose(new_times, np.linspace(0, 4, 9))
  np.testing.assert_allclose(out[0, :, 0, 0], 2 * new_times + 1, rtol=1e-6)  # linear is exact


def test_resample_time_leaves_uniform_scan_of_right_length_untouched():
  scan = np.random.default_rng(0).normal(size=(1, 40, 3, 3)).astype(np.float32)
  out, _ = pp.resample_time(scan, np.arange(40) * 1.3, 40, axis=1)
  assert out is scan


def test_resample_time_rejects_bad_times():
  with pytest.raises(InputError, match="increasing"):
    pp.resample_time(np.zeros((1, 3, 2, 2)), np.array([0.0, 2.0, 1.0]), 5, axis=1)


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
  assert out.frame_times_s[-1] == pytest.approx(case.frame_times_s[-1])
  assert out.params["original_shape"] == (2, 30, 64, 48)
