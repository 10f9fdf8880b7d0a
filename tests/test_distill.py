"""Distillation: the PKD schedule, teacher combinations, frozen teachers, one compile, errors."""

import functools
import json
import pathlib
import subprocess
import sys

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest

from configs import student as student_config
from pkd_jax import checkpoints, distill, job, losses, models, train
from pkd_jax.data import pipeline, preprocess, temporal
from pkd_jax.errors import InputError
from pkd_jax.state import init_state, make_optimizer
from tests.helpers import config_with

REPO = pathlib.Path(__file__).resolve().parents[1]


def _config(arg="pkd,test", **overrides):
  return config_with(student_config.get_config, arg, **overrides)


def test_schedule_advances_exactly_after_patience_epochs_without_decrease():
  schedule = distill.PKDSchedule(num_stages=3, patience=3)
  losses_ = [1.0, 0.9, 0.8, 0.85, 0.8, 0.81, 0.7]  # best 0.8 at epoch 3; no decrease for 3 epochs
  switched = [schedule.end_epoch(e + 1, 10 * (e + 1), v) for e, v in enumerate(losses_[:6])]
  assert switched == [False, False, False, False, False, True]
  assert schedule.stage == 1
  assert schedule.history[-1]["epoch"] == 6 and schedule.history[-1]["step"] == 60
  assert "did not decrease for 3 epochs" in schedule.history[-1]["reason"]
  # A new stage starts afresh: the first epoch sets its best, no switch for `patience` epochs.
  assert [schedule.end_epoch(7 + i, 0, 5.0) for i in range(3)] == [False, False, False]
  assert schedule.end_epoch(10, 0, 5.0) is True


def test_schedule_min_delta_cap_and_last_stage():
  schedule = distill.PKDSchedule(num_stages=2, patience=2, min_delta=0.1)
  assert not schedule.end_epoch(1, 1, 1.0)
  assert not schedule.end_epoch(2, 2, 0.95)  # decreased, but by less than min_delta
  assert schedule.end_epoch(3, 3, 0.92)
  for epoch in range(4, 20):  # the last teacher stays
    assert not schedule.end_epoch(epoch, epoch, 10.0)
  capped = distill.PKDSchedule(num_stages=3, patience=100, max_epochs_per_stage=2)
  assert [capped.end_epoch(e, e, 1.0 / e) for e in (1, 2, 3, 4)] == [False, True, False, True]
  assert "cap of 2 epochs" in capped.history[1]["reason"]


def test_schedule_never_switches_by_patience_while_the_kd_loss_decreases():
  decreasing = [1.0 / epoch for epoch in range(1, 61)]
  schedule = distill.PKDSchedule(num_stages=4, patience=5)
  assert not any(schedule.end_epoch(e, e, v) for e, v in enumerate(decreasing, 1))
  assert schedule.stage == 0
  capped = distill.PKDSchedule(num_stages=4, patience=5, max_epochs_per_stage=15)
  switched = [e for e, v in enumerate(decreasing, 1) if capped.end_epoch(e, e, v)]
  assert switched == [15, 30, 45]
  assert [h["rule"] for h in capped.history] == ["start", "cap", "cap", "cap"]


def test_schedule_switches_by_patience_after_exactly_patience_epochs_of_a_flat_loss():
  schedule = distill.PKDSchedule(num_stages=4, patience=5, max_epochs_per_stage=50)
  switched = [e for e in range(1, 21) if schedule.end_epoch(e, 10 * e, 1.0)]
  # Each stage's first epoch sets its best; the next 5 do not decrease it: switch at its 6th.
  assert switched == [6, 12, 18]
  assert [h["rule"] for h in schedule.history] == ["start", "patience", "patience", "patience"]
  assert schedule.history[1]["epoch"] == 6 and schedule.history[1]["step"] == 60


@pytest.mark.parametrize("scale", ["demo", "paper"])
def test_pkd_patience_decides_at_demo_and_paper_scale(scale):
  """The paper's patience (5); a schedule epoch short enough that patience can move through all
  four teachers within the run, and any cap well beyond what patience needs."""
  config = _config(f"pkd,{scale}")
  d = config.distill
  assert d.patience >= 5
  source = pipeline.make_source(config.data, "train")
  epoch_steps = train.schedule_epoch_steps(config, len(source))
  num_stages = len(distill.get_strategy("pkd").teacher_specs(config.train.factor))
  assert config.train.steps // epoch_steps >= num_stages * (d.patience + 1)
  assert d.max_epochs_per_stage == 0 or d.max_epochs_per_stage >= 2 * (d.patience + 1)


