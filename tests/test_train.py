"""Training: overfitting, a full "test" run, kill-and-resume, one compile across teachers, errors."""

import functools
import json
import os
import pathlib
import re
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import optax
import orbax.checkpoint as ocp
import pytest

from configs import teacher as teacher_config
from pkd_jax import checkpoints, hooks, models, train
from pkd_jax.data import pipeline
from pkd_jax.errors import InputError
from pkd_jax.state import init_state, make_optimizer
from tests.helpers import config_with

REPO = pathlib.Path(__file__).resolve().parents[1]


def _config(arg="8,test", **overrides):
  return config_with(teacher_config.get_config, arg, **overrides)


def _one_batch(config):
  dataset = pipeline.make_dataset_from_config(config.data, "train", config.seed)
  return train.device_batch(next(pipeline.make_iterator(dataset)), config.data.factors,
                            config.train.factor)


def test_tiny_model_overfits_one_batch():
  config = _config(train__steps=150, train__learning_rate=3e-3)
  model, tx = models.from_config(config), make_optimizer(config)
  state = init_state(config, model, tx, 0)
  batch = _one_batch(config)
  perceptual = train.make_perceptual(config)
  step = functools.partial(train.train_step, model=model, tx=tx,
                           loss_config=train.LossConfig.from_config(config))
  losses = []
  for _ in range(150):
    state, metrics = step(state, batch, None, perceptual)
    losses.append(float(metrics["loss"]))
  assert np.mean(losses[-5:]) < np.mean(losses[:5]) / 10, (losses[:5], losses[-5:])


def _losses_after(config, steps: int) -> list[float]:
  model, tx = models.from_config(config), make_optimizer(config)
  state = init_state(config, model, tx, 0)
  batch = _one_batch(config)
  step = functools.partial(train.train_step, model=model, tx=tx,
                           loss_config=train.LossConfig.from_config(config))
  losses = []
  for _ in range(steps):
    state, metrics = step(state, batch, None, None)
    losses.append(float(metrics["loss"]))
  return losses


def test_bfloat16_training_follows_float32():
  # bf16 activations and convolutions, float32 parameters, losses and optimiser state: after 50
  # steps of a tiny run on one batch the loss is within 5% of float32's (and it did fall).
  f32 = _losses_after(_config(train__steps=50, train__learning_rate=3e-3), 50)
  bf16 = _losses_after(_config(train__steps=50, train__learning_rate=3e-3,
                               model__dtype="bfloat16"), 50)
  assert f32[-1] < f32[0] / 2, f32
  assert abs(bf16[-1] - f32[-1]) <= 0.05 * f32[-1], (f32[-1], bf16[-1])


class _RecordingHook(hooks.Hook):
  """Records what the loop calls, and carries a counter through checkpoints."""

  def __init__(self):
    self.calls, self.loaded = [], None

  def after_step(self, step, metrics, log):
    self.calls.append(("step", step, float(metrics["loss"])))

  def end_epoch(self, step, log):
    self.calls.append(("epoch", step))

  def after_evaluation(self, step, metrics, log):
    self.calls.append(("evaluation", step, metrics["loss"]))

  def finish(self, log):
    self.calls.append(("finish", log.workdir))

  def state_dict(self):
    return {"steps_seen": sum(c[0] == "step" for c in self.calls)}

  def load_state_dict(self, state):
    self.loaded = state


def test_test_run_trains_validates_checkpoints_and_logs(tmp_path):
  hook = _RecordingHook()
  result = train.train_and_evaluate(_config(loss__perceptual=1.0), str(tmp_path), hook)
  kinds = [c[:2] for c in hook.calls]
  # 4 training slices in batches of 2: an epoch is 2 steps; validation every 3 steps
  assert kinds == [("step", 1), ("step", 2), ("epoch", 2), ("step", 3), ("evaluation", 3),
                   ("step", 4), ("epoch", 4), ("step", 5), ("step", 6), ("epoch", 6),
                   ("evaluation", 6), ("finish", str(tmp_path))]
  assert hook.calls[-2][2] == result["val_loss"]
  resumed = _RecordingHook()  # nothing left to train: the checkpoint's hook state comes back
  train.train_and_evaluate(_config(loss__perceptual=1.0), str(tmp_path), resumed)
  assert resumed.loaded == {"steps_seen": 6} and [c[0] for c in resumed.calls] == ["finish"]
  assert result["val_tmax/perceptual"] > 0  # the whole paper loss, perceptual term included
  assert result["step"] == 6 and np.isfinite(result["val_loss"])
  steps = sorted(int(p.name) for p in (tmp_path / "checkpoints").iterdir() if p.name.isdigit())
  assert steps == [3, 6]
  assert list((tmp_path / "tb").glob("events.out.tfevents.*"))
  assert (tmp_path / "model.json").exists()
  variables = checkpoints.load_variables(str(tmp_path), _config(loss__perceptual=1.0))
  assert set(variables) == {"params", "batch_stats"}


