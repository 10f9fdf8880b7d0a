"""The V-Net of DESIGN.md section 4: one shared 3D encoder, three decoder heads (Tmax, CBV, CBF).

Input ``(B, T, H, W, 1)``, the normalised CTP series of a patch; output three ``(B, H, W)`` maps.

* Encoder levels 1..5 have widths F, 2F, 4F, 8F, 16F and residual stacks of depth 1, 2, 3, 3, 3 of
  conv3x3x3 -> BatchNorm -> PReLU. Level 1's residual adds the 1-channel input (broadcast to F
  channels); between levels a 2x2x2 stride-2 convolution halves T, H and W, and the level's stack
  adds that convolution's output as its residual.
* Each head goes up from the bottleneck (level 5) through levels 4..1 with widths 16F, 8F, 4F, 2F
  and stack depths 3, 3, 2, 1: ``u = up(x)``, ``x = stack(u + conv3x3x3(skip)) + u``, where ``up``
  is a 2x2x2 stride-2 transposed convolution and ``skip`` the encoder's output at that level. The
  levels chain (the authors' release fed each decoder level from the encoder: a bug we fix). Then a
  1x1x1 convolution to one channel gives ``(B, T, H, W)`` and a learned 1x1 mixing over T (a dense
  layer over the T axis, with bias) the 2D map.

The parameter shapes, BatchNorm (momentum 0.1 in PyTorch's convention, i.e. 0.9 here; eps 1e-5),
PReLU (one slope, init 0.25) and the initialisation (PyTorch's defaults) follow
``shared/bench/torch_vnet.py``, so both have the same parameter count at the same F.

Exact re-formulations of the three convolution kinds (XLA on CPU is slow for 3D strided and
transposed convolutions) are chosen by attributes; both forms of a layer declare the same
parameters, so a checkpoint works with either:

* ``down_impl="space_to_depth"``: a 2x2x2 stride-2 convolution is a space-to-depth rearrangement
  followed by a matmul with the kernel reshaped to ``(8 Cin, Cout)``;
* ``up_impl="depth_to_space"``: its transpose is a matmul to ``8 Cout`` channels followed by
  depth-to-space;
* ``conv_impl="conv2d_sum"``: a 3x3x3 SAME convolution is three 2D 3x3 convolutions over (H, W),
  T folded into the batch, applied to the input shifted by -1, 0, +1 frames and summed;
* ``conv_impl="conv2d_stacked"``: the same three shifted inputs stacked on the channel axis and
  convolved once by a 2D 3x3 convolution with 3 Cin input channels.

:func:`resolve_impls` turns "auto" into the forms fastest on a JAX backend (:data:`AUTO_IMPLS`).

Kernels are stored as ``(kT, kH, kW, Cin, Cout)`` (``DHWIO``) float32; ``dtype`` is the computation
dtype (inputs and kernels are cast to it; BatchNorm statistics are reduced in float32).
"""

from __future__ import annotations

import importlib.metadata
import math
import numbers
import os
from typing import Any, Callable, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax import lax

from pkd_jax.errors import InputError

DOWN_IMPLS = ("conv", "space_to_depth")
UP_IMPLS = ("conv_transpose", "depth_to_space")
CONV_IMPLS = ("conv3d", "conv2d_sum", "conv2d_stacked")

# The exact forms that are fastest per JAX backend (measured with benchmarks/train_step.py
# --peer-comparable at (2, 32, 64, 8) on a 2-core CPU: conv2d_stacked 1.09 s a step, conv2d_sum
# 1.36 s; one 3x3x3 layer's forward and gradients take the plain 3D convolution ~4x conv2d_sum's);
# "auto" in a config picks these, backends not listed get the plain lax convolutions.
# On a GPU, cuDNN's convolutions except the transposed one: XLA lowers conv_transpose to a
# zero-stuffed (interior-padded) input convolved by a 2x2x2 window, 8x the work, which cuDNN ran
# with its slow "indexed" kernels: in a jax.profiler trace of the paper-size peer-comparable step
# on an H200 (0.215 s; benchmarks/gpu_profile.sh, 2026-12-04) those kernels took 67% of the GPU
# time, their weight gradients 5% more. depth_to_space does the transposed convolution's real
# work as one matmul. Chosen from that profile; with it the same step took 0.046 s on the H200,
# 0.80x PyTorch's 0.058 s (benchmarks/compare_torch.py --device=cuda, 2026-12-04, third sitting).
FAST_IMPLS = {"down_impl": "space_to_depth", "up_impl": "depth_to_space",
              "conv_impl": "conv2d_stacked"}