def test_schedule_state_round_trips():
  schedule = distill.PKDSchedule(num_stages=4, patience=2)
  for epoch, value in enumerate([1.0, 1.0, 1.0, 0.5], 1):
    schedule.end_epoch(epoch, epoch, value)
  restored = distill.PKDSchedule.from_state_dict(json.loads(json.dumps(schedule.state_dict())))
  assert restored == schedule


def test_strategy_registry_names_teachers_and_rejects_unknown_names():
  assert tuple(distill.STRATEGIES) == ("none", "kd", "takd", "mtkd", "dgkd", "pkd")
  names = {n: [t.name for t in distill.get_strategy(n).teacher_specs(16, (0, 4))]
           for n in distill.STRATEGIES}
  assert names == {"none": [], "kd": ["x1"], "takd": ["ta_x4"], "mtkd": ["x1", "x1_seed4"],
                   "dgkd": ["x8", "x4", "x2", "x1"], "pkd": ["x8", "x4", "x2", "x1"]}
  pkd, dgkd = distill.get_strategy("pkd"), distill.get_strategy("dgkd")
  specs = pkd.teacher_specs(16)
  assert [t.name for t in pkd.active(specs, 2)] == ["x2"]  # one teacher at a time
  assert len(dgkd.active(specs, 2)) == 4 and dgkd.combine == "losses" and pkd.combine == "targets"
  assert [t.name for t in pkd.teacher_specs(8)] == ["x4", "x2", "x1"]  # the finer rungs only
  with pytest.raises(InputError, match="above its teachers'.*x1"):
    distill.get_strategy("kd").teacher_specs(1)  # a full-resolution student has no finer teacher
  with pytest.raises(InputError, match="above its teachers'.*x1"):
    pkd.teacher_specs(1)
  with pytest.raises(InputError, match="unknown strategy 'pdk'.*none, kd, takd, mtkd, dgkd, pkd"):
    distill.get_strategy("pdk")


def test_dgkd_drops_reproducibly_and_others_average():
  weights = [distill.get_strategy("dgkd").weights(4, step, seed=3, dgkd_drop=1) for step in range(20)]
  for w in weights:
    assert (w == 0).sum() == 1 and np.allclose(w[w > 0], 1 / 3) and np.isclose(w.sum(), 1)
  assert len({tuple(w) for w in weights}) > 1  # different teachers dropped on different steps
  np.testing.assert_array_equal(weights[5], distill.get_strategy("dgkd").weights(4, 5, 3, 1))
  np.testing.assert_allclose(distill.get_strategy("mtkd").weights(3, 0, 0, 1), [1 / 3] * 3)
  with pytest.raises(InputError, match="dgkd_drop"):
    distill.get_strategy("dgkd").weights(4, 0, 0, dgkd_drop=4)


def _model_and_teachers(config, seeds):
  model, tx = models.from_config(config), make_optimizer(config)
  variables = {}
  for s in seeds:
    state = init_state(config, model, tx, s)
    variables[s] = {"params": state.params, "batch_stats": state.batch_stats}
  return model, tx, variables


def _batch(config):
  source = pipeline.make_source(config.data, "train")
  dataset = pipeline.make_dataset_from_config(config.data, "train", config.seed, source=source)
  return next(pipeline.make_iterator(dataset)), source


@pytest.mark.parametrize("combine", ["targets", "losses"])
def test_mtkd_averages_map_targets_and_dgkd_weights_losses(combine):
  config = _config()
  model, _, variables = _model_and_teachers(config, (1, 2, 3))
  raw, _ = _batch(config)
  batch = train.device_batch(raw, config.data.factors, 16, [8, 4, 1])
  stacked = jax.tree.map(lambda *xs: np.stack(xs), *variables.values())
  weights = np.array([0.5, 0.0, 0.5], np.float32)
  loss_config = train.LossConfig.from_config(config)
  loss_config = train.LossConfig(loss_config.weights, loss_config.ranges, 0.7, 1.0, combine)
  student = variables[1]
  maps, aux = model.apply(student, batch["x"], train=False)
  kd, metrics = train._kd(aux["bottleneck"], maps, {"variables": stacked, "weights": weights},  # pylint: disable=protected-access
                    batch["teacher_x"], None, model=model, loss_config=loss_config)
  outputs = [model.apply(v, x, train=False) for v, x in zip(variables.values(), batch["teacher_x"])]
  kd_loss = functools.partial(losses.kd_loss, ranges=dict(loss_config.ranges),
                              weights=dict(loss_config.weights), perceptual=None, lambda_kd=0.7)
  if combine == "targets":  # MTKD: the averaged teachers' maps, each teacher's own features
    feature = sum(w * losses.feature_loss(aux["bottleneck"], o[1]["bottleneck"])
                  for w, o in zip(weights, outputs))
    avg_maps = {k: sum(w * o[0][k] for w, o in zip(weights, outputs)) for k in maps}
    expected = feature + 0.7 * losses.gt_loss(maps, avg_maps, dict(loss_config.ranges),
                                               dict(loss_config.weights), None)[0]
  else:  # DGKD: the weighted mean of per-teacher losses; the dropped teacher counts for nothing
    expected = sum(w * kd_loss(aux["bottleneck"], o[1]["bottleneck"], maps, o[0])[0]
                   for w, o in zip(weights, outputs))
  np.testing.assert_allclose(float(kd), float(expected), rtol=1e-5)
  np.testing.assert_allclose(float(metrics["kd"]), float(kd), rtol=1e-6)


