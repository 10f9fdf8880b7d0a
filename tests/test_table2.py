"""experiments/table2.py at the "test" scale: the whole table, its structure, and a resumed run
that retrains nothing."""

import json
import os
import signal
import subprocess
import sys
import threading
import time

import numpy as np
import pytest

from experiments import common, table2
from pkd_jax import fileio
from pkd_jax.data.case import TARGET_MAPS
from pkd_jax.metrics import METRICS


@pytest.mark.extended  # 110-135 s cold on 2 cores (README, "The test-scale Table 2")
def test_table2_runs_whole_at_test_scale_and_a_rerun_retrains_nothing(tmp_path, monkeypatch):
  """The first run trains in two worker processes (--workers=2: each pinned to a core, scoring
  what it trains); the rerun, in this process, finds everything trained and scored."""
  runs, out = str(tmp_path / "runs"), str(tmp_path / "out")
  workers = min(2, len(table2.worker_cores(1)[0]))
  result = table2.run("test", runs, out, workers=workers)
  assert result["workers"] == workers
  rows = {(r["method"], r["factor"]): r for r in result["rows"]}
  expected = {(m, 16) for m in ("w/o PKD", "KD", "TAKD", "MTKD", "DGKD", "PKD",
                                "UniToBrain", "UNET-GAN-Assisted")}
  expected |= {("w/o PKD", 8), ("PKD", 8), ("teacher x1", 1), ("teacher x8", 8), ("TA ta_x4", 4),
               ("teacher x1_seed1", 1), ("constant healthy", 16)}
  assert expected <= set(rows), expected - set(rows)
  assert any(r["kind"] == "reference" and r["method"].startswith("classical")
             for r in result["rows"])
  assert result["num_seeds"] == 1 and result["num_test_cases"] == 3
  assert result["environment"]["packages"]["jax"]  # what the numbers depend on (runtime)
  [group] = result["trained_in"]  # both workers on this machine, with the same packages and flags
  assert sorted(group["units"]) == sorted(result["wall_s"]["train_per_unit"])
  assert group["environment"]["packages"] == result["environment"]["packages"]
  assert result["units_trained"] == result["units_planned"]
  assert len(result["wall_s"]["train_per_unit"]) == result["units_planned"]  # every unit timed
  for (method, factor), row in rows.items():
    if row["kind"] in ("student", "competitor"):
      assert row["seeds"] == [0]
      cell = row["metrics"]["tmax"]["rmse"]
      assert len(cell["per_seed"]) == 1 and len(cell["per_case"]) == 3
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


def test_units_trained_in_different_environments_are_grouped_apart(tmp_path):
  avx2, avx512 = {"cpu": "X, AVX2", "packages": {"jax": "0.10.2"}}, {"cpu": "Y, AVX-512"}
  groups = common.group_environments({"t1": avx2, "t2": avx512, "s1": dict(avx2), "s2": None})
  assert groups == [{"environment": avx2, "units": ["t1", "s1"]},
                    {"environment": avx512, "units": ["t2"]},
                    {"environment": None, "units": ["s2"]}]
  # A unit trained before environments were recorded: its seconds, and no environment.
  (tmp_path / common.TRAIN_TIME_FILE).write_text(json.dumps({"seconds": 12.5}))
  assert common.recorded_train_s(str(tmp_path)) == 12.5
  assert common.recorded_environment(str(tmp_path)) is None
  assert common.recorded_environment(str(tmp_path / "untrained")) is None


def test_only_selects_units_and_students_wait_for_their_teachers(tmp_path):
  table = table2.Table2("test", str(tmp_path / "runs"), str(tmp_path / "out"))
  names = [u.name for u in table.units]
  assert names[:7] == ["teachers/x8", "teachers/x4", "teachers/x2", "teachers/x1",
                       "teachers/x1_seed1", "teachers/x1_seed2", "teachers/ta_x4"]
  assert len(names) == 7 + (6 + 2) + 2 and len(set(names)) == len(names)
  assert [u.name for u in table.select(["students/pkd_*"])] == [
      "students/pkd_x16_seed0", "students/pkd_x8_seed0"]
  assert len(table.select(["competitors"])) == 2
  mini = table2.Table2("mini", str(tmp_path / "runs"), str(tmp_path / "out"))
  assert len(mini.units) == 7 + (6 + 2) * 3 + 2 * 3  # three seeds of every student and competitor
  with pytest.raises(ValueError, match="matches no unit"):
    table.select(["studnets/*"])
  with pytest.raises(ValueError, match="needs the teachers.*teachers/x8, teachers/x4, "
                                      "teachers/x2, teachers/x1;.*--only=teachers"):
    table.train(table.select(["students/pkd_x16_seed0"]))
  takd = table.select(["students/takd_x16_seed0"])[0]
  assert takd.needs == ("teachers/ta_x4",)
  assert table.select(["students/none_x8_seed0"])[0].needs == ()
  assert table.select(["teachers/ta_x4"])[0].needs == ("teachers/x1",)  # distilled from it


