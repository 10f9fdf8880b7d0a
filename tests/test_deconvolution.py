"""The classical SVD deconvolution reference against the phantom's exact ground truth."""

import dataclasses

import jax
import numpy as np
import pytest

from pkd_jax import deconvolution
from pkd_jax.data import phantom
from pkd_jax.errors import InputError

CONFIG = phantom.PhantomConfig(
    height=48, width=48, num_slices=2, noise=False, residue_shapes=("exponential",),
    residue_weights=(1.0,), frame_interval_s=(1.0, 1.0), num_frames=80,
    lesion_count_weights=(1, 0, 0))


@pytest.fixture(scope="module")
def case():
  return phantom.generate_case(CONFIG, 0, 0)


def _enhancement(case, mask):
  """(V, T) baseline-subtracted (frame 0; noise-free) tissue curves of the voxels in mask."""
  curves = np.moveaxis(case.scan_hu, 1, -1)[mask].astype(np.float64)
  return curves - curves[:, :1]


def _truncated_svd_solve(matrix, curves, threshold):
  """k with matrix @ k = curve for each row of curves; singular values < threshold * max cut."""
  u, s, vh = np.linalg.svd(matrix)
  inv_s = np.where(s >= threshold * s[0], 1.0 / s, 0.0)
  return curves @ (u * inv_s) @ vh  # rows: (V diag(1/s) U^T curve)^T


def test_bsvd_recovers_phantom_maps_at_full_resolution(case):
  brain = case.masks["brain"]
  maps = deconvolution.perfusion_maps(case.scan_hu, case.aif_hu, case.frame_times_s, brain)
  for key in ("tmax", "cbv", "cbf", "mtt"):
    assert maps[key].shape == brain.shape and maps[key].dtype == np.float32
    assert np.all(np.isfinite(maps[key])) and np.all(maps[key][~brain] == 0)
  truth = case.maps
  cbv_ratio = np.median(maps["cbv"][brain] / truth["cbv"][brain])
  cbf_ratio = np.median(maps["cbf"][brain] / truth["cbf"][brain])
  tmax_error = np.median(np.abs(maps["tmax"][brain] - truth["tmax"][brain])) / case.frame_interval_s
  # CBV comes from the area ratio, which the generator holds exact: measured 0.997.
  assert abs(cbv_ratio - 1.0) < 0.1
  # Truncated SVD underestimates CBF (the residue's peak is smoothed away): measured 0.83 here
  # (0.61-0.83 over cases 0-5 of seed 0; 0.86 even at threshold 0.005, a discretisation bias).
  assert 0.6 < cbf_ratio < 1.0
  # Tmax comes out late: the truncation smooths the residue's sharp onset at the delay, moving its
  # maximum later. Measured 1.57 frames here (1.6-2.6 over cases 0-5 of seed 0 at threshold
  # 0.1; 1.0-1.7 at 0.02); a sub-frame delay alone costs up to 1 frame (k is sampled on frames).
  assert tmax_error <= 2.0
  mtt_ratio = np.median(maps["mtt"][brain] / truth["mtt"][brain])
  assert 1.0 < mtt_ratio < 1.0 / 0.6 + 0.1  # CBV right, CBF low: MTT high by about 1 / cbf_ratio


def test_bsvd_equals_float64_block_circulant_svd(case):
  """The JAX bSVD is the textbook block-circulant truncated SVD (numpy float64, in this test)."""
  brain = case.masks["brain"]
  curves = _enhancement(case, brain)[::50]
  aif = case.aif_hu.astype(np.float64)
  num_frames = len(aif)
  length = 2 * num_frames
  padded = np.concatenate([aif, np.zeros(num_frames)])
  lag = (np.arange(length)[:, None] - np.arange(length)[None, :]) % length
  matrix = case.frame_interval_s * padded[lag]
  curves_padded = np.concatenate([curves, np.zeros_like(curves)], axis=1)
  scaled = _truncated_svd_solve(matrix, curves_padded, 0.1)
  expected = phantom.K_H / phantom.RHO_G_PER_ML * scaled
  out = deconvolution.bsvd(curves.astype(np.float32), aif.astype(np.float32), case.frame_interval_s)
  residue = np.asarray(out["residue"])
  # float32 SVD of an 160 x 160 matrix: agreement to ~1e-4 of the residue's peak.
  np.testing.assert_allclose(residue, expected, atol=2e-3 * np.abs(expected).max())
  np.testing.assert_allclose(np.asarray(out["cbf"]), 6000 * expected.max(axis=1), rtol=5e-3)
  np.testing.assert_array_equal(np.asarray(out["tmax"]),
                                expected.argmax(axis=1) * case.frame_interval_s)