def test_mtkd_teachers_train_on_the_same_phantom_cases_from_different_initialisations():
  config = _config("mtkd,test")
  specs = distill.get_strategy("mtkd").teacher_specs(16, config.distill.mtkd_seeds)
  configs = [job.teacher_config(config, spec) for spec in specs]
  assert len({c.seed for c in configs}) == len(specs)  # initialisation, shuffling, crops differ
  assert {c.data.seed for c in configs} == {config.data.seed}
  sources = [pipeline.make_source(c.data, "train") for c in configs]  # as train_and_evaluate
  for record in range(len(sources[0])):
    first = sources[0][record]
    for other in sources[1:]:
      for key in ("scan", "tmax", "cbv", "cbf", "brain_mask"):
        np.testing.assert_array_equal(other[record][key], first[key])


class _FixedOutputs:
  """A stand-in network whose "variables" are its outputs: (maps, {"bottleneck": f})."""

  def apply(self, variables, x, train):
    del x, train
    return variables["maps"], {"bottleneck": variables["bottleneck"]}


def test_mtkd_feature_term_is_per_teacher_not_against_the_averaged_features():
  """Teachers with bottlenecks f and -f average to 0; their feature spaces are not aligned, so the
  student must be scored against each one's own bottleneck: mean |0 - f| = mean |f|, not 0."""
  rng = np.random.default_rng(0)
  f = rng.normal(size=(1, 2, 2, 2, 8)).astype(np.float32)
  maps = {k: rng.uniform(0.1, 0.9, size=(1, 16, 16)).astype(np.float32) for k in ("tmax", "cbv", "cbf")}
  teachers = {"variables": {"maps": {k: np.stack([v, v]) for k, v in maps.items()},
                            "bottleneck": np.stack([f, -f])},
              "weights": np.array([0.5, 0.5], np.float32)}
  ranges = (("tmax", 1.0), ("cbv", 1.0), ("cbf", 1.0))
  loss_config = train.LossConfig((("mae", 1.0), ("ssim", 1.0), ("perceptual", 0.0)), ranges,
                                 lambda_kd=0.7, kd_combine="targets")
  kd, metrics = train._kd(np.zeros_like(f), maps, teachers, np.zeros((2, 1, 1)), None,  # pylint: disable=protected-access
                          model=_FixedOutputs(), loss_config=loss_config)
  np.testing.assert_allclose(float(metrics["kd/feature"]), np.mean(np.abs(f)), rtol=1e-6)
  np.testing.assert_allclose(float(metrics["kd/maps"]), 0.0, atol=1e-6)  # identical maps
  np.testing.assert_allclose(float(kd), np.mean(np.abs(f)), rtol=1e-5)


def test_teacher_gets_the_same_crop_at_its_own_factor():
  config = _config()
  raw, source = _batch(config)
  batch = train.device_batch(raw, config.data.factors, 16, [8, 1])
  p = config.data.patch
  for example in range(raw["scans"].shape[0]):
    case, slice_index, t0, y0, x0 = raw["origin"][example]
    scan = source[case * config.data.phantom.num_slices + slice_index]["scan"]
    scan = preprocess.network_input(scan, config.data.input_norm)
    for k, factor in enumerate([8, 1]):
      expected = temporal.degrade_np(scan, factor)[t0:t0 + p.num_frames, y0:y0 + p.height,
                                                   x0:x0 + p.width]
      np.testing.assert_array_equal(batch["teacher_x"][k, example, ..., 0], expected)
    student = temporal.degrade_np(scan, 16)[t0:t0 + p.num_frames, y0:y0 + p.height, x0:x0 + p.width]
    np.testing.assert_array_equal(batch["x"][example, ..., 0], student)


