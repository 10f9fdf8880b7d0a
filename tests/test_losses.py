"""Tests for pkd_jax.losses and the VGG16 feature net (pkd_jax.models.vgg)."""

import importlib.util
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from pkd_jax import losses
from pkd_jax.errors import InputError
from pkd_jax.models import vgg
from pkd_jax.tools import vgg as vgg_tool

WEIGHTS = {"mae": 1.0, "ssim": 1.0, "perceptual": 1.0}
NO_PERC = {"mae": 1.0, "ssim": 1.0, "perceptual": 0.0}


@pytest.fixture(scope="module")
def vgg0():
  return vgg.random_vgg16_params(0)


def _maps(seed, shape=(2, 16, 16), scale=1.0):
  rng = np.random.default_rng(seed)
  return jnp.asarray(rng.uniform(0.0, scale, shape), jnp.float32)


def _fake_state_dict(seed=0, with_extras=True):
  """Random arrays under torchvision's VGG16 names and shapes (conv5, classifier optional)."""
  rng = np.random.default_rng(seed)
  convs = list(vgg.VGG16_CONVS)
  if with_extras:
    convs += [("conv5_1", 24, 512, 512), ("conv5_2", 26, 512, 512), ("conv5_3", 28, 512, 512)]
  arrays = {}
  for _, index, c_in, c_out in convs:
    std = np.sqrt(2.0 / (9 * c_in))
    arrays[f"features.{index}.weight"] = rng.normal(0, std, (c_out, c_in, 3, 3)).astype(np.float32)
    arrays[f"features.{index}.bias"] = rng.normal(0, 0.1, (c_out,)).astype(np.float32)
  if with_extras:
    arrays["classifier.6.weight"] = rng.normal(0, 0.01, (10, 7)).astype(np.float32)
    arrays["classifier.6.bias"] = np.zeros((10,), np.float32)
  return arrays


def _torch_conv2d(x_nchw, weight_oihw, bias):
  """PyTorch conv2d, stride 1, padding 1: out[b,o,i,j] = bias[o] + sum w[o,c,u,v] xpad[b,c,i+u,j+v]."""
  b, c, h, w = x_nchw.shape
  xpad = np.pad(x_nchw.astype(np.float64), ((0, 0), (0, 0), (1, 1), (1, 1)))
  out = np.zeros((b, weight_oihw.shape[0], h, w)) + bias[None, :, None, None]
  for u in range(3):
    for v in range(3):
      out += np.einsum("bchw,oc->bohw", xpad[:, :, u:u + h, v:v + w], weight_oihw[:, :, u, v])
  return out


# ---------------------------------------------------------------- MAE, SSIM


def test_mae_of_known_offset():
  target = _maps(0)
  assert float(losses.mae(target + 0.25, target)) == pytest.approx(0.25, abs=1e-6)
  assert float(losses.mae(target - 0.1, target)) == pytest.approx(0.1, abs=1e-6)


def test_ssim_identical_is_one_and_decreases_with_noise():
  target = _maps(1)
  assert np.allclose(losses.ssim(target, target), 1.0, atol=1e-5)
  assert losses.ssim(target, target).shape == (2,)
  assert float(losses.ssim_loss(target, target)) == pytest.approx(0.0, abs=1e-5)
  rng = np.random.default_rng(2)
  noise = rng.normal(0, 1, target.shape).astype(np.float32)
  values = [float(jnp.mean(losses.ssim(target + s * noise, target))) for s in (0.01, 0.1, 0.3)]
  assert values[0] > values[1] > values[2]
  assert values[0] < 1.0


def test_ssim_needs_window_sized_maps():
  small = jnp.zeros((1, 10, 16))
  with pytest.raises(ValueError, match="at least 11"):
    losses.ssim(small, small)


# ---------------------------------------------------------------- perceptual


def test_vgg_feature_shapes(vgg0):
  features = vgg0.features(jnp.zeros((2, 16, 24, 3)))
  assert {k: v.shape for k, v in features.items()} == {
      "relu1_2": (2, 16, 24, 64), "relu2_2": (2, 8, 12, 128), "relu3_3": (2, 4, 6, 256),
      "relu4_3": (2, 2, 3, 512)}


def test_perceptual_zero_for_identical_positive_otherwise(vgg0):
  a, b = _maps(3), _maps(4)
  assert float(losses.perceptual_loss(vgg0, a, a)) == pytest.approx(0.0, abs=1e-10)
  assert float(losses.perceptual_loss(vgg0, a, b)) > 0.0
  one_layer = losses.perceptual_loss(vgg0, a, b, layers=("relu1_2",))
  assert 0.0 < float(one_layer) < float(losses.perceptual_loss(vgg0, a, b))
  with pytest.raises(ValueError, match="unknown layers"):
    losses.perceptual_loss(vgg0, a, b, layers=("relu5_3",))


