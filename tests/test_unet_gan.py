"""UNET-GAN-Assisted: the generator's shared encoder and per-map decoders, the PatchGAN, the
alternating adversarial step (separate optimiser states, separately logged losses), one-batch
overfitting and a command-line run through the teachers' pipeline."""

import functools
import json
import pathlib
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import unet_gan as unet_gan_config
from pkd_jax import checkpoints, gan, main, models, train
from pkd_jax.data import pipeline
from pkd_jax.data.case import TARGET_MAPS
from pkd_jax.models.unet_gan import PatchDiscriminator, UNetGAN
from pkd_jax.state import GANState, TrainState, init_state, make_optimizer
from tests.helpers import config_with

REPO = pathlib.Path(__file__).resolve().parents[1]


def _config(arg="8,test", **overrides):
  return config_with(unet_gan_config.get_config, arg, **overrides)


def _setup(config):
  model, tx = models.from_config(config), make_optimizer(config)
  dataset = pipeline.make_dataset_from_config(config.data, "train", config.seed)
  batch = train.device_batch(next(pipeline.make_iterator(dataset)), config.data.factors,
                             config.train.factor)
  return model, tx, batch, train.LossConfig.from_config(config)


def test_generator_shares_one_encoder_and_has_a_decoder_per_map():
  model = UNetGAN(filters=4, num_frames=16)
  x = jax.ShapeDtypeStruct((2, 16, 32, 48, 1), jnp.float32)
  variables = jax.eval_shape(functools.partial(model.init, train=False), jax.random.key(0), x)
  names = set(variables["params"])
  assert {"enc1", "enc2", "enc3", "enc4", "bottleneck"} <= names  # one encoder
  for k in TARGET_MAPS:  # a decoder per map
    assert {f"{k}_up{i}" for i in range(1, 5)} | {f"{k}_dec{i}" for i in range(1, 5)} <= names
  assert len(names) == 5 + 9 * len(TARGET_MAPS)
  maps, aux = jax.eval_shape(functools.partial(model.apply, train=False), variables, x)
  assert {k: v.shape for k, v in maps.items()} == {k: (2, 32, 48) for k in TARGET_MAPS}
  assert aux["bottleneck"].shape == (2, 2, 3, 64)


def test_each_decoder_changes_only_its_map():
  model = UNetGAN(filters=2, num_frames=16)
  x = jax.random.normal(jax.random.key(1), (1, 16, 32, 32, 1))
  variables = model.init(jax.random.key(0), x, train=False)
  before, _ = model.apply(variables, x, train=False)
  params = dict(variables["params"])
  params["cbv_out"] = jax.tree.map(lambda p: p + 1.0, params["cbv_out"])
  after, _ = model.apply({**variables, "params": params}, x, train=False)
  for k in TARGET_MAPS:
    assert np.allclose(before[k], after[k]) == (k != "cbv")


@pytest.mark.parametrize("size,patches", [(32, 2), (64, 6)])
def test_patch_discriminator_gives_one_logit_per_patch(size, patches):
  critic = PatchDiscriminator(filters=4)
  x = jnp.zeros((2, size, size, 19))
  variables = critic.init(jax.random.key(0), x)
  assert set(variables) == {"params"}  # instance normalisation: no batch statistics
  assert critic.apply(variables, x).shape == (2, patches, patches)


def test_state_holds_both_networks_with_separate_optimiser_states():
  config = _config()
  model, tx, _, _ = _setup(config)
  state = init_state(config, model, tx, 0)
  assert isinstance(state, GANState)
  assert (jax.tree.structure(state.critic_opt_state) != jax.tree.structure(state.opt_state))
  assert jax.tree.structure(state.critic_params) == jax.tree.structure(
      models.critic_from_config(config).init(jax.random.key(0), jnp.zeros((1, 32, 32, 19)))["params"])
  # a V-Net teacher's state has no critic
  assert type(init_state(_config_vnet(), models.from_config(_config_vnet()), tx, 0)) is TrainState


def _config_vnet():
  from configs import teacher  # pylint: disable=import-outside-toplevel
  return teacher.get_config("8,test")


