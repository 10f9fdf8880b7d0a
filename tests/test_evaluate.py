"""Metrics against independent computations; volumes, t-test, per-case scoring; the classical
reference and the sanity floors, and the report rows they give."""

import json

import jax
import numpy as np
import pytest
from scipy import stats
from skimage.metrics import peak_signal_noise_ratio, structural_similarity

from configs import student as student_config
from configs import teacher as teacher_config
from pkd_jax import baselines, evaluate, metrics, report
from pkd_jax.data import pipeline
from pkd_jax.data.case import TARGET_MAPS


@pytest.mark.parametrize("data_range", [1.0, 24.0, 200.0])
def test_ssim_and_psnr_equal_scikit_image(data_range):
  rng = np.random.default_rng(int(data_range))
  pred = rng.uniform(0, data_range, (3, 32, 40)).astype(np.float32)
  target = np.clip(pred + rng.normal(0, 0.1 * data_range, pred.shape), 0, data_range).astype(np.float32)
  ours = metrics.slice_metrics(pred, target, data_range)
  for i in range(3):
    ssim = structural_similarity(target[i], pred[i], gaussian_weights=True, sigma=1.5,
                                 use_sample_covariance=False, data_range=data_range)
    psnr = peak_signal_noise_ratio(target[i], pred[i], data_range=data_range)
    assert ours["ssim"][i] == pytest.approx(ssim, abs=1e-4)
    assert ours["psnr"][i] == pytest.approx(psnr, abs=1e-4)


def test_rmse_of_known_offset_is_the_offset():
  target = np.full((2, 16, 16), 5.0, np.float32)
  assert metrics.slice_metrics(target + 1.5, target, 24.0)["rmse"] == pytest.approx([1.5, 1.5])


def test_paired_t_test_matches_the_textbook_formula():
  a = np.array([1.2, 1.5, 1.1, 1.4, 1.3, 1.0])
  b = np.array([1.4, 1.6, 1.3, 1.3, 1.6, 1.2])
  d = a - b
  t = d.mean() / (d.std(ddof=1) / np.sqrt(len(d)))
  assert metrics.paired_t_test(a, b, "less") == pytest.approx(stats.t.cdf(t, len(d) - 1))
  assert metrics.paired_t_test(a, b, "greater") == pytest.approx(stats.t.sf(t, len(d) - 1))


def test_brain_metrics_inside_mask():
  rng = np.random.default_rng(0)
  target = rng.uniform(0, 10, (2, 8, 8))
  mask = np.zeros_like(target, bool)
  mask[:, 2:6, 2:6] = True
  pred = np.where(mask, 2 * target + 1, 1e6)  # outside the mask must not count
  got = metrics.brain_metrics(pred, target, mask)
  assert got["pearson"] == pytest.approx(1.0) and got["spearman"] == pytest.approx(1.0)
  assert got["mae"] == pytest.approx(np.mean(target[mask] + 1))


def test_lesion_volumes_use_thresholds_and_the_healthy_side():
  tmax = np.zeros((1, 10, 10))
  cbf = np.full((1, 10, 10), 50.0)
  mask = np.ones((1, 10, 10), bool)
  tmax[0, 2:6, 1:4] = 8.0  # 12 voxels with Tmax > 6 s, on the left
  cbf[0, 2:4, 1:4] = 10.0  # 6 voxels below 30% of the right side's 50
  cbf[0, :, 5:] = 60.0  # the healthy side sets the reference: 0.3 * 60 = 18
  volumes = metrics.lesion_volumes_ml(tmax, cbf, mask, voxel_ml=0.5)
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
  result = metrics.score(records, preds, {"tmax": 20.0, "cbv": 8.0, "cbf": 100.0}, [1.0, 1.0])
  assert result["cases"] == [0, 1]
  np.testing.assert_allclose(result["per_case"]["tmax"]["rmse"], [2.0, 2.0], rtol=1e-5)
  np.testing.assert_allclose(result["per_case"]["cbv"]["mae"], [2.0, 2.0], rtol=1e-5)
  assert set(result["volumes"]) == {"tmax_gt_6s_ml", "cbf_lt_30pct_ml"}