def test_perceptual_gradient_flows_to_pred_only(vgg0):
  a, b = _maps(5), _maps(6)
  grad_fn = jax.jit(jax.grad(lambda p, t: losses.perceptual_loss(vgg0, p, t), argnums=(0, 1)))
  g_pred, g_target = grad_fn(a, b)
  assert np.all(np.isfinite(g_pred)) and float(jnp.abs(g_pred).max()) > 0.0
  assert float(jnp.abs(g_target).max()) == 0.0


def test_random_vgg_deterministic_per_seed(vgg0):
  again = vgg.random_vgg16_params(0)
  other = vgg.random_vgg16_params(1)
  k0 = vgg0.params["params"]["conv2_1"]["kernel"]
  np.testing.assert_array_equal(k0, again.params["params"]["conv2_1"]["kernel"])
  assert not np.allclose(k0, other.params["params"]["conv2_1"]["kernel"])
  assert not vgg0.imagenet_normalise
  # He-normal: std sqrt(2 / fan_in), zero bias.
  assert float(jnp.std(k0)) == pytest.approx(np.sqrt(2.0 / (9 * 64)), rel=0.05)
  assert float(jnp.abs(vgg0.params["params"]["conv2_1"]["bias"]).max()) == 0.0
  a, b = _maps(7), _maps(8)
  assert float(losses.perceptual_loss(vgg0, a, b)) == float(losses.perceptual_loss(again, a, b))
  assert float(losses.perceptual_loss(vgg0, a, b)) != float(losses.perceptual_loss(other, a, b))


# ---------------------------------------------------------------- torchvision weights


def test_load_torchvision_npz_matches_pytorch_conv(tmp_path):
  arrays = _fake_state_dict(0)
  path = tmp_path / "vgg16.npz"
  np.savez(path, **arrays)
  net = vgg.load_vgg16_params(path)
  assert net.imagenet_normalise
  assert net.params["params"]["conv1_1"]["kernel"].shape == (3, 3, 3, 64)

  rng = np.random.default_rng(1)
  x_nhwc = rng.normal(size=(2, 8, 8, 3)).astype(np.float32)
  _, state = vgg.VGG16Features().apply(net.params, jnp.asarray(x_nhwc),
                                       capture_intermediates=True, mutable=["intermediates"])
  conv1_1 = np.asarray(state["intermediates"]["conv1_1"]["__call__"][0])  # (B, H, W, 64)
  x_nchw = x_nhwc.transpose(0, 3, 1, 2)
  expected = _torch_conv2d(x_nchw, arrays["features.0.weight"], arrays["features.0.bias"])
  np.testing.assert_allclose(conv1_1.transpose(0, 3, 1, 2), expected, rtol=1e-4, atol=1e-4)

  # relu1_2 = relu(conv(relu(conv(x)))) with features.0 and features.2.
  h = np.maximum(expected, 0)
  h = np.maximum(_torch_conv2d(h, arrays["features.2.weight"], arrays["features.2.bias"]), 0)
  relu1_2 = vgg.VGG16Features().apply(net.params, jnp.asarray(x_nhwc))["relu1_2"]
  np.testing.assert_allclose(np.asarray(relu1_2).transpose(0, 3, 1, 2), h, rtol=1e-4, atol=1e-4)


def test_imagenet_normalisation_applied(tmp_path):
  arrays = _fake_state_dict(0, with_extras=False)
  path = tmp_path / "vgg16.npz"
  np.savez(path, **arrays)
  net = vgg.load_vgg16_params(path)
  raw = vgg.PerceptualNet(params=net.params, imagenet_normalise=False)
  x = jnp.asarray(np.random.default_rng(0).uniform(size=(1, 8, 8, 3)), jnp.float32)
  x_norm = (x - jnp.asarray(vgg.IMAGENET_MEAN)) / jnp.asarray(vgg.IMAGENET_STD)
  np.testing.assert_allclose(net.features(x)["relu2_2"], raw.features(x_norm)["relu2_2"],
                             rtol=1e-5, atol=1e-5)