def test_a_worker_tries_units_of_new_programs_first_and_those_being_compiled_last(tmp_path,
                                                                                  monkeypatch):
  """Units share programs by network and teachers per step; with teachers/x8 finished and
  competitors/unitobrain claimed by another process, a worker tries first the programs nobody
  compiles (a teacher each step; MTKD's three; DGKD's four; UNET-GAN), then the other teachers
  and the teacherless students (their programs are in the cache), UniToBrain's last; with
  nothing finished and the first teacher claimed, the other teachers go last."""
  table = table2.Table2("test", str(tmp_path / "runs"), str(tmp_path / "out"))
  program = {u.name: u.program for u in table.units}
  assert program["teachers/x1"] == program["students/none_x16_seed0"] == ("vnet", 0, "")
  assert (program["teachers/ta_x4"] == program["students/kd_x16_seed0"]
          == program["students/pkd_x16_seed0"] == program["students/pkd_x8_seed0"]
          == ("vnet", 1, "targets"))
  assert program["students/mtkd_x16_seed0"] == ("vnet", 3, "targets")
  assert program["students/dgkd_x16_seed0"] == ("vnet", 4, "losses")
  monkeypatch.setattr(table, "finished", lambda unit: unit.name == "teachers/x8")
  pending = [u for u in table.units if u.name != "teachers/x8"]
  with fileio.claim(table.claim_path(table.select(["competitors/unitobrain*"])[0])):
    order = [u.name for u in table.preferred(pending)]
  assert order == [
      "teachers/ta_x4", "students/kd_x16_seed0", "students/takd_x16_seed0",
      "students/mtkd_x16_seed0", "students/dgkd_x16_seed0", "students/pkd_x16_seed0",
      "students/pkd_x8_seed0", "competitors/unet_gan_x16_seed0",
      "teachers/x4", "teachers/x2", "teachers/x1", "teachers/x1_seed1", "teachers/x1_seed2",
      "students/none_x16_seed0", "students/none_x8_seed0",
      "competitors/unitobrain_x16_seed0"]
  monkeypatch.setattr(table, "finished", lambda unit: False)
  with fileio.claim(table.claim_path(table.units[0])):  # teachers/x8, in another process
    order = [u.name for u in table.preferred(table.units[1:])]
  assert order == [
      "teachers/ta_x4", "students/kd_x16_seed0", "students/takd_x16_seed0",
      "students/mtkd_x16_seed0", "students/dgkd_x16_seed0", "students/pkd_x16_seed0",
      "students/pkd_x8_seed0", "competitors/unitobrain_x16_seed0",
      "competitors/unet_gan_x16_seed0",
      "teachers/x4", "teachers/x2", "teachers/x1", "teachers/x1_seed1", "teachers/x1_seed2",
      "students/none_x16_seed0", "students/none_x8_seed0"]


def test_longer_students_are_the_tables_students_with_more_steps_and_its_teachers(tmp_path):
  from experiments import student_steps  # pylint: disable=import-outside-toplevel
  runs = str(tmp_path / "runs")
  mini = table2.Table2("mini", runs, str(tmp_path / "out"))
  units = student_steps.student_units(mini, ["none", "pkd"], 2400, 1)
  assert [u.name for u in units] == ["student_steps/none_x16_seed1_steps2400",
                                     "student_steps/pkd_x16_seed1_steps2400"]
  for unit, strategy in zip(units, ["none", "pkd"]):
    table_unit = mini.select([f"students/{strategy}_x16_seed1"])[0]
    assert unit.config.train.steps == 2400 and table_unit.config.train.steps == 600
    assert unit.config.distill.teachers_dir == os.path.join(runs, "teachers")
    longer, same = unit.config.to_dict(), table_unit.config.to_dict()
    longer["train"].pop("steps"), same["train"].pop("steps")
    assert longer == same  # nothing else differs from the table's student
    assert mini.folder(unit) == os.path.join(runs, unit.name)