def test_step_updates_generator_then_discriminator_and_logs_both():
  config = _config()
  model, tx, batch, loss_config = _setup(config)
  step = functools.partial(gan.train_step, model=model, tx=tx, loss_config=loss_config,
                           critic=models.critic_from_config(config), adversarial=0.01)
  state = init_state(config, model, tx, 0)
  before = jax.tree.map(np.array, (state.params, state.critic_params))
  state, metrics = step(state, batch, None, None)
  for old, new in zip(before, (state.params, state.critic_params)):
    assert any(not np.allclose(a, b) for a, b in zip(jax.tree.leaves(old), jax.tree.leaves(new)))
  assert {"loss", "gt", "g_adversarial", "d_loss", "d_real", "d_fake"} <= set(metrics)
  m = jax.device_get(metrics)
  assert np.isclose(m["loss"], m["gt"] + 0.01 * m["g_adversarial"], rtol=1e-5)
  assert 0 < m["d_real"] < 1 and 0 < m["d_fake"] < 1 and int(state.step) == 1
  with pytest.raises(ValueError, match="no teachers"):
    step(state, batch, {"variables": None}, None)


def test_without_the_adversarial_term_the_generator_step_is_the_supervised_step():
  """adversarial = 0: the generator's update is exactly pkd_jax.train's (the discriminator's
  update then does not touch it)."""
  config = _config()
  model, tx, batch, loss_config = _setup(config)
  gan_state = init_state(config, model, tx, 0)
  plain = TrainState(step=gan_state.step, params=gan_state.params,
                     batch_stats=gan_state.batch_stats, opt_state=gan_state.opt_state)
  plain = jax.tree.map(jnp.copy, plain)  # the steps donate their states
  gan_state, _ = gan.train_step(gan_state, batch, None, None, model=model, tx=tx,
                                loss_config=loss_config, critic=models.critic_from_config(config),
                                adversarial=0.0)
  plain, _ = train.train_step(plain, batch, None, None, model=model, tx=tx,
                              loss_config=loss_config)
  # Two different programs: on a CPU they agree to float32 rounding; on an H200 (2026-12-04) 5 of
  # 18432 weights of one layer differed by up to 1.2e-6 (other cuDNN algorithms, other summation
  # orders). An adversarial term leaking into the update would move weights by a good part of
  # Adam's first step, ~learning_rate = 1e-3 each: atol is 2% of that.
  for a, b in zip(jax.tree.leaves(gan_state.params), jax.tree.leaves(plain.params)):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=2e-5)


def test_tiny_generator_overfits_one_batch_against_its_discriminator():
  config = _config(train__steps=100, train__learning_rate=3e-3)
  model, tx, batch, loss_config = _setup(config)
  step = train.make_step(config, model, tx, loss_config)
  state = init_state(config, model, tx, 0)
  gts = []
  for _ in range(100):
    state, metrics = step(state, batch, None, None)
    gts.append(float(metrics["gt"]))
  assert np.mean(gts[-5:]) < np.mean(gts[:5]) / 4, (gts[:5], gts[-5:])


@pytest.mark.slow
def test_command_line_run_checkpoints_logs_both_losses_and_evaluates(tmp_path):
  workdir = tmp_path / "run"
  args = ["--config=configs/unet_gan.py:16,test", "--config.train.steps=2",
          "--config.train.eval_every=2"]
  result = subprocess.run([sys.executable, "-m", "pkd_jax.main", *args, f"--workdir={workdir}"],
                          cwd=REPO, capture_output=True, text=True, check=False)
  assert result.returncode == 0, result.stderr[-2000:]
  assert (workdir / "checkpoints" / "2").is_dir()
  assert json.loads((workdir / "model.json").read_text())["model"] == "unet_gan"
  events = b"".join(p.read_bytes() for p in (workdir / "tb").glob("events.out.tfevents.*"))
  for tag in (b"train/g_adversarial", b"train/d_loss", b"train/gt"):
    assert tag in events
  config = _config("16,test", train__steps=2, train__eval_every=2)
  variables = checkpoints.load_variables(str(workdir), config)
  assert set(variables) == {"params", "batch_stats"}  # the generator's alone
  main.run(config, str(workdir), mode="evaluate")
  assert "| unet_gan x16 |" in (workdir / "results.md").read_text()