def test_load_errors_name_file_and_key(tmp_path):
  missing = tmp_path / "nope.npz"
  with pytest.raises(InputError, match="no such file") as e:
    vgg.load_vgg16_params(missing)
  assert e.value.where == str(missing)

  garbage = tmp_path / "garbage.npz"
  garbage.write_bytes(b"this is not a zip archive")
  with pytest.raises(InputError, match="cannot read") as e:
    vgg.load_vgg16_params(garbage)
  assert e.value.where == str(garbage)

  arrays = _fake_state_dict(0, with_extras=False)
  del arrays["features.12.bias"]
  path = tmp_path / "missing_key.npz"
  np.savez(path, **arrays)
  with pytest.raises(InputError, match=r"missing key 'features\.12\.bias'") as e:
    vgg.load_vgg16_params(path)
  assert e.value.where == str(path)

  arrays = _fake_state_dict(0, with_extras=False)
  arrays["features.5.weight"] = arrays["features.5.weight"][:, :, :, :2]
  path = tmp_path / "wrong_shape.npz"
  np.savez(path, **arrays)
  with pytest.raises(InputError) as e:
    vgg.load_vgg16_params(path)
  assert e.value.where == str(path)
  assert "'features.5.weight'" in e.value.problem
  assert "(128, 64, 3, 2)" in e.value.problem and "(128, 64, 3, 3)" in e.value.problem


def test_save_state_dict_npz_roundtrip_atomic(tmp_path):
  arrays = _fake_state_dict(0)
  dst = tmp_path / "out.npz"
  vgg.save_state_dict_npz(arrays, dst)
  assert sorted(os.listdir(tmp_path)) == ["out.npz"]  # no temp file left behind
  net = vgg.load_vgg16_params(dst)
  np.testing.assert_array_equal(net.params["params"]["conv4_3"]["kernel"],
                                arrays["features.21.weight"].transpose(2, 3, 1, 0))
  bad = dict(arrays)
  del bad["features.0.weight"]
  with pytest.raises(InputError, match="features.0.weight"):
    vgg.save_state_dict_npz(bad, tmp_path / "bad.npz", where="vgg16.pth")
  assert not (tmp_path / "bad.npz").exists()


@pytest.mark.skipif(importlib.util.find_spec("torch") is not None, reason="torch is installed")
def test_convert_without_torch_is_a_clear_error(tmp_path, capsys):
  with pytest.raises(SystemExit) as e:
    vgg_tool.main(["convert", str(tmp_path / "vgg16.pth"), str(tmp_path / "vgg16.npz")])
  assert e.value.code == 2
  assert "PyTorch is not installed" in capsys.readouterr().err


# ---------------------------------------------------------------- L_map, L_GT


def test_map_loss_zero_perceptual_weight_skips_vgg():
  pred, target = _maps(9, scale=24.0), _maps(10, scale=24.0)
  loss, terms = losses.map_loss(pred, target, 24.0, NO_PERC, perceptual=None)
  assert set(terms) == {"mae", "ssim", "perceptual"}
  assert float(terms["perceptual"]) == 0.0
  expected = terms["mae"] + (1.0 - terms["ssim"])
  assert float(loss) == pytest.approx(float(expected), rel=1e-6)
  with pytest.raises(ValueError, match="perceptual"):
    losses.map_loss(pred, target, 24.0, WEIGHTS, perceptual=None)
  with pytest.raises(ValueError, match="keys"):
    losses.map_loss(pred, target, 24.0, {"mae": 1.0, "ssim": 1.0}, perceptual=None)


def test_map_loss_weighted_sum_and_target_clipping(vgg0):
  pred, target = _maps(11, scale=20.0), _maps(12, scale=20.0)
  weights = {"mae": 2.0, "ssim": 0.5, "perceptual": 3.0}
  loss, terms = jax.jit(lambda p, t: losses.map_loss(p, t, 20.0, weights, vgg0))(pred, target)
  expected = 2.0 * terms["mae"] + 0.5 * (1.0 - terms["ssim"]) + 3.0 * terms["perceptual"]
  assert float(loss) == pytest.approx(float(expected), rel=1e-5)
  assert float(terms["perceptual"]) > 0.0
  # Target values above the range are clipped to it; pred is not clipped.
  over = target.at[:, :4, :4].set(50.0)
  clipped = target.at[:, :4, :4].set(20.0)
  a = losses.map_loss(pred, over, 20.0, NO_PERC, None)[0]
  b = losses.map_loss(pred, clipped, 20.0, NO_PERC, None)[0]
  assert float(a) == pytest.approx(float(b), rel=1e-6)
  _, t = losses.map_loss(target * 2.0, target, 20.0, NO_PERC, None)
  assert float(t["mae"]) == pytest.approx(float(jnp.mean(target)) / 20.0, rel=1e-5)