def test_student_settings_change_only_their_fields_and_name_the_folder(tmp_path):
  from experiments import student_steps  # pylint: disable=import-outside-toplevel
  mini = table2.Table2("mini", str(tmp_path / "runs"), str(tmp_path / "out"))
  settings = student_steps.parse_settings(["model.scale_outputs=True", "model.filters=8"])
  assert settings == (("model.scale_outputs", True), ("model.filters", 8))
  unit, = student_steps.student_units(mini, ["none"], 1500, 0, settings)
  assert unit.name == ("student_steps/none_x16_seed0_steps1500"
                       "_model.scale_outputs=True_model.filters=8")
  plain, = student_steps.student_units(mini, ["none"], 1500, 0)
  changed, same = unit.config.to_dict(), plain.config.to_dict()
  assert (changed["model"]["filters"], same["model"]["filters"]) == (8, 4)
  assert changed["model"].pop("scale_outputs") and not same["model"].pop("scale_outputs")
  changed["model"].pop("filters"), same["model"].pop("filters")
  assert changed == same
  assert student_steps.settings_suffix(student_steps.parse_settings(
      ["data.random_offset_factors=(16, 8)"])) == "_data.random_offset_factors=16-8"
  for bad in ("model.filters", "model.filters=eight", "=3"):
    with pytest.raises(ValueError, match="--set"):
      student_steps.parse_settings([bad])
  with pytest.raises(KeyError, match="no config field 'model.width'"):
    student_steps.student_units(mini, ["none"], 10, 0, (("model.width", 8),))


def _unit(method, factor, seed, kind="student"):
  return table2.Unit(f"{kind}s/{method}_x{factor}_seed{seed}", kind, method, factor, seed, None,
                     lambda: None)


def test_rows_pool_seeds_and_pkd_is_tested_against_each_row_with_holm():
  """Synthetic scores: 2 seeds x 4 cases; PKD's RMSE is lower than w/o PKD's in every case."""
  rng = np.random.default_rng(0)
  units, scores = [], {}
  for method, offset in (("PKD", 0.0), ("w/o PKD", 0.5), ("KD", 0.01)):
    for seed in (0, 1):
      unit = _unit(method, 16, seed)
      units.append(unit)
      per_case = {k: {m: list(rng.uniform(1, 2, 4) + (offset if m == "rmse" else -offset))
                      for m in METRICS} for k in TARGET_MAPS}
      scores[unit.name] = dict(per_case=per_case, tmax_gt6_dice=0.5)
  rows = {r["method"]: r for r in table2.aggregate(units, scores, [])}
  none = rows["w/o PKD"]["metrics"]["tmax"]["rmse"]
  raw = np.array([scores[f"students/w/o PKD_x16_seed{s}"]["per_case"]["tmax"]["rmse"]
                  for s in (0, 1)])
  np.testing.assert_allclose(none["per_seed"], raw.mean(axis=1))
  np.testing.assert_allclose(none["per_case"], raw.mean(axis=0))
  assert np.isclose(none["std"], np.std(raw.mean(axis=1), ddof=1))
  assert none["spread_over"] == "seeds"
  p = rows["w/o PKD"]["p_vs_pkd"]["tmax"]
  kd_p = rows["KD"]["p_vs_pkd"]["tmax"]["rmse"]["p"]
  assert p["rmse"]["p"] < 0.05 and p["rmse"]["p"] < kd_p  # the smallest of a family of 2
  assert np.isclose(p["rmse"]["p_holm"], min(1.0, 2 * p["rmse"]["p"]))
  assert p["ssim"]["p"] < 0.05  # SSIM: H1 is PKD higher (w/o PKD was shifted down)
  assert "p_vs_pkd" not in rows["PKD"]
  holm = [rows[m]["p_vs_pkd"]["cbf"]["psnr"]["p_holm"] for m in ("w/o PKD", "KD")]
  raw_p = [rows[m]["p_vs_pkd"]["cbf"]["psnr"]["p"] for m in ("w/o PKD", "KD")]
  assert holm == [min(1.0, x) for x in metrics_holm(raw_p)]


def test_the_reading_says_when_no_network_beats_the_constant_floor():
  """Synthetic: the constant predictor's RMSE below every network's at 1/16, then above PKD's."""
  rng = np.random.default_rng(1)
  units, scores = [], {}
  for method, offset in (("PKD", 0.0), ("w/o PKD", 1.0)):
    unit = _unit(method, 16, 0)
    units.append(unit)
    scores[unit.name] = dict(tmax_gt6_dice=0.5, per_case={
        k: {m: list(rng.uniform(2, 3, 4) + offset) for m in METRICS} for k in TARGET_MAPS})

  def floor(level):
    return [dict(method="constant healthy", factor=16, key="constant_healthy", tmax_gt6_dice=0.0,
                 per_case={k: {m: [level] * 4 for m in METRICS} for k in TARGET_MAPS})]

  text = table2.reading(table2.aggregate(units, scores, floor(1.0)))
  assert "Networks at 1/16 below it: tmax none; cbv none; cbf none" in text
  assert "No network at 1/16 predicts Tmax better than this constant" in text
  text = table2.reading(table2.aggregate(units, scores, floor(2.9)))
  assert "tmax PKD;" in text and "PKD is below it for Tmax." in text  # w/o PKD (about 3.5) is not


