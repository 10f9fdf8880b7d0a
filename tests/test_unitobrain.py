"""UniToBrain's U-Nets: shapes, three independent networks, parameters, bad inputs, its config,
one-batch overfitting and a command-line run through the teachers' pipeline."""

import functools
import json
import pathlib
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import base
from configs import teacher as teacher_config
from configs import unitobrain as unitobrain_config
from pkd_jax import main, models, predict, train
from pkd_jax.data import pipeline
from pkd_jax.data.case import TARGET_MAPS
from pkd_jax.data.preprocess import Geometry
from pkd_jax.errors import InputError
from pkd_jax.state import init_state, make_optimizer
from pkd_jax.models.unitobrain import UniToBrain
from pkd_jax.models.vnet import VNet
from tests.helpers import config_with

REPO = pathlib.Path(__file__).resolve().parents[1]


def _config(arg="8,test", **overrides):
  return config_with(unitobrain_config.get_config, arg, **overrides)


def _init_shapes(model, shape, dtype=jnp.float32):
  """Variables' shapes and dtypes via eval_shape: traces init, computes nothing."""
  return jax.eval_shape(functools.partial(model.init, train=False), jax.random.PRNGKey(0),
                        jax.ShapeDtypeStruct(shape, dtype))


# --------------------------------------------------------------------------------------------
# Shapes and parameters (eval_shape: no computation).


