"""V-Net: shapes, separate heads, BatchNorm state, bad inputs, parameter count, exact fast paths."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from pkd_jax import models
from pkd_jax.models import vnet

FAST = vnet.FAST_IMPLS
PLAIN = vnet.PLAIN_IMPLS


def _init_shapes(model, shape, dtype=jnp.float32):
  """Variables' shapes and dtypes via eval_shape: traces init, computes nothing."""
  return jax.eval_shape(functools.partial(model.init, train=False), jax.random.PRNGKey(0),
                        jax.ShapeDtypeStruct(shape, dtype))


def _assert_close(actual, expected, rtol=1e-5):
  """Equal up to float32 rounding, relative to the magnitude of the whole array."""
  actual, expected = np.asarray(actual), np.asarray(expected)
  assert actual.shape == expected.shape
  scale = max(float(np.abs(expected).max()), 1e-30)
  np.testing.assert_allclose(actual, expected, rtol=0, atol=rtol * scale)


# --------------------------------------------------------------------------------------------
# The exact re-formulations against the plain lax convolutions.

_PAIRS = {
    "space_to_depth": (vnet.down_conv_as_space_to_depth, vnet.down_conv, (2, 4, 6, 8, 3),
                       (2, 2, 2, 3, 5)),
    "depth_to_space": (vnet.up_conv_as_depth_to_space, vnet.up_conv, (2, 2, 3, 4, 3),
                       (2, 2, 2, 3, 5)),
    "conv2d_sum": (vnet.conv3d_same_as_conv2d_sum, vnet.conv3d_same, (2, 4, 6, 5, 3),
                   (3, 3, 3, 3, 4)),
    "conv2d_stacked": (vnet.conv3d_same_as_conv2d_stacked, vnet.conv3d_same, (2, 4, 6, 5, 3),
                       (3, 3, 3, 3, 4)),
}


@pytest.mark.parametrize("name", sorted(_PAIRS))
def test_fast_path_equals_plain_convolution_forward_and_gradients(name):
  fast, plain, x_shape, k_shape = _PAIRS[name]
  kx, kk, kc = jax.random.split(jax.random.PRNGKey(1), 3)
  x = jax.random.normal(kx, x_shape)
  kernel = jax.random.normal(kk, k_shape)
  cot = jax.random.normal(kc, jax.eval_shape(plain, x, kernel).shape)

  @jax.jit
  def forward_and_grads(x, kernel):
    # Outputs and the gradients of a random linear functional w.r.t. the input and the kernel.
    out = []
    for fn in (fast, plain):
      y, vjp = jax.vjp(fn, x, kernel)
      out.append((y, *vjp(cot)))
    return out

  (y_fast, *g_fast), (y_plain, *g_plain) = forward_and_grads(x, kernel)
  _assert_close(y_fast, y_plain)
  for a, b in zip(g_fast, g_plain):
    _assert_close(a, b)


def test_depth_to_space_inverts_space_to_depth():
  x = jnp.arange(2 * 4 * 6 * 2 * 3, dtype=jnp.float32).reshape(2, 4, 6, 2, 3)
  np.testing.assert_array_equal(vnet.depth_to_space(vnet.space_to_depth(x)), x)


def test_up_conv_orientation_is_flipped_relative_to_pytorch():
  # One input voxel, one channel: the output block is the kernel reversed along T, H and W.
  kernel = jnp.arange(8.0).reshape(2, 2, 2, 1, 1)
  out = vnet.up_conv(jnp.ones((1, 1, 1, 1, 1)), kernel)
  np.testing.assert_array_equal(out[0, ..., 0], kernel[::-1, ::-1, ::-1, 0, 0])


# --------------------------------------------------------------------------------------------
# Shapes and parameters (eval_shape: no computation).


