"""2D U-Net pieces (Ronneberger et al., MICCAI 2015) shared by the competitor networks: UniToBrain
(pkd_jax.models.unitobrain, one U-Net per map) and UNET-GAN-Assisted's generator
(pkd_jax.models.unet_gan, one encoder and a decoder per map).

* :class:`DoubleConv`: two [3x3 SAME convolution without bias -> BatchNorm -> ReLU].
* :func:`encode`: levels 1..4 of widths F, 2F, 4F, 8F, each a :class:`DoubleConv` followed by
  2x2 average pooling, then a bottleneck :class:`DoubleConv` at 16 F on (H/16, W/16).
* :func:`decode`: levels 4..1 of widths 8F, 4F, 2F, F: a 2x2 stride-2 transposed convolution (with
  bias) to the level's width, concatenated after the encoder's output at that level, and a
  :class:`DoubleConv`; then a 1x1 convolution (with bias) to one channel.

:func:`encode` and :func:`decode` are called inside a module's ``nn.compact`` method: their layers
belong to that module (named ``enc1``.., ``bottleneck``, ``up4``, ``dec4``.., ``out``, with an
optional prefix), so two decoders can share one encoder. Weights are initialised as PyTorch's
defaults (:func:`pkd_jax.models.vnet.torch_uniform_init`); parameters are float32 and ``dtype``
is the computation dtype.
"""

from __future__ import annotations

from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from pkd_jax.models.vnet import HEADS, check_series_shape, check_sizes, torch_uniform_init

# Encoder widths at levels 1..4 as multiples of F; the bottleneck is 16 F; the decoder mirrors.
ENCODER_WIDTHS = (1, 2, 4, 8)
BOTTLENECK_WIDTH = 16
# H and W are halved four times (2x2 average pooling after each encoder level).
DOWNSAMPLING = 2 ** len(ENCODER_WIDTHS)

Array = jax.Array
Dtype = Any


class DoubleConv(nn.Module):
  """Two [3x3 SAME convolution without bias -> BatchNorm -> ReLU] at ``features`` channels."""

  features: int
  dtype: Dtype = jnp.float32
  bn_momentum: float = 0.9

  @nn.compact
  def __call__(self, x: Array, train: bool) -> Array:
    for i in range(2):
      x = nn.Conv(self.features, (3, 3), padding="SAME", use_bias=False, dtype=self.dtype,
                  param_dtype=jnp.float32, kernel_init=torch_uniform_init(9 * x.shape[-1]),
                  name=f"conv{i}")(x)
      x = nn.BatchNorm(use_running_average=not train, momentum=self.bn_momentum, epsilon=1e-5,
                       dtype=self.dtype, param_dtype=jnp.float32, name=f"bn{i}")(x)
      x = nn.relu(x)
    return x


def encode(x: Array, train: bool, filters: int, dtype: Dtype = jnp.float32,
           bn_momentum: float = 0.9) -> tuple[Array, list[Array]]:
  """(B, H, W, C) -> (bottleneck (B, H/16, W/16, 16 F), the outputs of levels 1..4)."""
  skips = []
  for level, mult in enumerate(ENCODER_WIDTHS, start=1):
    x = DoubleConv(mult * filters, dtype, bn_momentum, name=f"enc{level}")(x, train)
    skips.append(x)
    x = nn.avg_pool(x, (2, 2), strides=(2, 2))
  bottleneck = DoubleConv(BOTTLENECK_WIDTH * filters, dtype, bn_momentum, name="bottleneck")
  return bottleneck(x, train), skips


def decode(x: Array, skips: Sequence[Array], train: bool, filters: int,
           dtype: Dtype = jnp.float32, bn_momentum: float = 0.9, prefix: str = "") -> Array:
  """The bottleneck and the encoder's level outputs -> one (B, H, W) float32 map."""
  for level, mult, skip in zip(range(len(ENCODER_WIDTHS), 0, -1), reversed(ENCODER_WIDTHS),
                               reversed(skips)):
    w = mult * filters
    # PyTorch's ConvTranspose2d weight is (Cin, Cout, 2, 2): its init takes fan_in from Cout.
    init = torch_uniform_init(4 * w)
    x = nn.ConvTranspose(w, (2, 2), strides=(2, 2), padding="VALID", dtype=dtype,
                         param_dtype=jnp.float32, kernel_init=init, bias_init=init,
                         name=f"{prefix}up{level}")(x)
    x = DoubleConv(w, dtype, bn_momentum, name=f"{prefix}dec{level}")(
        jnp.concatenate([skip, x], axis=-1), train)
  init = torch_uniform_init(x.shape[-1])
  x = nn.Conv(1, (1, 1), dtype=dtype, param_dtype=jnp.float32, kernel_init=init, bias_init=init,
              name=f"{prefix}out")(x)
  return x[..., 0].astype(jnp.float32)


class UNet2D(nn.Module):
  """One map's U-Net: ``(B, H, W, C)`` -> ``((B, H, W) float32 map, bottleneck)``."""

  filters: int
  dtype: Dtype = jnp.float32
  bn_momentum: float = 0.9

  @nn.compact
  def __call__(self, x: Array, train: bool) -> tuple[Array, Array]:
    bottleneck, skips = encode(x, train, self.filters, self.dtype, self.bn_momentum)
    return decode(bottleneck, skips, train, self.filters, self.dtype, self.bn_momentum), bottleneck


class SliceNet(nn.Module):
  """Base of the 2D competitors: a slice's T frames as the channels of one image, one map per
  head; the interface of :class:`pkd_jax.models.vnet.VNet` (input ``(B, T, H, W, 1)``, output
  ``({head: (B, H, W) float32}, {"bottleneck": ...})``) so training, evaluation and prediction
  use them unchanged.

  Attributes:
    filters: F, the width of the first level; the bottleneck is 16 F.
    num_frames: T of the input, the first convolution's input channels.
    dtype: computation dtype (parameters are always float32; outputs are float32).
    bn_momentum: BatchNorm running-average momentum (Flax convention: new = m * old + (1 - m) * x).
    output_scales: each head's output is multiplied by its scale (in heads order), as the
      V-Net's ``output_scales`` (config.model.scale_outputs); None or 1s for the plain networks.
      A reparametrisation: the parameter count is unchanged.
    heads: the names of the maps, one output each.
  """

  filters: int = 64
  num_frames: int = 32
  dtype: Dtype = jnp.float32
  bn_momentum: float = 0.9
  output_scales: tuple[float, ...] | None = None
  heads: tuple[str, ...] = HEADS

  def __post_init__(self):
    check_sizes(self.filters, self.num_frames)
    super().__post_init__()

  def check_input(self, shape: Sequence[int]) -> None:
    """Raises ValueError unless ``shape`` is (B, T, H, W, 1) with T == num_frames and 16 | H, W."""
    check_series_shape(type(self).__name__, shape, self.num_frames, "HW", DOWNSAMPLING,
                       "four 2x2 poolings")

  def frames(self, x: Array) -> Array:
    """The checked input (B, T, H, W, 1) as (B, H, W, T) images in the computation dtype."""
    self.check_input(x.shape)
    return jnp.moveaxis(x[..., 0], 1, -1).astype(self.dtype)

  def scales(self) -> tuple[float, ...]:
    return tuple(self.output_scales or (1.0,) * len(self.heads))