def test_gt_loss_sums_maps_and_range_scaling(vgg0):
  ranges = {"tmax": 24.0, "cbv": 10.0, "cbf": 100.0}
  preds = {k: _maps(20 + i, scale=r) for i, (k, r) in enumerate(ranges.items())}
  targets = {k: _maps(30 + i, scale=r) for i, (k, r) in enumerate(ranges.items())}
  preds["extra"] = jnp.zeros((2, 16, 16))  # ignored
  loss, metrics = losses.gt_loss(preds, targets, ranges, WEIGHTS, vgg0)
  per_map = [losses.map_loss(preds[k], targets[k], ranges[k], WEIGHTS, vgg0)[0] for k in ranges]
  assert float(loss) == pytest.approx(float(sum(per_map)), rel=1e-5)
  assert float(metrics["gt"]) == float(loss)
  assert set(metrics) == {f"{k}/{t}" for k in ranges for t in ("mae", "ssim", "perceptual", "loss")
                         } | {"gt"}
  for k, value in zip(ranges, per_map):
    assert float(metrics[f"{k}/loss"]) == pytest.approx(float(value), rel=1e-5)

  # Scaling pred, target and range by the same factor leaves the loss unchanged.
  scaled, _ = losses.gt_loss({k: 7.0 * v for k, v in preds.items()},
                             {k: 7.0 * v for k, v in targets.items()},
                             {k: 7.0 * v for k, v in ranges.items()}, WEIGHTS, vgg0)
  assert float(scaled) == pytest.approx(float(loss), rel=1e-4)
  # A different range changes it.
  other, _ = losses.gt_loss(preds, targets, dict(ranges, tmax=48.0), WEIGHTS, vgg0)
  assert float(other) != pytest.approx(float(loss), rel=1e-4)

  with pytest.raises(KeyError, match="cbf"):
    losses.gt_loss({"tmax": preds["tmax"], "cbv": preds["cbv"]}, targets, ranges, NO_PERC, None)


def test_gt_loss_jits_and_differentiates_without_vgg():
  ranges = {"tmax": 24.0, "cbv": 10.0, "cbf": 100.0}
  preds = {k: _maps(40 + i, scale=r) for i, (k, r) in enumerate(ranges.items())}
  targets = {k: _maps(50 + i, scale=r) for i, (k, r) in enumerate(ranges.items())}
  fn = jax.jit(jax.value_and_grad(
      lambda p: losses.gt_loss(p, targets, ranges, NO_PERC, None), has_aux=True))
  (loss, metrics), grads = fn(preds)
  assert np.isfinite(float(loss)) and float(metrics["gt"]) == pytest.approx(float(loss))
  for k in ranges:
    assert np.all(np.isfinite(grads[k])) and float(jnp.abs(grads[k]).max()) > 0.0


def test_gt_loss_one_vgg_pass_matches_per_map_perceptual(vgg0):
  rng = np.random.default_rng(4)
  ranges = {"tmax": 20.0, "cbv": 8.0, "cbf": 100.0}
  preds = {k: jnp.asarray(rng.uniform(0, 1.2 * r, (2, 16, 16)), jnp.float32) for k, r in ranges.items()}
  targets = {k: jnp.asarray(rng.uniform(0, r, (2, 16, 16)), jnp.float32) for k, r in ranges.items()}
  weights = {"mae": 1.0, "ssim": 1.0, "perceptual": 1.0}
  loss, metrics = losses.gt_loss(preds, targets, ranges, weights, vgg0)
  for k, r in ranges.items():
    separate = losses.perceptual_loss(vgg0, preds[k] / r, jnp.clip(targets[k] / r, 0, 1))
    np.testing.assert_allclose(float(metrics[f"{k}/perceptual"]), float(separate), rtol=1e-4)
  given = losses.perceptual_features(vgg0, losses.scale_maps(preds, ranges))
  again, _ = losses.gt_loss(preds, targets, ranges, weights, vgg0, pred_features=given)
  np.testing.assert_allclose(float(again), float(loss), rtol=1e-6)


def test_map_loss_mse_term_weighs_voxels_by_their_error():
  """The optional MSE term (config.loss.mse): absent means the paper's loss; present, it adds
  w * mean((pred - target)^2) on the range-scaled maps."""
  target = jnp.zeros((1, 16, 16))
  pred = target.at[0, :2].set(10.0)  # a missed 10 s lesion on 2 of 16 rows, range 20 s
  base, terms = losses.map_loss(pred, target, 20.0, NO_PERC, perceptual=None)
  assert "mse" not in terms
  with_mse, terms = losses.map_loss(pred, target, 20.0, dict(NO_PERC, mse=4.0), perceptual=None)
  np.testing.assert_allclose(terms["mse"], 0.25 * 2 / 16, rtol=1e-6)
  np.testing.assert_allclose(with_mse, base + 4.0 * 0.25 * 2 / 16, rtol=1e-6)
  with pytest.raises(ValueError, match="unknown"):
    losses.map_loss(pred, target, 20.0, dict(NO_PERC, l2=1.0), perceptual=None)