def test_score_computes_only_the_metrics_asked_for_with_the_same_values():
  rng = np.random.default_rng(2)
  maps = ("tmax", "cbv", "cbf")
  records = [dict(case=c, brain_mask=np.ones((16, 16), np.float32),
                  **{k: rng.uniform(0, 5, (16, 16)).astype(np.float32) for k in maps})
             for c in (0, 0, 1)]
  preds = {k: np.stack([r[k] for r in records]) + rng.normal(0, 1, (3, 16, 16)).astype(np.float32)
           for k in ("tmax", "cbv", "cbf")}
  ranges = {"tmax": 20.0, "cbv": 8.0, "cbf": 100.0}
  full = metrics.score(records, preds, ranges, [1.0, 1.0])
  part = metrics.score(records, preds, ranges, [1.0, 1.0], names=("rmse", "spearman"))
  for k in ranges:
    assert set(part["per_case"][k]) - {"gt6_dice"} == {"rmse", "spearman"}
    for m in ("rmse", "spearman"):
      np.testing.assert_array_equal(part["per_case"][k][m], full["per_case"][k][m])
  assert part["tmax_gt6_dice"] == full["tmax_gt6_dice"]
  with pytest.raises(ValueError, match="unknown metric"):
    metrics.score(records, preds, ranges, [1.0, 1.0], names=("rmse", "dice"))


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
  assert metrics.tmax_dice(pred, truth, mask) == pytest.approx(0.5)
  mask[0, 2:] = False  # outside the brain does not count: 4 / (4 + 8) * 2
  assert metrics.tmax_dice(pred, truth, mask) == pytest.approx(2 * 4 / 12)
  assert metrics.tmax_dice(np.zeros((1, 4, 4)), np.zeros((1, 4, 4)), mask) == 1.0


# ----------------------------------------------------------------------------------------------
# Classical reference and sanity floors, at the "test" scale (48 x 48, 2 slices, 1 case a split).

TINY_GRID = dict(spatial_sigmas_mm=(0.0, 10.0), temporal_sigmas_s=(0.0,),
                 svd_variants=(("bsvd", 0.1), ("osvd", 0.095)))


def test_constant_predictor_is_the_training_median_inside_the_brain():
  config = teacher_config.get_config("1,test")
  source = pipeline.make_source(config.data, "train")
  train_records = [source[i] for i in range(len(source))]
  train_brain = np.stack([r["brain_mask"] for r in train_records]) > 0
  values = baselines.healthy_values(config)
  records = evaluate.split_records(config, "test")
  maps = baselines.constant_maps(records[0], values)
  brain = np.stack([r["brain_mask"] for r in records[0]]) > 0
  for k in TARGET_MAPS:
    train_truth = np.stack([r[k] for r in train_records])
    assert values[k] == pytest.approx(np.median(train_truth[train_brain]))
    assert np.all(maps[k][brain] == np.float32(values[k])) and np.all(maps[k][~brain] == 0)
  assert 0 <= values["tmax"] < 6 and 10 < values["cbf"] < 60  # healthy tissue
  result = baselines.evaluate_constant(config, records=records, values=values)
  truth = np.stack([r["tmax"] for r in records[0]])
  expected = metrics.slice_metrics(maps["tmax"], truth, config.data.map_ranges.tmax)["rmse"]
  assert result["per_case"]["tmax"]["rmse"] == pytest.approx([expected.mean()])
  assert result["values"] == values


def test_classical_best_is_tuned_on_validation_and_scored_per_test_case():
  config = teacher_config.get_config("1,test")
  results = baselines.evaluate_classical_best(config, 1, **TINY_GRID)
  assert set(results) == {"true", "select"}
  for mode, result in results.items():
    assert len(result["search"]) == 4 and result["tune_split"] == "validation"
    best = min(result["search"], key=lambda row: row["objective"])
    assert result["settings"] == {k: best[k] for k in result["settings"]}
    aif = "true AIF" if mode == "true" else "selected AIF"
    name = "oSVD" if best["method"] == "osvd" else "bSVD"
    assert result["method"] == f"classical {name} ({aif})"
    assert result["per_case"]["tmax"]["rmse"].shape == (config.data.num_cases.test,)
  # The search (perfusion_maps_variants) and the pipeline (classical_maps) agree: the chosen
  # settings rescored on the validation split give the search's numbers.
  true = results["true"]
  again = baselines.evaluate_classical(config, 1, true["settings"], "true", split="validation")
  best = min(true["search"], key=lambda row: row["objective"])
  for k in TARGET_MAPS:
    assert np.mean(again["per_case"][k]["rmse"]) == pytest.approx(best[f"{k}_rmse"], rel=1e-3)