def metrics_holm(p):
  from pkd_jax import metrics  # pylint: disable=import-outside-toplevel
  return metrics.holm(p)


def test_units_another_process_trains_are_skipped_with_their_students(tmp_path, capsys):
  """Two processes on one runs folder: a unit claimed by a live process is left alone, and so
  are the students of a teacher it is training; the rest trains."""
  table = table2.Table2("test", str(tmp_path / "runs"), str(tmp_path / "out"))
  trained = []
  for unit in table.units:
    unit.train = lambda name=unit.name: trained.append(name)
  x8, x4, none = table.select(["teachers/x8", "teachers/x4", "students/none_x8_seed0"])
  with fileio.claim(table.claim_path(x8)) as owner:  # "the other process" (a live pid: ours)
    assert owner is None
    skipped = table.train(table.select(["teachers/x8", "teachers/x4", "students/pkd_x16_seed0",
                                        "students/none_x8_seed0"]))
  assert skipped == ["teachers/x8", "students/pkd_x16_seed0"]
  assert trained == [x4.name, none.name]  # w/o PKD has no teachers: it trains
  out = capsys.readouterr().out
  assert "teachers/x8 (teacher x8, 1/8): skipped, being trained by pid" in out
  assert "its teachers are being trained by another process (teachers/x8)" in out
  assert not any((tmp_path / "runs" / "claims").iterdir())  # every claim released


def test_a_waiting_worker_trains_what_is_free_then_the_students_of_a_teacher_another_trained(
    tmp_path, capsys):
  """--workers' wait mode: with teachers/x8 claimed by "another worker", the unit without
  teachers trains at once, then the process waits; when x8 is finished and released, x8's
  students train (and each unit this process trained is handed to after_each)."""
  table = table2.Table2("test", str(tmp_path / "runs"), str(tmp_path / "out"))
  done, trained, handed = set(), [], []
  for unit in table.units:
    unit.train = lambda name=unit.name: (trained.append(name), done.add(name))
  table.finished = lambda unit: unit.name in done
  done.update(u.name for u in table.select(["teachers/x4", "teachers/x2", "teachers/x1"]))
  x8 = table.select(["teachers/x8"])[0]
  selected = table.select(["teachers/x8", "students/pkd_x16_seed0", "students/none_x8_seed0"])
  other = threading.Event()

  def other_worker():
    with fileio.claim(table.claim_path(x8)) as owner:  # a live pid (ours): "another process"
      assert owner is None
      other.set()
      time.sleep(0.5)
      done.add(x8.name)

  thread = threading.Thread(target=other_worker)
  thread.start()
  other.wait()
  skipped = table.train(selected, wait=True, after_each=lambda u: handed.append(u.name),
                        poll_s=0.05, tag="w1 ")
  thread.join()
  assert skipped == []
  assert trained == ["students/none_x8_seed0", "students/pkd_x16_seed0"]  # none first: free
  assert handed == trained
  out = capsys.readouterr().out
  assert "w1 [1/17] teachers/x8 (teacher x8, 1/8): waiting, being trained by pid" in out
  assert "students/pkd_x16_seed0 (PKD, 1/16): waiting, its teachers are being trained" in out
  assert out.count("students/pkd_x16_seed0 (PKD, 1/16): waiting") == 1  # said once, not per poll


def test_workers_split_the_cores_and_cannot_outnumber_them():
  assert table2.worker_cores(2, [0, 1]) == [[0], [1]]
  assert table2.worker_cores(3, range(8)) == [[0, 1, 2], [3, 4, 5], [6, 7]]
  assert table2.worker_cores(1, [5, 3]) == [[3, 5]]
  with pytest.raises(ValueError, match="--workers=3: this process may use 2 CPU core"):
    table2.worker_cores(3, [0, 1])
  with pytest.raises(ValueError, match="--workers=0: .*give 1 to 2"):
    table2.worker_cores(0, [0, 1])