@pytest.mark.parametrize("b,t,h,w,f,impls,dtype", [
    (1, 16, 16, 16, 2, PLAIN, jnp.float32),
    (2, 32, 16, 32, 4, PLAIN, jnp.float32),
    (2, 16, 48, 32, 2, FAST, jnp.float32),
    (1, 32, 32, 32, 4, FAST, jnp.bfloat16),
    (3, 16, 64, 16, 2, dict(conv_impl="conv2d_sum"), jnp.bfloat16),
])
def test_output_and_bottleneck_shapes(b, t, h, w, f, impls, dtype):
  model = models.get_model("vnet", filters=f, num_frames=t, dtype=dtype, **impls)
  shape = (b, t, h, w, 1)
  variables = _init_shapes(model, shape)
  for leaf in jax.tree_util.tree_leaves(variables):
    assert leaf.dtype == jnp.float32  # parameters and statistics stay float32
  maps, aux = jax.eval_shape(functools.partial(model.apply, train=False), variables,
                             jax.ShapeDtypeStruct(shape, jnp.float32))
  assert sorted(maps) == ["cbf", "cbv", "tmax"]
  for m in maps.values():
    assert (m.shape, m.dtype) == ((b, h, w), jnp.float32)
  assert aux["bottleneck"].shape == (b, t // 16, h // 16, w // 16, 16 * f)
  assert aux["bottleneck"].dtype == dtype


def test_all_implementations_declare_the_same_parameters():
  shape = (1, 16, 16, 16, 1)
  plain = _init_shapes(vnet.VNet(filters=2, num_frames=16, **PLAIN), shape)
  fast = _init_shapes(vnet.VNet(filters=2, num_frames=16, **FAST), shape)
  assert jax.tree_util.tree_structure(plain) == jax.tree_util.tree_structure(fast)
  assert jax.tree_util.tree_map(lambda a: a.shape, plain) == jax.tree_util.tree_map(
      lambda a: a.shape, fast)


def _torch_reference_param_count(f, frames):
  """Parameters of shared/bench/torch_vnet.py's VNet(f, frames), counted from its layer shapes."""
  conv = lambda k, cin, cout: k ** 3 * cin * cout + cout  # Conv3d / ConvTranspose3d, with bias
  block = lambda cin, cout: conv(3, cin, cout) + 2 * cout + 1  # + BatchNorm3d affine + PReLU
  stack = lambda d, cin, cout: sum(block(cin if i == 0 else cout, cout) for i in range(d))
  n, cin = stack(1, 1, f), f
  for w, d in zip([2 * f, 4 * f, 8 * f, 16 * f], [2, 3, 3, 3]):
    n += conv(2, cin, w) + stack(d, w, w)
    cin = w
  head, cin = 0, 16 * f
  for w, s, d in zip([16 * f, 8 * f, 4 * f, 2 * f], [8 * f, 4 * f, 2 * f, f], [3, 3, 2, 1]):
    head += conv(2, cin, w) + conv(3, s, w) + stack(d, w, w)
    cin = w
  head += (2 * f + 1) + (frames + 1)  # Conv3d(2F, 1, 1) and Conv2d(frames, 1, 1)
  return n + 3 * head


@pytest.mark.parametrize("f,frames", [(16, 32), (8, 16)])
def test_parameter_count_matches_the_torch_reference(f, frames):
  variables = _init_shapes(vnet.VNet(filters=f, num_frames=frames), (1, frames, 16, 16, 1))
  ours = models.count_params(variables["params"])
  print(f"VNet(F={f}, T={frames}): {ours:,} parameters (torch reference: "
        f"{_torch_reference_param_count(f, frames):,})")
  assert ours == _torch_reference_param_count(f, frames)
  if (f, frames) == (16, 32):
    assert ours == 34_174_093


# --------------------------------------------------------------------------------------------
# A real tiny network: F=2, T=H=W=16, batch 2.

_SHAPE = (2, 16, 16, 16, 1)


@pytest.fixture(scope="module")
def tiny():
  model = vnet.VNet(filters=2, num_frames=16)
  x = jax.random.normal(jax.random.PRNGKey(0), _SHAPE)
  # An RBG key: with the default threefry, XLA:CPU takes ~20-30 s to compile the ~150 random draws
  # of init (the forward pass compiles in ~1 s); RBG takes a few seconds.
  key = jax.random.key(1, impl="unsafe_rbg")
  variables = jax.jit(functools.partial(model.init, train=False))(key, x)
  return model, variables, x


def test_heads_have_separate_parameters(tiny):
  _, variables, _ = tiny
  params = variables["params"]
  heads = [params[f"head_{name}"] for name in ("tmax", "cbv", "cbf")]
  assert "encoder" in params and len(params) == 4
  for a, b in [(0, 1), (0, 2), (1, 2)]:
    assert jax.tree_util.tree_structure(heads[a]) == jax.tree_util.tree_structure(heads[b])
    ka, kb = heads[a]["level4"]["conv0"]["kernel"], heads[b]["level4"]["conv0"]["kernel"]
    assert not np.allclose(ka, kb)
    assert not np.allclose(heads[a]["mix_time"]["kernel"], heads[b]["mix_time"]["kernel"])


def test_batch_stats_update_only_in_training(tiny):
  model, variables, x = tiny
  apply = jax.jit(model.apply, static_argnames=("train", "mutable"))
  (maps, aux), new = apply(variables, x, train=True, mutable=("batch_stats",))
  old_leaves = jax.tree_util.tree_leaves(variables["batch_stats"])
  new_leaves = jax.tree_util.tree_leaves(new["batch_stats"])
  assert len(old_leaves) == len(new_leaves) > 0
  assert all(not np.allclose(a, b) for a, b in zip(old_leaves, new_leaves))
  assert aux["bottleneck"].shape == (2, 1, 1, 1, 32)
  assert all(bool(jnp.isfinite(m).all()) for m in maps.values())
  # Evaluation uses the running averages and leaves them alone.
  _, same = apply(variables, x, train=False, mutable=("batch_stats",))
  jax.tree_util.tree_map(np.testing.assert_array_equal, same["batch_stats"],
                         variables["batch_stats"])


@pytest.mark.parametrize("train", [False, True])
@pytest.mark.parametrize("forms", ["cpu", "gpu"])  # each backend's "auto" choice
def test_fast_implementations_give_the_same_outputs(tiny, train, forms):
  _, variables, x = tiny
  outs = []
  for impls in (PLAIN, vnet.AUTO_IMPLS[forms]):
    model = vnet.VNet(filters=2, num_frames=16, **impls)
    fn = jax.jit(functools.partial(model.apply, train=train, mutable=["batch_stats"]))
    outs.append(fn(variables, x))
  (maps_p, aux_p), stats_p = outs[0]
  (maps_f, aux_f), stats_f = outs[1]
  for name in maps_p:
    _assert_close(maps_f[name], maps_p[name], rtol=1e-4)
  _assert_close(aux_f["bottleneck"], aux_p["bottleneck"], rtol=1e-4)
  jax.tree_util.tree_map(functools.partial(_assert_close, rtol=1e-4), stats_f, stats_p)


# --------------------------------------------------------------------------------------------
# Errors.


@pytest.mark.parametrize("shape,match", [
    ((2, 16, 16, 16), r"\(B, T, H, W, 1\)"),
    ((2, 16, 16, 16, 3), r"\(B, T, H, W, 1\)"),
    ((2, 32, 16, 16, 1), "num_frames=16"),
    ((2, 16, 24, 16, 1), r"multiples of 16.*'H': 24"),
    ((2, 16, 16, 8, 1), r"multiples of 16.*'W': 8"),
])
def test_bad_input_shape_is_a_clear_error(shape, match):
  model = vnet.VNet(filters=2, num_frames=16)
  with pytest.raises(ValueError, match=match):
    _init_shapes(model, shape)


def test_frames_not_a_multiple_of_16_is_a_clear_error():
  with pytest.raises(ValueError, match=r"multiples of 16.*'T': 24"):
    _init_shapes(vnet.VNet(filters=2, num_frames=24), (1, 24, 16, 16, 1))


@pytest.mark.parametrize("kwargs,match", [
    (dict(down_impl="pool"), "down_impl.*'pool'.*conv, space_to_depth"),
    (dict(up_impl="nearest"), "up_impl.*'nearest'.*conv_transpose, depth_to_space"),
    (dict(conv_impl="fft"), "conv_impl.*'fft'.*conv3d, conv2d_sum, conv2d_stacked"),
    (dict(filters=0), "filters"),
])
def test_bad_settings_are_clear_errors(kwargs, match):
  with pytest.raises(ValueError, match=match):
    models.get_model("vnet", **kwargs)


def test_registry():
  assert models.MODELS["vnet"] is vnet.VNet
  assert isinstance(models.get_model("vnet", filters=4), vnet.VNet)
  with pytest.raises(ValueError, match="unknown model 'unet'.*valid: unet_gan, unitobrain, vnet"):
    models.get_model("unet")


def test_auto_implementations_by_backend_fast_forms_on_cpu_gpu_mix_plain_elsewhere():
  auto = dict(down_impl="auto", up_impl="auto", conv_impl="auto")
  assert vnet.resolve_impls("cpu", **auto) == vnet.FAST_IMPLS
  assert vnet.resolve_impls("gpu", **auto) == vnet.GPU_IMPLS
  assert vnet.resolve_impls("tpu", **auto) == vnet.PLAIN_IMPLS
  assert vnet.resolve_impls("cpu", down_impl="conv", up_impl="auto", conv_impl="conv2d_sum") == dict(
      down_impl="conv", up_impl="depth_to_space", conv_impl="conv2d_sum")