PLAIN_IMPLS = {"down_impl": "conv", "up_impl": "conv_transpose", "conv_impl": "conv3d"}
GPU_IMPLS = {"down_impl": "conv", "up_impl": "depth_to_space", "conv_impl": "conv3d"}
AUTO_IMPLS = {"cpu": FAST_IMPLS, "gpu": GPU_IMPLS}


def resolve_impls(backend: str, **impls: str) -> dict[str, str]:
  """The implementation names with each "auto" replaced by the backend's fastest form."""
  chosen = AUTO_IMPLS.get(backend, PLAIN_IMPLS)
  return {k: chosen[k] if v == "auto" else v for k, v in impls.items()}


# XLA compiler options for a V-Net's programs on a CPU. jaxlib 0.10's CPU backend hands large
# convolutions to YNNPACK; XLA's own convolutions, with YNNPACK for the matmul and reduction
# fusions only, ran the train step faster at F = 16 (batch 1, T 32, 128 x 128) and at F = 8 (2,
# 32, 64 x 64), and slower (0.89-0.90x) at F = 4 (the demo's 2 x 32 x 32 x 32): the variants
# alternating in one process (benchmarks/compiler_options.py), 2 cores, 2026-12-03 (README,
# Benchmarks; the reductions, BatchNorm's statistics and gradients mostly, left to XLA cost the
# F = 8 step 15%). The option is experimental in XLA: set only for the jaxlib versions measured
# ([first, last) (major, minor)), and not at all when $PKD_JAX_XLA_DEFAULTS is "0".
XLA_CONVOLUTIONS = {"xla_cpu_experimental_ynn_fusion_type":
                    "LIBRARY_FUSION_TYPE_DOT,LIBRARY_FUSION_TYPE_REDUCE"}
XLA_CONVOLUTIONS_MIN_FILTERS = 8
XLA_CONVOLUTIONS_JAXLIB = ((0, 10), (0, 11))
OPT_OUT = "PKD_JAX_XLA_DEFAULTS"


def compiler_options(backend: str, filters: int, jaxlib_version: str | None = None,
                     environ=None) -> dict[str, str]:
  """XLA compiler options for the programs of a V-Net of width ``filters`` ({}: XLA's own)."""
  environ = os.environ if environ is None else environ
  if backend != "cpu" or filters < XLA_CONVOLUTIONS_MIN_FILTERS or environ.get(OPT_OUT) == "0":
    return {}
  if jaxlib_version is None:
    jaxlib_version = importlib.metadata.version("jaxlib")
  try:
    major_minor = tuple(int(p) for p in jaxlib_version.split(".")[:2])
  except ValueError:
    return {}
  first, last = XLA_CONVOLUTIONS_JAXLIB
  return dict(XLA_CONVOLUTIONS) if first <= major_minor < last else {}


# Encoder: width multiples of F and residual stack depths at levels 1..5.
ENCODER_WIDTHS = (1, 2, 4, 8, 16)
ENCODER_DEPTHS = (1, 2, 3, 3, 3)
# Decoder: width multiples of F and stack depths at levels 4, 3, 2, 1.
DECODER_WIDTHS = (16, 8, 4, 2)
DECODER_DEPTHS = (3, 3, 2, 1)
# T, H and W are halved four times.
DOWNSAMPLING = 2 ** (len(ENCODER_WIDTHS) - 1)

HEADS = ("tmax", "cbv", "cbf")  # the decoder heads, one per map (the data's TARGET_MAPS order)

_DN_3D = ("NDHWC", "DHWIO", "NDHWC")
_DN_2D = ("NHWC", "HWIO", "NHWC")

Array = jax.Array
Dtype = Any