def test_ttp_floor_scores_tmax_and_takes_the_constant_cbv_cbf():
  config = teacher_config.get_config("1,test")
  records = evaluate.split_records(config, "test")
  values = {"tmax": 1.0, "cbv": 2.0, "cbf": 30.0}
  ttp = baselines.evaluate_ttp(config, 1, records=records, values=values)
  constant = baselines.evaluate_constant(config, records=records, values=values)
  assert ttp["aif_mode"] == "true"
  for k in ("cbv", "cbf"):
    np.testing.assert_allclose(ttp["per_case"][k]["rmse"], constant["per_case"][k]["rmse"])
  assert not np.allclose(ttp["per_case"]["tmax"]["rmse"], constant["per_case"]["tmax"]["rmse"])


def test_job_report_has_the_classical_rows_and_the_floors(tmp_path, monkeypatch):
  from pkd_jax import checkpoints, job, models  # pylint: disable=import-outside-toplevel

  config = student_config.get_config("pkd,test")
  # No trained networks: every network row is the constant predictor (the report is under test).
  monkeypatch.setattr(models, "from_config", lambda cfg: None)
  monkeypatch.setattr(checkpoints, "load_variables", lambda folder, cfg, *args: None)

  def fake_network(cfg, model, variables, factor, split="test", batch_size=4, records=None):
    result = baselines.evaluate_constant(cfg, records=records, values={"tmax": 1.0, "cbv": 2.0,
                                                                      "cbf": 30.0})
    example = {k: records[0][0][k] for k in TARGET_MAPS}
    result["example"] = {"truth": example, "prediction": example}
    result["lesion_slices"] = [{"case": int(records[0][i]["case"]), "truth": records[0][i]["tmax"],
                                "prediction": records[0][i]["tmax"]}
                               for i in evaluate.lesion_slices(records[0])]
    return result

  monkeypatch.setattr(evaluate, "evaluate_variables", fake_network)
  for name, value in (("CLASSICAL_SPATIAL_SIGMAS_MM", TINY_GRID["spatial_sigmas_mm"]),
                      ("CLASSICAL_TEMPORAL_SIGMAS_S", TINY_GRID["temporal_sigmas_s"]),
                      ("CLASSICAL_SVD", TINY_GRID["svd_variants"])):
    monkeypatch.setattr(baselines, name, value)
  paths = job.Job(config, str(tmp_path)).report()
  markdown = open(paths["table"]).read()
  for row in ("classical", "(true AIF)", "(selected AIF)", "TTP Tmax", "constant healthy",
              "spatial sigma", "the training split's median"):
    assert row in markdown, row
  assert "bSVD (true AIF) | full" not in markdown  # the unsmoothed straw man is gone
  saved = json.loads((tmp_path / "results_pkd.json").read_text())
  assert saved["environment"]["packages"]["jax"] == jax.__version__  # what the numbers depend on
  keys = {(r.get("key"), r["factor"]) for r in saved["rows"]}
  for factor in (config.train.factor, 1):
    for key in ("classical_best_true_aif", "classical_best_selected_aif", "ttp_tmax",
                "constant_healthy"):
      assert (key, factor) in keys
  classical = next(r for r in saved["rows"] if r.get("key") == "classical_best_true_aif")
  assert set(classical["settings"]) >= {"method", "svd_param", "spatial_sigma_mm",
                                        "temporal_sigma_s"}
  assert len(classical["per_case"]["tmax"]["rmse"]) == config.data.num_cases.test
  assert paths["lesions"].endswith("results_pkd_lesions.png")
  assert (tmp_path / "results_pkd_lesions.png").stat().st_size > 1000