def test_bsvd_agrees_with_plain_toeplitz_svd_where_delay_is_small(case):
  brain = case.masks["brain"]
  small_delay = np.argsort(case.maps["delay"][brain])[:8]  # the 8 voxels with the least delay
  curves = _enhancement(case, brain)[small_delay]
  aif = case.aif_hu.astype(np.float64)
  num_frames = len(aif)
  lag = np.arange(num_frames)[:, None] - np.arange(num_frames)[None, :]
  toeplitz = case.frame_interval_s * np.where(lag >= 0, aif[np.clip(lag, 0, None)], 0.0)
  residue = phantom.K_H / phantom.RHO_G_PER_ML * _truncated_svd_solve(toeplitz, curves, 0.1)
  out = deconvolution.bsvd(curves.astype(np.float32), aif.astype(np.float32), case.frame_interval_s)
  # Not identical: the T x T lower-triangular matrix has a different singular spectrum from the
  # 2T x 2T circulant one, so the same 10% cut filters slightly differently. Measured: CBF 3%
  # apart on these voxels (up to 7% over the whole brain), Tmax on the same frame. With small
  # delays the Toeplitz method's known delay sensitivity does not come in.
  np.testing.assert_allclose(6000 * residue.max(axis=1), np.asarray(out["cbf"]), rtol=0.1)
  np.testing.assert_allclose(residue.argmax(axis=1) * case.frame_interval_s,
                             np.asarray(out["tmax"]), atol=case.frame_interval_s)


def test_tmax_wraps_when_tissue_leads_the_aif():
  """Block-circulant: a residue peaking 2 frames before the AIF's start gives Tmax = -2 frames."""
  num_frames, dt = 40, 1.5
  times = np.arange(num_frames) * dt
  aif = phantom.gamma_variate(times, 6.0, 3.0, 1.5, 300.0)
  frames = np.arange(num_frames)
  residue = 0.01 * (frames / 4.0) ** 2 * np.exp(2.0 - frames / 2.0)  # F R, smooth, peak at frame 4
  tissue = phantom.RHO_G_PER_ML / phantom.K_H * dt * np.convolve(aif, residue)[:num_frames]
  on_time = deconvolution.bsvd(tissue[None].astype(np.float32), aif.astype(np.float32), dt)
  assert float(on_time["tmax"][0]) == pytest.approx(4 * dt)
  late_aif = np.concatenate([np.zeros(6), aif[:-6]])  # the AIF seen 6 frames later
  out = deconvolution.bsvd(tissue[None].astype(np.float32), late_aif.astype(np.float32), dt)
  assert float(out["tmax"][0]) == pytest.approx(-2 * dt)
  np.testing.assert_allclose(float(out["cbf"][0]), float(on_time["cbf"][0]), rtol=0.02)


def test_bsvd_is_jittable():
  rng = np.random.default_rng(0)
  aif = phantom.gamma_variate(np.arange(20.0), 3.0, 3.0, 1.5, 200.0).astype(np.float32)
  tissue = rng.normal(size=(5, 20)).astype(np.float32)
  eager = deconvolution.bsvd(tissue, aif, 1.0)
  jitted = jax.jit(deconvolution.bsvd)(tissue, aif, 1.0, 0.1)
  np.testing.assert_allclose(np.asarray(jitted["cbf"]), np.asarray(eager["cbf"]), rtol=1e-5)


def test_osvd_runs_and_gives_finite_maps(case):
  brain = case.masks["brain"]
  maps = deconvolution.perfusion_maps(case.scan_hu, case.aif_hu, case.frame_times_s, brain,
                                      method="osvd")
  for key in ("tmax", "cbv", "cbf", "mtt"):
    assert np.all(np.isfinite(maps[key])) and np.all(maps[key][~brain] == 0)
  assert np.median(maps["cbf"][brain]) > 0
  out = deconvolution.osvd(_enhancement(case, brain)[:10].astype(np.float32), case.aif_hu,
                           case.frame_interval_s)
  thresholds = np.asarray(out["threshold"])
  assert np.all(np.isclose(thresholds[:, None], deconvolution.OSVD_THRESHOLDS).any(axis=1))
  chosen_ok = np.asarray(out["oscillation_index"]) < deconvolution.DEFAULT_OI_THRESHOLD
  assert np.all(chosen_ok | np.isclose(np.asarray(out["threshold"]), 0.95))