# --------------------------------------------------------------------------------------------
# The convolutions as pure functions: x (B, T, H, W, Cin), kernel (kT, kH, kW, Cin, Cout).


def conv3d_same(x: Array, kernel: Array) -> Array:
  """A stride-1 SAME 3D convolution (cross-correlation, as lax and PyTorch compute it)."""
  return lax.conv_general_dilated(x, kernel, (1, 1, 1), "SAME", dimension_numbers=_DN_3D)


def conv3d_same_as_conv2d_sum(x: Array, kernel: Array) -> Array:
  """:func:`conv3d_same` as a sum over kT temporal shifts of 2D SAME convolutions over (H, W).

  ``y[t] = sum_d conv2d(x[t + d - kT // 2], kernel[d])``, with zero frames outside [0, T).
  """
  kt = kernel.shape[0]
  if kt % 2 != 1:
    raise ValueError(f"conv2d_sum needs an odd temporal kernel size, got {kt}")
  b, t, h, w, c = x.shape
  p = kt // 2
  xp = jnp.pad(x, ((0, 0), (p, p), (0, 0), (0, 0), (0, 0)))
  out = None
  for d in range(kt):
    xs = lax.slice_in_dim(xp, d, d + t, axis=1).reshape(b * t, h, w, c)
    y = lax.conv_general_dilated(xs, kernel[d], (1, 1), "SAME", dimension_numbers=_DN_2D)
    out = y if out is None else out + y
  return out.reshape(b, t, h, w, kernel.shape[-1])


def conv3d_same_as_conv2d_stacked(x: Array, kernel: Array) -> Array:
  """:func:`conv3d_same` as one 2D SAME convolution over (H, W) of the kT temporally shifted
  inputs stacked on the channel axis (kT Cin channels), with the kernel's T axis moved next to
  its input channels: the same sum as :func:`conv3d_same_as_conv2d_sum` in one convolution."""
  kt, kh, kw, cin, cout = kernel.shape
  if kt % 2 != 1:
    raise ValueError(f"conv2d_stacked needs an odd temporal kernel size, got {kt}")
  b, t, h, w, c = x.shape
  p = kt // 2
  xp = jnp.pad(x, ((0, 0), (p, p), (0, 0), (0, 0), (0, 0)))
  xs = jnp.concatenate([lax.slice_in_dim(xp, d, d + t, axis=1) for d in range(kt)], axis=-1)
  k2 = kernel.transpose(1, 2, 0, 3, 4).reshape(kh, kw, kt * cin, cout)
  y = lax.conv_general_dilated(xs.reshape(b * t, h, w, kt * c), k2, (1, 1), "SAME",
                               dimension_numbers=_DN_2D)
  return y.reshape(b, t, h, w, cout)


def down_conv(x: Array, kernel: Array) -> Array:
  """A 2x2x2 stride-2 VALID convolution: ``y[i] = sum_k x[2 i + k] kernel[k]``."""
  return lax.conv_general_dilated(x, kernel, (2, 2, 2), "VALID", dimension_numbers=_DN_3D)


