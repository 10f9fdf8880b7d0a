"""UniToBrain's competitor network: one 2D U-Net per perfusion map, the frames as channels.

Gava et al. 2023, "UniToBrain dataset: a brain perfusion dataset of CT scans" (Frontiers in
Neuroinformatics; preprint arXiv:2208.00650) predict each perfusion map of a slice from that slice's
CTP frames with its own 2D U-Net (Ronneberger et al., MICCAI 2015) trained with the mean squared
error. Written here from that description, not from the authors' code:

* The input ``(B, T, H, W, 1)`` becomes ``(B, H, W, T)``: the T frames of one slice are the
  channels of a 2D image, so the first convolution's kernel depends on T (``num_frames``).
* Encoder levels 1..4 of widths F, 2F, 4F, 8F (the paper: F = 64, i.e. 64, 128, 256, 512), each a
  block of two [3x3 SAME convolution without bias -> BatchNorm -> ReLU] followed by 2x2 average
  pooling; a bottleneck block of the same kind at 16F (1024) on (H/16, W/16).
* Decoder levels 4..1 of widths 8F, 4F, 2F, F: a 2x2 stride-2 transposed convolution (with bias)
  to the level's width, concatenated with the encoder's output at that level (skip first), and
  the same two-convolution block; then a 1x1 convolution (with bias) to one channel.
* Three such networks, independent (no shared weights), one per map (``heads``, by default
  :data:`HEADS`, the data's TARGET_MAPS order): ``unet_tmax``, ``unet_cbv``, ``unet_cbf``.

The interface is the V-Net's (:class:`pkd_jax.models.vnet.VNet`), so the trainer, the window rule,
evaluation and prediction use it unchanged: ``__call__(x, train)`` returns the three ``(B, H, W)``
float32 maps and ``{"bottleneck": ...}`` (the Tmax network's bottleneck, ``(B, H/16, W/16, 16F)``).

Departures, so that it runs through this pipeline as the V-Net does: the input is a window of T
frames (config.data.patch.num_frames; whole series are predicted by the window rule of
pkd_jax.inference), not necessarily a slice's whole series; the weights are initialised as
PyTorch's defaults (:func:`vnet.torch_uniform_init`, as the V-Net here; the authors used the EDDL
library); ``output_scales`` (configs/unitobrain.py sets it) lets the networks predict maps divided
by their ranges. BatchNorm has momentum 0.9 in Flax's convention and epsilon 1e-5. Parameters are
float32; ``dtype`` is the computation dtype (BatchNorm statistics are reduced in float32).
"""

from __future__ import annotations

import flax.linen as nn

from pkd_jax.models.unet import Array, SliceNet, UNet2D


class UniToBrain(SliceNet):
  """Three independent 2D U-Nets (Tmax, CBV, CBF) on a slice's frames; see the module docstring.

  Attributes are :class:`pkd_jax.models.unet.SliceNet`'s (the paper's F is 64); the bottleneck
  returned is the first head's (Tmax's) network's.
  """

  @nn.compact
  def __call__(self, x: Array, train: bool) -> tuple[dict[str, Array], dict[str, Array]]:
    """Returns ``({'tmax', 'cbv', 'cbf'}: (B, H, W) float32, {'bottleneck': ...})``.

    The bottleneck is the first head's (Tmax's) network's deepest block, (B, H/16, W/16, 16 F)
    in ``dtype``.
    """
    frames = self.frames(x)
    maps, bottlenecks = {}, {}
    for name, scale in zip(self.heads, self.scales()):
      out, bottlenecks[name] = UNet2D(self.filters, self.dtype, self.bn_momentum,
                                      name=f"unet_{name}")(frames, train)
      maps[name] = scale * out
    return maps, {"bottleneck": bottlenecks[self.heads[0]]}