def test_lesion_slices_pick_each_cases_largest_true_lesion_and_the_figure_draws_them(tmp_path):
  def record(case, lesion_pixels, brain_pixels=30):
    tmax = np.full((8, 8), 2.0, np.float32)
    tmax.flat[:lesion_pixels] = 9.0
    brain = np.zeros((8, 8), np.float32)
    brain.flat[:brain_pixels] = 1.0
    return {"case": case, "tmax": tmax, "brain_mask": brain}

  # case 0: slices with 3, 7, 5 lesion pixels; case 1: no lesion, the second slice has more brain;
  # a lesion outside the brain does not count (slice 5: 40 lesion pixels, 30 in the brain).
  records = [record(0, 3), record(0, 7), record(0, 5), record(1, 0, 20), record(1, 0, 25),
             record(2, 40), record(2, 31, 40)]
  assert evaluate.lesion_slices(records) == [1, 4, 6]
  slices = {"net": [{"case": r["case"], "truth": r["tmax"], "prediction": r["tmax"] * 0}
                    for r in (records[1], records[4], records[6])]}
  path = report.lesion_figure(slices, 20.0, str(tmp_path / "lesions.png"))
  assert (tmp_path / "lesions.png").stat().st_size > 1000 and path.endswith("lesions.png")


def test_learning_curves_draw_every_map_and_the_dice(tmp_path):
  history = [{"step": s, "tmax/rmse_units": 2.0 / s, "cbv/rmse_units": 0.5, "cbf/rmse_units": 8.0,
              "tmax_gt6/dice": 0.1 * s} for s in (1, 2, 3)]
  path = report.learning_curves(history, str(tmp_path / "curves.png"), title="t",
                                floors={"constant": {"tmax_rmse": 1.7}})
  assert path.endswith("curves.png") and (tmp_path / "curves.png").stat().st_size > 1000
  with pytest.raises(ValueError, match="no validation"):
    report.learning_curves([], str(tmp_path / "empty.png"))
  assert not (tmp_path / "empty.png").exists()


def test_holm_adjusts_one_family_and_leaves_tests_not_done_out():
  adjusted = metrics.holm([0.01, 0.04, 0.03, float("nan"), 0.5])
  # 4 tests: 0.01 x 4; 0.03 x 3; 0.04 x 2 = 0.08 raised to 0.09 (monotone); 0.5 x 1
  np.testing.assert_allclose([adjusted[i] for i in (0, 1, 2, 4)], [0.04, 0.09, 0.09, 0.5])
  assert np.isnan(adjusted[3])
  assert metrics.holm([0.6, 0.7]) == [1.0, 1.0]  # capped at 1
  assert metrics.holm([]) == []


def test_comparison_figure_has_a_labelled_scale_per_column_and_the_lesion_on_every_panel(
    tmp_path, monkeypatch):
  saved = []
  monkeypatch.setattr(report.fileio, "save_figure", lambda fig, path: saved.append(fig) or path)
  tmax = np.full((16, 16), 2.0, np.float32)
  tmax[4:9, 4:9] = 10.0
  truth = {"tmax": tmax, "cbv": np.ones((16, 16), np.float32), "cbf": np.ones((16, 16), np.float32)}
  predictions = {"pkd": truth, "none": {k: v * 0.5 for k, v in truth.items()}}
  report.comparison_figure(truth, predictions, {"tmax": 20.0, "cbv": 8.0, "cbf": 100.0},
                           str(tmp_path / "maps.png"))
  fig = saved[0]
  panels = [ax for ax in fig.axes if ax.images and ax.get_label() != "<colorbar>"]
  bars = [ax for ax in fig.axes if ax.get_label() == "<colorbar>"]
  assert len(panels) == 4 * 3  # truth, 2 methods, the error
  assert all(ax.collections for ax in panels)  # the outline of the true Tmax > 6 s region
  labels = sorted(ax.get_xlabel() for ax in bars)  # one scale per column, one per error panel
  assert labels == sorted(["Tmax (s)", "CBV (ml/100 g)", "CBF (ml/100 g/min)", "|error| (s)",
                           "|error| (ml/100 g)", "|error| (ml/100 g/min)"])