def space_to_depth(x: Array) -> Array:
  """(B, T, H, W, C) -> (B, T/2, H/2, W/2, 8 C), the 2x2x2 blocks' (dt, dh, dw, c) flattened."""
  b, t, h, w, c = x.shape
  x = x.reshape(b, t // 2, 2, h // 2, 2, w // 2, 2, c)
  x = x.transpose(0, 1, 3, 5, 2, 4, 6, 7)
  return x.reshape(b, t // 2, h // 2, w // 2, 8 * c)


def depth_to_space(x: Array) -> Array:
  """The inverse of :func:`space_to_depth`: (B, T, H, W, 8 C) -> (B, 2 T, 2 H, 2 W, C)."""
  b, t, h, w, c8 = x.shape
  c = c8 // 8
  x = x.reshape(b, t, h, w, 2, 2, 2, c)
  x = x.transpose(0, 1, 4, 2, 5, 3, 6, 7)
  return x.reshape(b, 2 * t, 2 * h, 2 * w, c)


def down_conv_as_space_to_depth(x: Array, kernel: Array) -> Array:
  """:func:`down_conv` as space-to-depth followed by a matmul with a (8 Cin, Cout) kernel."""
  cin, cout = kernel.shape[-2:]
  return space_to_depth(x) @ kernel.reshape(8 * cin, cout)


def up_conv(x: Array, kernel: Array) -> Array:
  """A 2x2x2 stride-2 VALID transposed convolution, as ``flax.linen.ConvTranspose`` computes it.

  With ``transpose_kernel=False`` lax flips the kernel relative to PyTorch's ConvTranspose3d:
  ``y[2 i + a] = sum_c x[i, c] kernel[1 - a, c]`` per axis (a torch weight ``(Cin, Cout, 2, 2, 2)``
  converts to ours by ``transpose(2, 3, 4, 0, 1)[::-1, ::-1, ::-1]``).
  """
  return lax.conv_transpose(x, kernel, (2, 2, 2), "VALID", dimension_numbers=_DN_3D)


def up_conv_as_depth_to_space(x: Array, kernel: Array) -> Array:
  """:func:`up_conv` as a matmul to 8 Cout channels followed by depth-to-space."""
  cin, cout = kernel.shape[-2:]
  k = kernel[::-1, ::-1, ::-1].transpose(3, 0, 1, 2, 4).reshape(cin, 8 * cout)
  return depth_to_space(x @ k)


_CONV_FNS = {"conv3d": conv3d_same, "conv2d_sum": conv3d_same_as_conv2d_sum,
             "conv2d_stacked": conv3d_same_as_conv2d_stacked}
_DOWN_FNS = {"conv": down_conv, "space_to_depth": down_conv_as_space_to_depth}
_UP_FNS = {"conv_transpose": up_conv, "depth_to_space": up_conv_as_depth_to_space}


def _check_choice(setting: str, value: str, valid: Sequence[str]) -> None:
  if value not in valid:
    raise InputError(setting, f"unknown implementation {value!r}; valid: {', '.join(valid)}")


def check_sizes(filters: Any, num_frames: Any) -> None:
  """InputError unless the width F and the frame count T are positive integers."""
  for name, value in (("filters", filters), ("num_frames", num_frames)):
    if not isinstance(value, numbers.Integral) or value < 1:
      raise InputError(name, f"must be a positive integer, got {value!r}")


def check_series_shape(network: str, shape: Sequence[int], num_frames: int, axes: str,
                       multiple: int, why: str) -> None:
  """ValueError unless shape is (B, T, H, W, 1) with T == num_frames and the axes named in
  ``axes`` (of "THW") multiples of ``multiple`` (``why``: the network's reason)."""
  if len(shape) != 5 or shape[-1] != 1:
    raise ValueError(f"{network} input must have shape (B, T, H, W, 1), got {tuple(shape)}")
  _, t, h, w, _ = shape
  if t != num_frames:
    raise ValueError(f"{network} input has T={t} frames but the model was built for "
                     f"num_frames={num_frames} (input shape {tuple(shape)})")
  sizes = dict(T=t, H=h, W=w)
  bad = {k: sizes[k] for k in axes if sizes[k] % multiple}
  if bad:
    names = ", ".join(axes[:-1]) + " and " + axes[-1]
    raise ValueError(f"{network} input {names} must be multiples of {multiple} ({why}); "
                     f"got {bad} in input shape {tuple(shape)}")


# --------------------------------------------------------------------------------------------
# Layers.


def torch_uniform_init(fan_in: int) -> Callable[..., Array]:
  """PyTorch's default init of conv/linear weights and biases: U(-b, b), b = 1 / sqrt(fan_in)."""
  bound = 1.0 / math.sqrt(fan_in)

  def init(key, shape, dtype=jnp.float32):
    return jax.random.uniform(key, shape, dtype, -bound, bound)

  return init


class _Conv(nn.Module):
  """A convolution with a ``kernel`` (k, k, k, Cin, Cout) and a ``bias`` (Cout,), both float32."""

  features: int
  impl: str
  dtype: Dtype = jnp.float32

  kernel_size = 3  # class constants, not dataclass fields
  fns = {}

  def fan_in(self, cin: int) -> int:
    return self.kernel_size ** 3 * cin

  @nn.compact
  def __call__(self, x: Array) -> Array:
    _check_choice(f"{type(self).__name__}.impl", self.impl, tuple(self.fns))
    k, cin = self.kernel_size, x.shape[-1]
    init = torch_uniform_init(self.fan_in(cin))
    kernel = self.param("kernel", init, (k, k, k, cin, self.features), jnp.float32)
    bias = self.param("bias", init, (self.features,), jnp.float32)
    y = self.fns[self.impl](x.astype(self.dtype), kernel.astype(self.dtype))
    return y + bias.astype(self.dtype)


class Conv3x3x3(_Conv):
  """3x3x3 stride-1 SAME convolution; ``impl`` in :data:`CONV_IMPLS`."""

  impl: str = "conv3d"
  kernel_size = 3
  fns = _CONV_FNS


class DownConv(_Conv):
  """2x2x2 stride-2 convolution, halving T, H and W; ``impl`` in :data:`DOWN_IMPLS`."""

  impl: str = "conv"
  kernel_size = 2
  fns = _DOWN_FNS


class UpConv(_Conv):
  """2x2x2 stride-2 transposed convolution, doubling T, H and W; ``impl`` in :data:`UP_IMPLS`."""

  impl: str = "conv_transpose"
  kernel_size = 2
  fns = _UP_FNS

  def fan_in(self, cin: int) -> int:
    # PyTorch's ConvTranspose3d weight is (Cin, Cout, k, k, k); its init takes fan_in from dim 1.
    return self.kernel_size ** 3 * self.features


class ResidualStack(nn.Module):
  """``depth`` blocks of conv3x3x3 -> BatchNorm -> PReLU (without the residual itself)."""

  features: int
  depth: int
  conv_impl: str = "conv3d"
  dtype: Dtype = jnp.float32
  bn_momentum: float = 0.9

  @nn.compact
  def __call__(self, x: Array, train: bool) -> Array:
    for i in range(self.depth):
      x = Conv3x3x3(self.features, self.conv_impl, self.dtype, name=f"conv{i}")(x)
      x = nn.BatchNorm(use_running_average=not train, momentum=self.bn_momentum, epsilon=1e-5,
                       dtype=self.dtype, param_dtype=jnp.float32, name=f"bn{i}")(x)
      x = nn.PReLU(negative_slope_init=0.25, param_dtype=jnp.float32, name=f"prelu{i}")(x)
    return x


class Encoder(nn.Module):
  """The shared encoder; returns the outputs of levels 1..5 (the last is the bottleneck)."""

  filters: int
  conv_impl: str = "conv3d"
  down_impl: str = "conv"
  dtype: Dtype = jnp.float32
  bn_momentum: float = 0.9

  @nn.compact
  def __call__(self, x: Array, train: bool) -> list[Array]:
    common = dict(conv_impl=self.conv_impl, dtype=self.dtype, bn_momentum=self.bn_momentum)
    f = self.filters
    x = x.astype(self.dtype)
    # Level 1: the 1-channel input broadcasts over the F channels of the residual sum.
    feats = [ResidualStack(f, ENCODER_DEPTHS[0], name="level1", **common)(x, train) + x]
    for level, (mult, depth) in enumerate(zip(ENCODER_WIDTHS[1:], ENCODER_DEPTHS[1:]), start=2):
      r = DownConv(mult * f, self.down_impl, self.dtype, name=f"down{level}")(feats[-1])
      feats.append(ResidualStack(mult * f, depth, name=f"level{level}", **common)(r, train) + r)
    return feats


class DecoderHead(nn.Module):
  """One decoder: levels 4..1 up from the bottleneck, each fed by the previous decoder level."""

  filters: int
  conv_impl: str = "conv3d"
  up_impl: str = "conv_transpose"
  dtype: Dtype = jnp.float32
  bn_momentum: float = 0.9

  @nn.compact
  def __call__(self, feats: Sequence[Array], train: bool) -> Array:
    f = self.filters
    x = feats[-1]
    skips = list(reversed(feats[:-1]))  # encoder levels 4, 3, 2, 1
    levels = range(len(DECODER_WIDTHS), 0, -1)
    for level, mult, depth, skip in zip(levels, DECODER_WIDTHS, DECODER_DEPTHS, skips):
      w = mult * f
      u = UpConv(w, self.up_impl, self.dtype, name=f"up{level}")(x)
      s = Conv3x3x3(w, self.conv_impl, self.dtype, name=f"skip{level}")(skip)
      x = ResidualStack(w, depth, self.conv_impl, self.dtype, self.bn_momentum,
                        name=f"level{level}")(u + s, train) + u
    # 1x1x1 convolution to one channel, then a dense layer over T: (B, T, H, W) -> (B, H, W).
    x = nn.Dense(1, dtype=self.dtype, param_dtype=jnp.float32, name="out",
                 kernel_init=torch_uniform_init(x.shape[-1]),
                 bias_init=torch_uniform_init(x.shape[-1]))(x)[..., 0]
    x = jnp.moveaxis(x, 1, -1)
    x = nn.Dense(1, dtype=self.dtype, param_dtype=jnp.float32, name="mix_time",
                 kernel_init=torch_uniform_init(x.shape[-1]),
                 bias_init=torch_uniform_init(x.shape[-1]))(x)[..., 0]
    return x.astype(jnp.float32)


class VNet(nn.Module):
  """Shared encoder and three decoder heads; see the module docstring.

  Attributes:
    filters: F, the width of the first level.
    num_frames: T of the input; the last layer of each head mixes over T.
    down_impl: one of :data:`DOWN_IMPLS`.
    up_impl: one of :data:`UP_IMPLS`.
    conv_impl: one of :data:`CONV_IMPLS`.
    dtype: computation dtype (parameters are always float32; outputs are float32).
    bn_momentum: BatchNorm running-average momentum (Flax convention: new = m * old + (1 - m) * x).
    output_scales: each head's output is multiplied by its scale (in heads order), so the
      layers work at unit scale while the maps come out in physical units (e.g. the data's map
      ranges 20 s, 8, 100); None or 1s for the plain network. A reparametrisation: the parameter
      count is unchanged.
    heads: the names of the decoder heads (the maps), one decoder each.
  """

  filters: int = 16
  num_frames: int = 32
  down_impl: str = "conv"
  up_impl: str = "conv_transpose"
  conv_impl: str = "conv3d"
  dtype: Dtype = jnp.float32
  bn_momentum: float = 0.9
  output_scales: tuple[float, ...] | None = None
  heads: tuple[str, ...] = HEADS

  def __post_init__(self):
    _check_choice("down_impl", self.down_impl, DOWN_IMPLS)
    _check_choice("up_impl", self.up_impl, UP_IMPLS)
    _check_choice("conv_impl", self.conv_impl, CONV_IMPLS)
    check_sizes(self.filters, self.num_frames)
    super().__post_init__()

  def check_input(self, shape: Sequence[int]) -> None:
    """Raises ValueError unless ``shape`` is (B, T, H, W, 1) with T == num_frames, 16 | T, H, W."""
    check_series_shape("VNet", shape, self.num_frames, "THW", DOWNSAMPLING, "four halvings")

  @nn.compact
  def __call__(self, x: Array, train: bool) -> tuple[dict[str, Array], dict[str, Array]]:
    """Returns ``({'tmax', 'cbv', 'cbf'}: (B, H, W) float32, {'bottleneck': ...})``.

    The bottleneck is the encoder's deepest output, (B, T/16, H/16, W/16, 16 F) in ``dtype``.
    """
    self.check_input(x.shape)
    common = dict(conv_impl=self.conv_impl, dtype=self.dtype, bn_momentum=self.bn_momentum)
    feats = Encoder(self.filters, down_impl=self.down_impl, name="encoder", **common)(x, train)
    scales = self.output_scales or (1.0,) * len(self.heads)
    maps = {
        name: scale * DecoderHead(self.filters, up_impl=self.up_impl, name=f"head_{name}",
                                  **common)(feats, train)
        for name, scale in zip(self.heads, scales)
    }
    return maps, {"bottleneck": feats[-1]}