def test_oscillation_index_is_wus_mean_absolute_second_difference_over_the_peak():
  rng = np.random.default_rng(3)
  residues = rng.uniform(0, 1, (2, 4, 12)).astype(np.float64)
  residues[1, 3] = -1.0  # no positive peak: infinite, never chosen
  second = residues[..., 2:] - 2 * residues[..., 1:-1] + residues[..., :-2]
  expected = np.abs(second).sum(-1) / (12 * residues.max(-1))
  expected[1, 3] = np.inf
  got = np.asarray(deconvolution.oscillation_index(jax.numpy.asarray(residues, "float32")))
  np.testing.assert_allclose(got, expected, rtol=1e-5)


def test_select_aif_finds_an_artery(case):
  aif, coords = deconvolution.select_aif(case.scan_hu, case.masks["brain"],
                                         frame_times_s=case.frame_times_s)
  assert aif.shape == (case.num_frames,) and coords.shape == (4, 3)
  s, y, x = coords.T
  assert np.all(case.masks["vessel"][s, y, x])
  assert np.all(case.labels[s, y, x] == phantom.LABELS["artery"])  # not the venous sinus
  # Partial volume scales the AIF down (factor 0.3-1.0), never up; the shape is the true AIF's.
  scale = aif.max() / case.aif_hu.max()
  assert 0.3 <= scale <= 1.01
  np.testing.assert_allclose(aif / scale, case.aif_hu, atol=0.02 * case.aif_hu.max())


def test_select_aif_with_noise_still_finds_vessels():
  noisy = phantom.generate_case(dataclasses.replace(CONFIG, noise=True, mas=(60.0, 60.0)), 0, 0)
  _, coords = deconvolution.select_aif(noisy.scan_hu, noisy.masks["brain"],
                                       frame_times_s=noisy.frame_times_s)
  s, y, x = coords.T
  assert np.all(noisy.masks["vessel"][s, y, x])


def test_bad_input_names_the_parameter(case):
  args = (case.scan_hu, case.aif_hu, case.frame_times_s, case.masks["brain"])
  with pytest.raises(InputError, match="aif_hu"):
    deconvolution.perfusion_maps(case.scan_hu, case.aif_hu[:-1], *args[2:])
  with pytest.raises(InputError, match="aif_hu"):
    deconvolution.bsvd(np.zeros((3, 10)), np.ones(9), 1.0)
  with pytest.raises(InputError, match="frame_interval_s"):
    deconvolution.bsvd(np.zeros((3, 10)), np.ones(10), 0.0)
  with pytest.raises(InputError, match="frame_interval_s"):
    deconvolution.osvd(np.zeros((3, 10)), np.ones(10), -1.0)
  with pytest.raises(InputError, match="frame_times_s"):
    deconvolution.perfusion_maps(*args[:2], np.zeros(case.num_frames), args[3])
  with pytest.raises(InputError, match="method"):
    deconvolution.perfusion_maps(*args, method="tikhonov")
  with pytest.raises(InputError, match="threshold"):
    deconvolution.perfusion_maps(*args, threshold=1.5)
  with pytest.raises(InputError, match="brain_mask"):
    deconvolution.perfusion_maps(*args[:3], args[3][0])
  with pytest.raises(InputError, match="noise_mas"):
    deconvolution.degradation_report(case, factors=(1,), noise_mas=(None, 60.0))


def test_degradation_report_gives_finite_numbers(case):
  rows = deconvolution.degradation_report(case, factors=(1, 16), noise_mas=(None,))
  assert [r["factor"] for r in rows] == [1, 16]
  for row in rows:
    for key in ("cbv_ratio", "cbf_ratio", "tmax_median_abs_error_s", "tmax_median_abs_error_frames",
                "aif_peak_hu"):
      assert np.isfinite(row[key]), (row, key)
    assert row["noise_mas"] is None and row["num_voxels"] > 0
  assert "1/16" in deconvolution.format_report(rows)


# ----------------------------------------------------------------------------------------------
# Smoothing, the clinical pipeline and the TTP floor (small: 32 x 32, 2 slices, 40 frames of 1.5 s).

SMALL = phantom.PhantomConfig(height=32, width=32, num_slices=2, num_frames=40,
                              frame_interval_s=(1.5, 1.5), lesion_count_weights=(0, 1, 0))