def _leaves(tree):
  return [np.asarray(x) for x in jax.tree.leaves(tree)]


def test_killed_and_resumed_run_ends_like_an_uninterrupted_one(tmp_path):
  args = ["--config=configs/teacher.py:8,test", "--config.train.steps=6",
          "--config.train.eval_every=2"]
  config = _config(train__steps=6, train__eval_every=2)
  uninterrupted = tmp_path / "straight"
  train.train_and_evaluate(config, str(uninterrupted))
  resumed = tmp_path / "resumed"
  command = [sys.executable, "-m", "pkd_jax.main", *args, f"--workdir={resumed}"]
  process = subprocess.Popen(command, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
  deadline = time.time() + 240
  while not (resumed / "checkpoints" / "2").exists():  # a checkpoint is committed by a rename
    assert process.poll() is None, "the run ended before it could be killed"
    assert time.time() < deadline
    time.sleep(0.05)
  process.send_signal(signal.SIGKILL)
  process.wait()
  finished = subprocess.run(command, cwd=REPO, capture_output=True, text=True, check=False)
  assert finished.returncode == 0, finished.stderr[-2000:]
  assert "teacher 1/8: vnet to 6 steps, resuming at step " in finished.stdout  # one line per stage
  console = finished.stdout + finished.stderr  # quiet libraries: orbax logged 108 INFO lines here
  assert len(re.findall(r"^I\d{4} ", console, flags=re.MULTILINE)) <= 20, console[-3000:]
  for a, b in zip(_leaves(checkpoints.load_variables(str(uninterrupted), config, which="latest")),
                  _leaves(checkpoints.load_variables(str(resumed), config, which="latest"))):
    np.testing.assert_array_equal(a, b)


def test_train_step_compiles_once_for_different_teachers():
  config = _config()
  model, tx = models.from_config(config), make_optimizer(config)
  loss_config = train.LossConfig.from_config(config)
  state = init_state(config, model, tx, 0)
  teachers = []
  for seed in (1, 2):
    t = init_state(config, model, tx, seed)
    variables = {"params": t.params, "batch_stats": t.batch_stats}
    teachers.append({"variables": jax.tree.map(lambda a: a[None], variables),
                     "weights": np.ones(1, np.float32)})
  batch = _one_batch(config)
  batch["teacher_x"] = batch["x"][None]
  perceptual = train.make_perceptual(config)
  before = train.train_step._cache_size()  # pylint: disable=protected-access
  for teacher in teachers + teachers:
    state, metrics = train.train_step(state, batch, teacher, perceptual, model=model, tx=tx,
                                      loss_config=loss_config)
    assert np.isfinite(float(metrics["kd"]))
  assert train.train_step._cache_size() == before + 1  # pylint: disable=protected-access


def _main(tmp_path, *args):
  command = [sys.executable, "-m", "pkd_jax.main", f"--workdir={tmp_path / 'run'}", *args]
  return subprocess.run(command, cwd=REPO, capture_output=True, text=True, check=False)


@pytest.mark.parametrize("args,message", [
    (["--config=configs/teacher.py:8,test", "--config.train.nonexistent=1"],
     "no such config field 'nonexistent'"),
    (["--config=configs/teacher.py:8,test", "--config.train.stepz=1"],  # was escaped three times
     """--config.train.stepz: no such config field 'stepz'; did you mean "steps" instead of "stepz"?"""),
    (["--config=configs/teacher.py:3,test"], "'3' is neither a temporal factor"),
    (["--config=configs/teacher.py:8,test", "--config.data.patch.height=24"],
     "does not divide by 16"),
    (["--config=configs/teacher.py:8,test", "--config.loss.perceptual_weights=/nope/vgg16.npz"],
     "/nope/vgg16.npz"),
    (["--config=configs/teacher.py:8,huge"], "'huge' is neither a temporal factor (1, 2, 4, 8) nor a scale"),
])
def test_bad_input_is_a_clear_error(tmp_path, args, message):
  result = _main(tmp_path, *args)
  assert result.returncode == 2, result.stderr[-2000:]
  assert message in result.stderr
  assert "Traceback" not in result.stderr and "\\" not in result.stderr


def test_workdir_of_another_architecture_is_a_clear_error(tmp_path):
  train.train_and_evaluate(_config(train__steps=1, train__eval_every=1), str(tmp_path / "run"))
  result = _main(tmp_path, "--config=configs/teacher.py:8,test", "--config.model.filters=8")
  assert result.returncode == 2
  assert "another model" in result.stderr and "filters 4 vs 8" in result.stderr
  assert "Traceback" not in result.stderr


@pytest.mark.parametrize("log_every", [1, 4])  # 4: step 5's loss is read only at step 6
def test_non_finite_loss_stops_with_message_and_keeps_last_checkpoint(tmp_path, monkeypatch,
                                                                      log_every):
  real_step, calls = train.train_step, []

  def poisoned(state, batch, teacher, perceptual, **kwargs):
    state, metrics = real_step(state, batch, teacher, perceptual, **kwargs)
    calls.append(1)
    if len(calls) == 5:
      metrics = dict(metrics, loss=np.float32("nan"))
    return state, metrics

  monkeypatch.setattr(train, "train_step", poisoned)
  with pytest.raises(train.TrainingStopped, match="non-finite loss.*step 5.*last good checkpoint is step 3"):
    train.train_and_evaluate(_config(train__log_every=log_every), str(tmp_path))
  assert (tmp_path / "checkpoints" / "3").exists()
  assert not (tmp_path / "checkpoints" / "6").exists()


def test_a_model_json_without_the_grid_gains_it_and_another_grid_is_another_model(tmp_path):
  config = _config()
  spec = checkpoints.model_spec(config)
  older = {k: v for k, v in spec.items() if k != "grid"}  # as runs wrote it before the grid
  (tmp_path / "model.json").write_text(json.dumps(older))
  checkpoints.check_workdir_spec(str(tmp_path), spec)
  assert json.loads((tmp_path / "model.json").read_text()) == spec
  with pytest.raises(InputError, match="another model.*grid"):
    checkpoints.check_workdir_spec(str(tmp_path), dict(spec, grid=dict(spec["grid"], height=64)))


def test_best_checkpoint_is_the_lowest_validation_loss_and_survives_the_keep_policy(tmp_path):
  """Step 2 has the lowest validation loss: with keep=1 it must stay on disk, reopened managers
  must call it best, and load_variables / predict's "best" must load it (not the latest)."""
  config = _config()
  model, tx = models.from_config(config), make_optimizer(config)
  state = init_state(config, model, tx, 0)
  checkpoints.check_workdir_spec(str(tmp_path), checkpoints.model_spec(config))
  manager = checkpoints.checkpoint_manager(str(tmp_path), keep=1)
  val_losses = {1: 3.0, 2: 1.0, 3: 2.0, 4: 2.5, 5: 4.0}

  def save(manager, step, val_loss):
    saved = state.replace(step=np.int32(step),
                          params=jax.tree.map(lambda x: x + step, state.params))
    manager.save(step, args=ocp.args.Composite(
        state=ocp.args.StandardSave(saved), data=ocp.args.JsonSave({}),
        teaching=ocp.args.JsonSave({})), metrics={"val_loss": val_loss})
    manager.wait_until_finished()

  on_disk = lambda: sorted(int(p.name) for p in (tmp_path / "checkpoints").iterdir()
                           if p.name.isdigit())
  for step, val_loss in val_losses.items():
    save(manager, step, val_loss)
  manager.close()
  assert on_disk() == [2, 5]  # the best and the latest 1
  reopened = checkpoints.checkpoint_manager(str(tmp_path), keep=1)  # as a resumed run does
  assert reopened.best_step() == 2 and reopened.latest_step() == 5
  save(reopened, 6, 5.0)
  reopened.close()
  assert on_disk() == [2, 6]
  for which, step in (("best", 2), ("latest", 6)):
    loaded = checkpoints.load_variables(str(tmp_path), config, which)
    for a, b in zip(_leaves(loaded["params"]), _leaves(state.params)):
      np.testing.assert_allclose(a, b + step, rtol=1e-6)


def _save_one(workdir, config, state, keep: int) -> None:
  """A workdir holding one checkpoint of state, step 1 (validation loss 1.0), as the loop saved
  before the flat layout (the state's own tree as the item "state"): such checkpoints still load."""
  checkpoints.check_workdir_spec(str(workdir), checkpoints.model_spec(config))
  manager = checkpoints.checkpoint_manager(str(workdir), keep=keep)
  manager.save(1, args=ocp.args.Composite(
      state=ocp.args.StandardSave(state), data=ocp.args.JsonSave({}),
      teaching=ocp.args.JsonSave({})), metrics={"val_loss": 1.0})
  manager.wait_until_finished()
  manager.close()


def test_load_variables_reads_only_the_variables_and_each_checkpoint_once(tmp_path, monkeypatch):
  """The optimiser state is not read (a checkpoint of another optimiser loads); a second load of
  the same checkpoint comes from memory; a checkpoint changed on disk is read again."""
  config = _config()
  model = models.from_config(config)
  state = init_state(config, model, optax.sgd(0.1, momentum=0.9), 0)  # not the configured Adam
  state = state.replace(params=jax.tree.map(lambda x: x + 1.0, state.params))
  _save_one(tmp_path, config, state, keep=1)
  reads = []
  restore = ocp.CheckpointManager.restore
  monkeypatch.setattr(ocp.CheckpointManager, "restore",
                      lambda self, *a, **k: reads.append(a[0]) or restore(self, *a, **k))
  first = checkpoints.load_variables(str(tmp_path), config)
  assert set(first) == {"params", "batch_stats"} and reads == [1]
  for a, b in zip(_leaves(first), _leaves({"params": state.params,
                                            "batch_stats": state.batch_stats})):
    np.testing.assert_array_equal(a, b)
  again = checkpoints.load_variables(str(tmp_path), config)
  assert again["params"] is first["params"] and reads == [1]
  step_folder = tmp_path / "checkpoints" / "1"
  os.utime(step_folder, ns=(step_folder.stat().st_atime_ns, step_folder.stat().st_mtime_ns + 10**9))
  assert checkpoints.load_variables(str(tmp_path), config)["params"] is not first["params"]
  assert reads == [1, 1]


class _Iterator:  # what restore_latest needs of the input iterator
  def set_state(self, state):
    self.state = state


def test_a_checkpoint_is_the_state_flat_and_restores_exactly_and_old_ones_still_load(tmp_path):
  """checkpoints.save writes the state as a few flat arrays (orbax's cost is per array);
  restore_latest gives back every leaf bit for bit, load_variables the variables without the
  optimiser state (another optimiser's checkpoint loads), and a checkpoint of the older layout
  (the state's tree) resumes too."""
  config = _config()
  model = models.from_config(config)
  state = init_state(config, model, optax.sgd(0.1, momentum=0.9), 0)  # not the configured Adam
  state = state.replace(step=jax.numpy.asarray(7, jax.numpy.int32),
                        params=jax.tree.map(lambda x: x + 1.0, state.params))
  checkpoints.check_workdir_spec(str(tmp_path), checkpoints.model_spec(config))
  manager = checkpoints.checkpoint_manager(str(tmp_path), keep=2)
  checkpoints.save(manager, 1, state, {"position": 3}, {"stage": 2}, 1.0)
  manager.wait_until_finished()
  item = tmp_path / "checkpoints" / "1" / checkpoints.FLAT
  assert item.is_dir() and not (tmp_path / "checkpoints" / "1" / "state").exists()
  saved = manager.item_metadata(1)[checkpoints.FLAT]
  assert set(saved) == {"variables", "rest"} and "int32_0" in saved["rest"]
  assert len(jax.tree.leaves(saved)) < 20 < 100 < len(jax.tree.leaves(state))
  teaching = hooks.Hook()
  loaded = {}
  teaching.load_state_dict = loaded.update
  iterator = _Iterator()
  restored = checkpoints.restore_latest(manager, state, iterator, teaching)
  assert iterator.state == {"position": 3} and loaded == {"stage": 2}
  assert jax.tree.structure(restored) == jax.tree.structure(state)
  for a, b in zip(jax.tree.leaves(restored), jax.tree.leaves(state)):
    assert a.dtype == b.dtype and a.shape == b.shape
    np.testing.assert_array_equal(a, b)
  variables = checkpoints.load_variables(str(tmp_path), config)
  for a, b in zip(_leaves(variables), _leaves({"params": state.params,
                                                "batch_stats": state.batch_stats})):
    np.testing.assert_array_equal(a, b)
  old = tmp_path / "old"
  old.mkdir()
  _save_one(old, config, state, keep=1)
  restored = checkpoints.restore_latest(checkpoints.checkpoint_manager(str(old), keep=1), state,
                                        _Iterator())
  for a, b in zip(jax.tree.leaves(restored), jax.tree.leaves(state)):
    np.testing.assert_array_equal(a, b)


def test_loading_a_checkpoint_leaves_a_save_in_progress_alone(tmp_path, caplog):
  """predict / evaluate on a run that is still training: opening its checkpoints to load must
  not delete the temporary folder of the checkpoint being written (a writing manager does)."""
  config = _config()
  model, tx = models.from_config(config), make_optimizer(config)
  _save_one(tmp_path, config, init_state(config, model, tx, 0), keep=2)
  in_progress = tmp_path / "checkpoints" / "2.orbax-checkpoint-tmp"
  (in_progress / "state").mkdir(parents=True)
  assert not checkpoints.is_finished(str(tmp_path), config)
  with caplog.at_level("WARNING"):
    checkpoints.load_variables(str(tmp_path), config, "latest")
  assert not [r for r in caplog.records if "read only" in r.getMessage()  # orbax's two notices
              or "read_only" in r.getMessage()], caplog.text
  time.sleep(1.0)  # orbax cleans up in a background thread
  assert in_progress.is_dir()
  checkpoints.checkpoint_manager(str(tmp_path), keep=2)  # a writer (a resumed run) does clean up
  time.sleep(1.0)
  assert not in_progress.exists()
