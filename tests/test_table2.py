"""experiments/table2.py at the "test" scale: the whole table, its structure, and a resumed run
that retrains nothing."""

import json

import numpy as np
import pytest

from experiments import table2
from pkd_jax.data.case import TARGET_MAPS
from pkd_jax.metrics import METRICS


@pytest.mark.slow
def test_table2_runs_whole_at_test_scale_and_a_rerun_retrains_nothing(tmp_path, monkeypatch):
  runs, out = str(tmp_path / "runs"), str(tmp_path / "out")
  result = table2.run("test", runs, out)
  rows = {(r["method"], r["factor"]): r for r in result["rows"]}
  expected = {(m, 16) for m in ("w/o PKD", "KD", "TAKD", "MTKD", "DGKD", "PKD",
                                "UniToBrain", "UNET-GAN-Assisted")}
  expected |= {("w/o PKD", 8), ("PKD", 8), ("teacher x1", 1), ("teacher x8", 8), ("TA ta_x4", 4),
               ("teacher x1_seed1", 1), ("constant healthy", 16)}
  assert expected <= set(rows), expected - set(rows)
  assert any(r["kind"] == "reference" and r["method"].startswith("classical")
             for r in result["rows"])
  assert result["num_seeds"] == 2 and result["num_test_cases"] == 3
  assert result["units_trained"] == result["units_planned"]
  for (method, factor), row in rows.items():
    if row["kind"] in ("student", "competitor"):
      assert row["seeds"] == [0, 1]
      cell = row["metrics"]["tmax"]["rmse"]
      assert len(cell["per_seed"]) == 2 and len(cell["per_case"]) == 3
      assert np.isclose(cell["mean"], np.mean(cell["per_seed"]))
    if method != "PKD" and factor in (8, 16):  # PKD against every other row at its factor
      for k in TARGET_MAPS:
        for m in METRICS:
          assert set(row["p_vs_pkd"][k][m]) == {"p", "p_holm"}
  assert "p_vs_pkd" not in rows[("PKD", 16)] and "p_vs_pkd" not in rows[("teacher x1", 1)]
  for suffix in (".md", ".csv", ".json", "_maps.png", "_curves.png"):
    assert (tmp_path / "out" / f"table2_test{suffix}").exists(), suffix
  assert "PKD below w/o PKD" in result["reading"]
  with open(tmp_path / "out" / "table2_test.json") as f:
    assert json.load(f)["rows"][0]["method"] == result["rows"][0]["method"]

  # A second run finds everything trained and scored: nothing trains, the numbers are the same.
  def no_training(*args, **kwargs):
    raise AssertionError("a finished unit was trained again")
  monkeypatch.setattr(table2.train, "train_and_evaluate", no_training)
  again = table2.run("test", runs, out)
  assert json.dumps(again["rows"]) == json.dumps(result["rows"])  # NaN p-values compare as text


def test_only_selects_units_and_students_wait_for_their_teachers(tmp_path):
  table = table2.Table2("test", str(tmp_path / "runs"), str(tmp_path / "out"))
  names = [u.name for u in table.units]
  assert names[:7] == ["teachers/x8", "teachers/x4", "teachers/x2", "teachers/x1",
                       "teachers/x1_seed1", "teachers/x1_seed2", "teachers/ta_x4"]
  assert len(names) == 7 + (6 + 2) * 2 + 2 * 2 and len(set(names)) == len(names)
  assert [u.name for u in table.select(["students/pkd_*"])] == [
      "students/pkd_x16_seed0", "students/pkd_x16_seed1", "students/pkd_x8_seed0",
      "students/pkd_x8_seed1"]
  assert len(table.select(["competitors"])) == 4
  with pytest.raises(ValueError, match="matches no unit"):
    table.select(["studnets/*"])
  with pytest.raises(ValueError, match="needs the teachers.*teachers/x8, teachers/x4, "
                                      "teachers/x2, teachers/x1;.*--only=teachers"):
    table.train(table.select(["students/pkd_x16_seed0"]))
  takd = table.select(["students/takd_x16_seed0"])[0]
  assert takd.needs == ("teachers/ta_x4",) and table.select(["students/none_x8_seed1"])[0].needs == ()