def test_variants_equal_perfusion_maps(case):
  brain = case.masks["brain"]
  args = (case.scan_hu, case.aif_hu, case.frame_times_s, brain)
  variants = deconvolution.perfusion_maps_variants(*args, [("bsvd", 0.1), ("osvd", 0.035)])
  for got, kwargs in zip(variants, (dict(method="bsvd", threshold=0.1),
                                    dict(method="osvd", oi_threshold=0.035))):
    expected = deconvolution.perfusion_maps(*args, **kwargs)
    for key in ("cbv", "cbf", "mtt"):
      np.testing.assert_allclose(got[key], expected[key], rtol=1e-4, atol=1e-4)
    assert np.mean(got["tmax"] == expected["tmax"]) > 0.999  # argmax ties may flip in float32
  with pytest.raises(InputError, match="threshold"):
    deconvolution.perfusion_maps_variants(*args, [("bsvd", 0.12)])  # not a candidate


def test_smooth_series_stays_in_the_mask_and_reduces_noise():
  rng = np.random.default_rng(0)
  mask = np.zeros((1, 24, 24), bool)
  mask[0, 4:20, 4:20] = True
  scan = np.where(mask[:, None], 30.0, 1000.0) + rng.normal(0, 5, (1, 10, 24, 24))
  smoothed = deconvolution.smooth_series(scan, mask, spatial_sigma_px=2.0,
                                         temporal_sigma_frames=1.0)
  inside = smoothed[:, :, mask[0]]
  # Normalised in the mask: the 1000 HU "skull" around it does not leak in (plain Gaussian
  # smoothing would raise the edge voxels by hundreds of HU).
  assert abs(inside.mean() - 30.0) < 0.5 and inside.max() < 40.0
  assert inside.std() < 0.2 * scan[:, :, mask[0]].std()
  spatial_only = deconvolution.smooth_series(scan, mask, spatial_sigma_px=2.0)
  np.testing.assert_array_equal(spatial_only[:, :, ~mask[0]],
                                scan[:, :, ~mask[0]].astype(np.float32))
  np.testing.assert_allclose(deconvolution.smooth_series(scan, mask), scan.astype(np.float32))


def test_smoothed_osvd_beats_raw_bsvd_on_a_noisy_phantom():
  noisy = phantom.generate_case(dataclasses.replace(SMALL, mas=(100.0, 100.0)), 0, 0)
  brain = noisy.masks["brain"]
  args = (noisy.scan_hu, noisy.aif_hu, noisy.frame_times_s, brain)

  def tmax_rmse(maps):  # in the brain, clipped to the metrics' [0, 20] s
    return float(np.sqrt(np.mean((np.clip(maps["tmax"][brain], 0, 20)
                                  - noisy.maps["tmax"][brain]) ** 2)))

  raw_bsvd = tmax_rmse(deconvolution.perfusion_maps(*args))
  raw_osvd = tmax_rmse(deconvolution.classical_maps(*args, "osvd", 0.095))
  smoothed = tmax_rmse(deconvolution.classical_maps(*args, "osvd", 0.095, spatial_sigma_px=2.0,
                                                    temporal_sigma_s=1.5))
  # Measured: raw bSVD 12.8 s, raw oSVD 9.6 s, smoothed oSVD 4.3 s (cases 0-3: 3.9-5.7 s).
  assert smoothed < 0.6 * raw_bsvd
  assert smoothed < 0.7 * raw_osvd  # the smoothing itself, not oSVD alone


def test_ttp_tmax_follows_true_tmax_and_is_zero_outside_the_brain():
  clean = phantom.generate_case(dataclasses.replace(SMALL, noise=False), 0, 0)
  brain = clean.masks["brain"]
  tmax = deconvolution.ttp_tmax(clean.scan_hu, clean.aif_hu, clean.frame_times_s, brain,
                                spatial_sigma_px=1.0, temporal_sigma_s=1.5)
  assert tmax.shape == brain.shape and np.all(tmax[~brain] == 0) and np.all(tmax >= 0)
  # Measured 0.99 (cases 0-3: 0.98-0.99): lesion delays dominate the spread of Tmax.
  assert np.corrcoef(tmax[brain], clean.maps["tmax"][brain])[0, 1] > 0.8
  assert np.median(tmax[brain] - clean.maps["tmax"][brain]) >= 0  # TTP reads late, never early
