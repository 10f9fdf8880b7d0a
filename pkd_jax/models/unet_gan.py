"""UNET-GAN-Assisted's networks: a U-Net generator with one shared encoder and a decoder per map,
and a PatchGAN discriminator on (input, maps) pairs.

Asaduddin et al. 2023 (Journal of Magnetic Resonance Imaging) generate perfusion maps with a U-Net
trained by an L1 loss plus the adversarial loss of a discriminator; they published no code. Rebuilt
here from that description; what is theirs and what is ours:

* Theirs: a U-Net generator, an encoder shared by the maps with one decoder per map; an L1 loss
  plus an adversarial loss; a patch discriminator judging (input, map) pairs (conditional GAN).
* Ours (not in their description, or not recoverable from it): the U-Net's blocks are the 2D U-Net
  of pkd_jax.models.unet (as UniToBrain's: the T frames as channels, widths F .. 8F, a 16 F
  bottleneck, average pooling, PyTorch's default initialisation); the discriminator is
  pix2pix's 70 x 70 PatchGAN (Isola et al., CVPR 2017: 4 x 4 convolutions of widths F, 2F, 4F
  with stride 2 and 8F with stride 1, LeakyReLU 0.2, then a 4 x 4 convolution to one logit per
  patch) with instance normalisation in place of BatchNorm (so it keeps no batch statistics);
  it sees the T input frames and the three maps, each divided by its range, as one image; the
  adversarial weight 0.01 against the L1 of maps scaled to [0, 1] (pix2pix's L1 weight of 100,
  inverted); both networks use the pipeline's Adam and schedule. The training step is
  pkd_jax.gan.
"""

from __future__ import annotations

import flax.linen as nn
import jax.numpy as jnp

from pkd_jax.models.unet import Array, Dtype, SliceNet, decode, encode

# PatchGAN widths as multiples of its F, and strides (pix2pix's 70 x 70 receptive field).
CRITIC_WIDTHS = (1, 2, 4, 8)
CRITIC_STRIDES = (2, 2, 2, 1)


class UNetGAN(SliceNet):
  """The generator: one 2D U-Net encoder shared by the maps, a decoder per map (layers
  ``<map>_up4`` .. ``<map>_out``). Attributes are :class:`pkd_jax.models.unet.SliceNet`'s;
  the bottleneck returned is the shared encoder's."""

  @nn.compact
  def __call__(self, x: Array, train: bool) -> tuple[dict[str, Array], dict[str, Array]]:
    bottleneck, skips = encode(self.frames(x), train, self.filters, self.dtype, self.bn_momentum)
    maps = {name: scale * decode(bottleneck, skips, train, self.filters, self.dtype,
                                 self.bn_momentum, prefix=f"{name}_")
            for name, scale in zip(self.heads, self.scales())}
    return maps, {"bottleneck": bottleneck}


class PatchDiscriminator(nn.Module):
  """PatchGAN: an image (B, H, W, C) -> one real/fake logit per patch, (B, H/8 - 2, W/8 - 2)."""

  filters: int = 64
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: Array) -> Array:
    x = x.astype(self.dtype)
    for i, (mult, stride) in enumerate(zip(CRITIC_WIDTHS, CRITIC_STRIDES)):
      x = nn.Conv(mult * self.filters, (4, 4), strides=(stride, stride), padding=((1, 1), (1, 1)),
                  dtype=self.dtype, param_dtype=jnp.float32, name=f"conv{i}")(x)
      if i:  # pix2pix: no normalisation after the first layer
        x = nn.GroupNorm(num_groups=None, group_size=1, epsilon=1e-5, dtype=self.dtype,
                         param_dtype=jnp.float32, name=f"norm{i}")(x)
      x = nn.leaky_relu(x, 0.2)
    x = nn.Conv(1, (4, 4), padding=((1, 1), (1, 1)), dtype=self.dtype, param_dtype=jnp.float32,
                name="logits")(x)
    return x[..., 0].astype(jnp.float32)