def _teaching(config, variables):
  specs = distill.get_strategy("pkd").teacher_specs(16)
  return distill.Teaching("pkd", specs, {s.name: variables[i] for i, s in enumerate(specs)},
                          config.seed, patience=config.distill.patience,
                          max_epochs_per_stage=config.distill.max_epochs_per_stage)


def test_pkd_run_compiles_once_keeps_teachers_frozen_and_resumes_in_stage(tmp_path, monkeypatch):
  config = _config(train__steps=8, train__eval_every=2)
  _, _, variables = _model_and_teachers(config, (11, 12, 13, 14))
  frozen = [np.asarray(x).copy() for v in variables.values() for x in jax.tree.leaves(v)]
  teaching = _teaching(config, list(variables.values()))
  before = train.train_step._cache_size()  # pylint: disable=protected-access
  train.train_and_evaluate(config, str(tmp_path / "straight"), teaching)
  assert teaching.stage == 3  # every teacher took its turn (an epoch is 2 steps, cap 1 epoch)
  assert train.train_step._cache_size() == before + 1  # pylint: disable=protected-access
  after = [np.asarray(x) for v in variables.values() for x in jax.tree.leaves(v)]
  for a, b in zip(frozen, after):
    np.testing.assert_array_equal(a, b)
  history = json.loads((tmp_path / "straight" / "schedule.json").read_text())
  assert [h["teacher"] for h in history] == ["x8", "x4", "x2", "x1"]
  assert [h["rule"] for h in history] == ["start", "cap", "cap", "cap"]  # test scale: 1-epoch cap
  # Crash after the checkpoint at step 4 (stage 2), resume: same stage, same end.
  real_step, calls = train.train_step, []

  def crash_at_step_5(*args, **kwargs):
    calls.append(1)
    if len(calls) == 5:
      raise KeyboardInterrupt
    return real_step(*args, **kwargs)

  monkeypatch.setattr(train, "train_step", crash_at_step_5)
  with pytest.raises(KeyboardInterrupt):
    train.train_and_evaluate(config, str(tmp_path / "resumed"), _teaching(config, list(variables.values())))
  monkeypatch.setattr(train, "train_step", real_step)
  resumed = _teaching(config, list(variables.values()))
  manager = checkpoints.checkpoint_manager(str(tmp_path / "resumed"), 3)
  assert manager.latest_step() == 4
  restored = manager.restore(4, args=ocp.args.Composite(teaching=ocp.args.JsonRestore()))
  assert restored["teaching"]["schedule"]["stage"] == 2
  train.train_and_evaluate(config, str(tmp_path / "resumed"), resumed)
  assert json.loads((tmp_path / "resumed" / "schedule.json").read_text()) == history
  for a, b in zip(jax.tree.leaves(checkpoints.load_variables(str(tmp_path / "straight"), config, "latest")),
                  jax.tree.leaves(checkpoints.load_variables(str(tmp_path / "resumed"), config, "latest"))):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_teacher_of_another_factor_or_architecture_is_an_error_before_training(tmp_path):
  config = _config()
  (tmp_path / "teachers" / "x8").mkdir(parents=True)
  spec = dict(checkpoints.model_spec(job.teacher_config(config, distill.TeacherSpec(8))), factor=4)
  (tmp_path / "teachers" / "x8" / "model.json").write_text(json.dumps(spec))
  with pytest.raises(InputError, match=r"x8.*another model.*factor 4 vs 8"):
    job.Job(config, str(tmp_path)).check()
  assert not (tmp_path / "teachers" / "x4").exists()  # nothing trained


@pytest.mark.parametrize("args,message", [
    (["--config=configs/student.py:bogus,test"], "bad config string 'bogus,test'"),
    (["--config=configs/student.py:pkd,test", "--config.train.factor=1"],
     "must be above its teachers'"),
])
def test_bad_student_input_is_a_clear_error(tmp_path, args, message):
  result = subprocess.run([sys.executable, "-m", "pkd_jax.main", f"--workdir={tmp_path}", *args],
                          cwd=REPO, capture_output=True, text=True, check=False)
  assert result.returncode == 2, result.stderr[-2000:]
  assert message in result.stderr and "Traceback" not in result.stderr
  assert not (tmp_path / "teachers").exists()


def test_evaluate_mode_without_a_trained_run_is_a_clear_error(tmp_path):
  result = subprocess.run([sys.executable, "-m", "pkd_jax.main", f"--workdir={tmp_path}",
                           "--config=configs/student.py:pkd,test", "--mode=evaluate"],
                          cwd=REPO, capture_output=True, text=True, check=False)
  assert result.returncode == 2, result.stderr[-2000:]
  assert "student_pkd: no trained model here" in result.stderr and "Traceback" not in result.stderr
  assert not list(tmp_path.glob("results_*"))
