"""Metrics against independent computations; volumes, t-test, per-case scoring."""

import numpy as np
import pytest
from scipy import stats
from skimage.metrics import peak_signal_noise_ratio, structural_similarity

from pkd_jax import evaluate


@pytest.mark.parametrize("data_range", [1.0, 24.0, 200.0])
def test_ssim_and_psnr_equal_scikit_image(data_range):
  rng = np.random.default_rng(int(data_range))
  pred = rng.uniform(0, data_range, (3, 32, 40)).astype(np.float32)
  target = np.clip(pred + rng.normal(0, 0.1 * data_range, pred.shape), 0, data_range).astype(np.float32)
  ours = evaluate.slice_metrics(pred, target, data_range)
  for i in range(3):
    ssim = structural_similarity(target[i], pred[i], gaussian_weights=True, sigma=1.5,
                                 use_sample_covariance=False, data_range=data_range)
    psnr = peak_signal_noise_ratio(target[i], pred[i], data_range=data_range)
    assert ours["ssim"][i] == pytest.approx(ssim, abs=1e-4)
    assert ours["psnr"][i] == pytest.approx(psnr, abs=1e-4)


def test_rmse_of_known_offset_is_the_offset():
  target = np.full((2, 16, 16), 5.0, np.float32)
  assert evaluate.slice_metrics(target + 1.5, target, 24.0)["rmse"] == pytest.approx([1.5, 1.5])


def test_paired_t_test_matches_the_textbook_formula():
  a = np.array([1.2, 1.5, 1.1, 1.4, 1.3, 1.0])
  b = np.array([1.4, 1.6, 1.3, 1.3, 1.6, 1.2])
  d = a - b
  t = d.mean() / (d.std(ddof=1) / np.sqrt(len(d)))
  assert evaluate.paired_t_test(a, b, "less") == pytest.approx(stats.t.cdf(t, len(d) - 1))
  assert evaluate.paired_t_test(a, b, "greater") == pytest.approx(stats.t.sf(t, len(d) - 1))


def test_brain_metrics_inside_mask():
  rng = np.random.default_rng(0)
  target = rng.uniform(0, 10, (2, 8, 8))
  mask = np.zeros_like(target, bool)
  mask[:, 2:6, 2:6] = True
  pred = np.where(mask, 2 * target + 1, 1e6)  # outside the mask must not count
  got = evaluate.brain_metrics(pred, target, mask)
  assert got["pearson"] == pytest.approx(1.0) and got["spearman"] == pytest.approx(1.0)
  assert got["mae"] == pytest.approx(np.mean(target[mask] + 1))


def test_lesion_volumes_use_thresholds_and_the_healthy_side():
  tmax = np.zeros((1, 10, 10))
  cbf = np.full((1, 10, 10), 50.0)
  mask = np.ones((1, 10, 10), bool)
  tmax[0, 2:6, 1:4] = 8.0  # 12 voxels with Tmax > 6 s, on the left
  cbf[0, 2:4, 1:4] = 10.0  # 6 voxels below 30% of the right side's 50
  cbf[0, :, 5:] = 60.0  # the healthy side sets the reference: 0.3 * 60 = 18
  volumes = evaluate.lesion_volumes_ml(tmax, cbf, mask, voxel_ml=0.5)
  assert volumes == {"tmax_gt_6s_ml": 6.0, "cbf_lt_30pct_ml": 3.0}


def test_score_averages_slices_per_case():
  rng = np.random.default_rng(1)
  records, preds = [], {k: [] for k in ("tmax", "cbv", "cbf")}
  for case, offset in ((0, 1.0), (0, 3.0), (1, 2.0)):
    maps = {k: rng.uniform(2, 5, (16, 16)).astype(np.float32) for k in preds}
    records.append(dict(case=case, brain_mask=np.ones((16, 16), np.float32), **maps))
    for k in preds:
      preds[k].append(maps[k] + offset)
  preds = {k: np.stack(v) for k, v in preds.items()}
  result = evaluate.score(records, preds, {"tmax": 20.0, "cbv": 8.0, "cbf": 100.0}, [1.0, 1.0])
  assert result["cases"] == [0, 1]
  np.testing.assert_allclose(result["per_case"]["tmax"]["rmse"], [2.0, 2.0], rtol=1e-5)
  np.testing.assert_allclose(result["per_case"]["cbv"]["mae"], [2.0, 2.0], rtol=1e-5)
  assert set(result["volumes"]) == {"tmax_gt_6s_ml", "cbf_lt_30pct_ml"}


def test_results_table_groups_by_factor_marks_best_and_gives_p_values():
  from pkd_jax import report  # pylint: disable=import-outside-toplevel

  def row(method, factor, rmse):
    maps = {m: {"rmse": np.array(rmse), "ssim": np.array([0.9, 0.8, 0.85]),
                "psnr": np.array([30.0, 31.0, 29.0])} for m in ("tmax", "cbv", "cbf")}
    return dict(method=method, factor=factor, per_case=maps)

  rows = [row("pkd", 16, [1.0, 1.1, 0.9]), row("none", 16, [1.5, 1.4, 1.6]),
          row("teacher", 1, [0.8, 0.7, 0.9])]
  markdown, csv_text = report.results_table(rows, {"tmax": 20, "cbv": 8, "cbf": 100}, "pkd")
  lines = markdown.splitlines()
  assert lines[2].startswith("| teacher | full")  # full resolution first
  assert "**1.000 ± 0.082**" in lines[3]  # pkd best at 1/16
  expected_p = stats.ttest_rel([1.0, 1.1, 0.9], [1.5, 1.4, 1.6], alternative="less").pvalue
  assert f"{expected_p:.3g}" in lines[4]
  assert csv_text.splitlines()[0].endswith("cbf_rmse_p")


def test_tmax_dice_inside_the_brain():
  truth = np.zeros((1, 4, 4))
  truth[0, :2] = 10.0  # 8 voxels above 6 s
  pred = np.zeros((1, 4, 4))
  pred[0, 1:3] = 8.0  # 8 voxels, 4 of them right
  mask = np.ones((1, 4, 4), bool)
  assert evaluate.tmax_dice(pred, truth, mask) == pytest.approx(0.5)
  mask[0, 2:] = False  # outside the brain does not count: 4 / (4 + 8) * 2
  assert evaluate.tmax_dice(pred, truth, mask) == pytest.approx(2 * 4 / 12)
  assert evaluate.tmax_dice(np.zeros((1, 4, 4)), np.zeros((1, 4, 4)), mask) == 1.0