def test_workers_share_a_gpu_by_allocating_as_they_go_unless_the_user_chose(monkeypatch):
  """JAX's default (75% of the GPU reserved at a process's first use) leaves the other workers at
  most a quarter between them."""
  from pkd_jax import runtime  # pylint: disable=import-outside-toplevel
  for name in ("XLA_PYTHON_CLIENT_PREALLOCATE", "XLA_PYTHON_CLIENT_MEM_FRACTION"):
    monkeypatch.delenv(name, raising=False)
  runtime.share_accelerator(1)
  assert "XLA_PYTHON_CLIENT_PREALLOCATE" not in os.environ
  runtime.share_accelerator(2)
  assert os.environ["XLA_PYTHON_CLIENT_PREALLOCATE"] == "false"
  monkeypatch.delenv("XLA_PYTHON_CLIENT_PREALLOCATE")
  monkeypatch.setenv("XLA_PYTHON_CLIENT_MEM_FRACTION", ".3")
  runtime.share_accelerator(3)
  assert "XLA_PYTHON_CLIENT_PREALLOCATE" not in os.environ
  monkeypatch.setenv("XLA_PYTHON_CLIENT_PREALLOCATE", "true")
  runtime.share_accelerator(3)
  assert os.environ["XLA_PYTHON_CLIENT_PREALLOCATE"] == "true"


_FAKE_WORKERS = """
import sys
sys.path.insert(0, {root!r})
from experiments import table2
sleep = "import os, sys, time; open(sys.argv[1], 'w').write(str(os.getpid())); time.sleep(120)"
table2.worker_command = lambda scale, runs, out, only, cores, name: [
    sys.executable, "-c", sleep, {folder!r} + "/" + name]
table2.worker_cores = lambda workers: [[0]] * workers  # two workers on a 1-core machine too
table2.run_workers("test", "runs", "out", None, 2)
"""


def test_a_terminated_run_stops_its_workers(tmp_path):
  """SIGTERM to the parent (kill, a job scheduler) stops the workers too: they used to go on
  training, orphaned, when the parent died of it."""
  root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  script = _FAKE_WORKERS.format(root=root, folder=str(tmp_path))
  parent = subprocess.Popen([sys.executable, "-c", script])
  pid_files = [tmp_path / "w0", tmp_path / "w1"]
  deadline = time.monotonic() + 60
  while not all(f.exists() and f.read_text() for f in pid_files):
    assert time.monotonic() < deadline and parent.poll() is None, "the workers did not start"
    time.sleep(0.1)
  pids = [int(f.read_text()) for f in pid_files]
  parent.send_signal(signal.SIGTERM)
  assert parent.wait(timeout=30) == 128 + signal.SIGTERM
  for pid in pids:  # terminated and reaped by the parent: no such process
    with pytest.raises(ProcessLookupError):
      os.kill(pid, 0)


def test_the_parent_works_on_the_report_while_the_workers_train(tmp_path, monkeypatch):
  """``meanwhile`` (the reference rows) runs while the workers are still training, not after."""
  finish = "import sys, time; time.sleep(3); open(sys.argv[1], 'w').write('done')"
  monkeypatch.setattr(table2, "worker_command", lambda scale, runs, out, only, cores, name: [
      sys.executable, "-c", finish, str(tmp_path / name)])
  monkeypatch.setattr(table2, "worker_cores", lambda workers: [[0], [1]])
  seen = []
  table2.run_workers("test", "runs", "out", None, 2,
                     meanwhile=lambda: seen.append(sorted(p.name for p in tmp_path.iterdir())))
  assert seen == [[]]  # no worker had finished
  assert sorted(p.name for p in tmp_path.iterdir()) == ["w0", "w1"]


def test_voxel_oracle_features_and_knn_recover_the_training_voxels(tmp_path):
  from experiments import voxel_oracle  # pylint: disable=import-outside-toplevel
  table = table2.Table2("test", str(tmp_path / "runs"), str(tmp_path / "out"))
  records = table.test_records[0][:2]
  norm = table.base_config().data.input_norm
  height, width = records[0]["tmax"].shape
  num_frames = records[0]["scan"].shape[0]
  for factor, distinct in ((16, -(-num_frames // 16)), (1, voxel_oracle.FULL_RESOLUTION_BINS)):
    features = voxel_oracle.voxel_features(records[0], factor, norm, 1.0)
    assert features.shape == (height * width, 2 * distinct)
  # Searching the test voxels themselves with k = 1 gives back their own Tmax in the brain, 0
  # outside it.
  tmax = voxel_oracle.knn_tmax(records, records, 4, norm, 1.0, neighbours=1)
  for r, t in zip(records, tmax):
    brain = r["brain_mask"] > 0
    np.testing.assert_allclose(t[brain], r["tmax"][brain])
    assert not t[~brain].any()