@pytest.mark.parametrize("b,t,h,w,f,dtype", [
    (1, 32, 16, 16, 2, jnp.float32),
    (2, 16, 32, 48, 4, jnp.float32),
    (3, 5, 64, 16, 2, jnp.bfloat16),  # T need not divide by 16: the frames are channels
])
def test_output_and_bottleneck_shapes_and_dtypes(b, t, h, w, f, dtype):
  model = models.get_model("unitobrain", filters=f, num_frames=t, dtype=dtype)
  shape = (b, t, h, w, 1)
  variables = _init_shapes(model, shape)
  for leaf in jax.tree_util.tree_leaves(variables):
    assert leaf.dtype == jnp.float32  # parameters and statistics stay float32
  maps, aux = jax.eval_shape(functools.partial(model.apply, train=False), variables,
                             jax.ShapeDtypeStruct(shape, jnp.float32))
  assert sorted(maps) == sorted(TARGET_MAPS)
  for m in maps.values():
    assert (m.shape, m.dtype) == ((b, h, w), jnp.float32)
  assert aux["bottleneck"].shape == (b, h // 16, w // 16, 16 * f)
  assert aux["bottleneck"].dtype == dtype


def _param_count(f, frames):
  """One U-Net per map, counted from the layer shapes of the module docstring."""
  block = lambda cin, w: 9 * cin * w + 9 * w * w + 2 * 2 * w  # two bias-free convs, two BNs
  widths = [f, 2 * f, 4 * f, 8 * f]
  n, cin = 0, frames
  for w in widths:
    n, cin = n + block(cin, w), w
  n, cin = n + block(cin, 16 * f), 16 * f
  for w in reversed(widths):
    n += 4 * cin * w + w + block(2 * w, w)  # the 2x2 transposed conv (with bias), the block
    cin = w
  return 3 * (n + f + 1)  # + the 1x1 output conv with bias; three networks


@pytest.mark.parametrize("f,frames", [(64, 32), (8, 32), (4, 16)])
def test_parameter_count(f, frames):
  variables = _init_shapes(UniToBrain(filters=f, num_frames=frames), (1, frames, 16, 16, 1))
  ours = models.count_params(variables["params"])
  print(f"UniToBrain(F={f}, T={frames}): {ours:,} parameters")
  assert ours == _param_count(f, frames)
  if (f, frames) == (64, 32):  # the paper's widths, 32-frame windows
    assert ours == 93_163_011


def test_three_networks_with_bias_free_3x3_convs_and_widths_of_f():
  assert UniToBrain.heads == TARGET_MAPS  # one network per map, in the data's order
  f, t = 3, 7
  params = _init_shapes(UniToBrain(filters=f, num_frames=t), (1, t, 16, 16, 1))["params"]
  assert sorted(params) == sorted(f"unet_{k}" for k in TARGET_MAPS)
  shapes = {k: jax.tree.map(lambda a: a.shape, v) for k, v in params.items()}
  assert shapes["unet_tmax"] == shapes["unet_cbv"] == shapes["unet_cbf"]
  net = shapes["unet_tmax"]
  # Encoder F, 2F, 4F, 8F from the T input channels, the bottleneck at 16 F.
  cin = t
  for name, w in (("enc1", f), ("enc2", 2 * f), ("enc3", 4 * f), ("enc4", 8 * f),
                  ("bottleneck", 16 * f)):
    assert net[name]["conv0"] == {"kernel": (3, 3, cin, w)}  # no bias
    assert net[name]["conv1"] == {"kernel": (3, 3, w, w)}
    assert net[name]["bn0"] == net[name]["bn1"] == {"scale": (w,), "bias": (w,)}
    cin = w
  # Decoder: 2x2 up-convolution to 8F, 4F, 2F, F, then the block on [skip, up] (2 w channels).
  for level, w in ((4, 8 * f), (3, 4 * f), (2, 2 * f), (1, f)):
    assert net[f"up{level}"] == {"kernel": (2, 2, 2 * w, w), "bias": (w,)}
    assert net[f"dec{level}"]["conv0"] == {"kernel": (3, 3, 2 * w, w)}
    assert net[f"dec{level}"]["conv1"] == {"kernel": (3, 3, w, w)}
  assert net["out"] == {"kernel": (1, 1, f, 1), "bias": (1,)}


def test_each_map_comes_from_its_own_network():
  # Changing the CBV network's parameters changes the CBV map only.
  model = UniToBrain(filters=2, num_frames=4)
  x = jax.random.normal(jax.random.PRNGKey(1), (1, 4, 16, 16, 1))
  # Random variables of init's shapes (a jitted init takes far longer to compile than apply).
  rng = np.random.default_rng(0)
  variables = jax.tree.map(lambda a: jnp.asarray(rng.uniform(0.5, 1.0, a.shape), a.dtype),
                           _init_shapes(model, x.shape))
  apply = jax.jit(functools.partial(model.apply, train=False))
  maps, _ = apply(variables, x)
  params = dict(variables["params"])
  params["unet_cbv"] = jax.tree.map(lambda a: a + 0.1, params["unet_cbv"])
  changed, _ = apply({**variables, "params": params}, x)
  np.testing.assert_array_equal(changed["tmax"], maps["tmax"])
  np.testing.assert_array_equal(changed["cbf"], maps["cbf"])
  assert not np.allclose(changed["cbv"], maps["cbv"])
  for m in maps.values():
    assert np.all(np.isfinite(m))


# --------------------------------------------------------------------------------------------
# Bad inputs.


@pytest.mark.parametrize("shape,match", [
    ((1, 8, 16, 16), "must have shape \\(B, T, H, W, 1\\)"),
    ((1, 8, 16, 16, 2), "must have shape \\(B, T, H, W, 1\\)"),
    ((1, 16, 16, 16, 1), "T=16 frames but the model was built for num_frames=8"),
    ((1, 8, 24, 16, 1), "H and W must be multiples of 16.*'H': 24"),
    ((1, 8, 16, 40, 1), "H and W must be multiples of 16.*'W': 40"),
])
def test_check_input_names_the_problem(shape, match):
  model = UniToBrain(filters=2, num_frames=8)
  with pytest.raises(ValueError, match=match):
    model.check_input(shape)
  with pytest.raises(ValueError, match=match):  # the network checks its input itself
    _init_shapes(model, shape)


@pytest.mark.parametrize("kwargs,match", [
    (dict(filters=0), "filters: must be a positive integer"),
    (dict(num_frames=2.5), "num_frames: must be a positive integer"),
])
def test_bad_attributes_are_input_errors(kwargs, match):
  with pytest.raises(InputError, match=match):
    UniToBrain(**kwargs)


# --------------------------------------------------------------------------------------------
# The config and models.from_config.


@pytest.mark.parametrize("factor", [1, 2, 4, 8, 16])
@pytest.mark.parametrize("scale", base.SCALES)
def test_config_trains_on_its_own_factor_with_mse(factor, scale):
  config = unitobrain_config.get_config(f"{factor},{scale}")
  assert config.role == "teacher" and config.model.name == "unitobrain"
  assert config.train.factor == factor and tuple(config.data.factors) == (factor,)
  loss = config.loss
  assert (loss.mse, loss.mae, loss.ssim, loss.perceptual) == (1, 0, 0, 0)
  assert config.model.filters == unitobrain_config.FILTERS[scale]
  train.check_config(config)  # the trainer accepts every factor, 16 included


def test_config_string_errors_and_paper_width():
  assert unitobrain_config.get_config(None).model.filters == 64
  assert unitobrain_config.get_config("demo").train.factor == 1
  with pytest.raises(ValueError, match="'3' is neither a temporal factor \\(1, 2, 4, 8, 16\\)"):
    unitobrain_config.get_config("3,test")


def test_from_config_passes_each_model_only_its_attributes():
  model = models.from_config(_config("4,test"))
  assert isinstance(model, UniToBrain)
  assert (model.filters, model.num_frames, model.dtype) == (4, 16, jnp.float32)
  assert model.output_scales == (20.0, 8.0, 100.0)  # config.model.scale_outputs: map ranges
  assert models.from_config(_config("demo", model__dtype="bfloat16")).dtype == jnp.bfloat16
  # The V-Net still gets its implementations (resolved for the backend) and output scales.
  vnet_config = config_with(teacher_config.get_config, "8,test", model__scale_outputs=True)
  vnet = models.from_config(vnet_config)
  assert isinstance(vnet, VNet)
  assert {k: getattr(vnet, k) for k in ("down_impl", "up_impl", "conv_impl")} == \
      models.impls_from_config(vnet_config)
  assert vnet.output_scales == (20.0, 8.0, 100.0) and vnet.filters == 4


# --------------------------------------------------------------------------------------------
# Training.


def test_tiny_model_overfits_one_batch():
  config = _config(train__steps=100, train__learning_rate=3e-3)
  model, tx = models.from_config(config), make_optimizer(config)
  state = init_state(config, model, tx, 0)
  dataset = pipeline.make_dataset_from_config(config.data, "train", config.seed)
  batch = train.device_batch(next(pipeline.make_iterator(dataset)), config.data.factors,
                             config.train.factor)
  step = functools.partial(train.train_step, model=model, tx=tx,
                           loss_config=train.LossConfig.from_config(config))
  losses = []
  for _ in range(100):
    state, metrics = step(state, batch, None, None)
    losses.append(float(metrics["loss"]))
  # Measured: 0.35 -> 0.022 (16x) over the 100 steps.
  assert np.mean(losses[-5:]) < np.mean(losses[:5]) / 10, (losses[:5], losses[-5:])


@pytest.mark.slow
def test_command_line_run_at_factor_16_checkpoints_evaluates_and_loads(tmp_path):
  workdir = tmp_path / "run"
  args = ["--config=configs/unitobrain.py:16,test", "--config.train.steps=2",
          "--config.train.eval_every=2"]
  result = subprocess.run([sys.executable, "-m", "pkd_jax.main", *args, f"--workdir={workdir}"],
                          cwd=REPO, capture_output=True, text=True, check=False)
  assert result.returncode == 0, result.stderr[-2000:]
  assert (workdir / "checkpoints" / "2").is_dir()
  spec = json.loads((workdir / "model.json").read_text())
  assert (spec["model"], spec["factor"], spec["filters"]) == ("unitobrain", 16, 4)
  history = json.loads((workdir / "validation.json").read_text())
  assert [h["step"] for h in history] == [2] and np.isfinite(history[0]["loss"])
  # Evaluation (the teacher's --mode=evaluate) and prediction load it unchanged.
  config = _config("16,test", train__steps=2, train__eval_every=2)
  main.run(config, str(workdir), mode="evaluate")
  assert "| unitobrain x16 |" in (workdir / "results.md").read_text()
  run = predict.load_run(workdir)  # the training grid comes from model.json
  assert run.geometry == Geometry(config.data.height, config.data.width, config.data.num_frames,
                                  config.data.frame_interval_s)
  assert isinstance(run.model, UniToBrain) and run.model.filters == 4
  assert jax.tree.structure(run.variables["params"]) == jax.tree.structure(
      _init_shapes(run.model, (1, 16, 16, 16, 1))["params"])
