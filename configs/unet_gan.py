"""The UNET-GAN-Assisted competitor (pkd_jax.models.unet_gan, pkd_jax.gan): a U-Net generator with
a decoder per map, trained with L1 plus the adversarial loss of a PatchGAN discriminator, on the
ground truth at one temporal factor (no distillation).

Config string: ``configs/unet_gan.py:FACTOR[,SCALE]`` with FACTOR in 1, 2, 4, 8, 16 and SCALE in
test, demo, mini, paper (default paper), e.g.

    python -m pkd_jax.main --config=configs/unet_gan.py:16,demo --workdir=runs/unet_gan_x16

It trains and evaluates as a teacher does (configs/base.competitor_config); the ``gan`` section
makes the loop run pkd_jax.gan's alternating step.
"""

import ml_collections

from configs import base

# F of the generator (its bottleneck is 16 F) and of the discriminator (widths F .. 8 F): pix2pix's
# 64 at "paper" scale, small at the CPU scales (as configs/unitobrain.py).
FILTERS = {"test": 4, "demo": 8, "mini": 8, "paper": 64}


def get_config(arg: str | None = None):
  config = base.competitor_config(arg, "unet_gan", FILTERS)
  # The generator's supervised term: L1 of each map divided by its data.map_ranges value.
  config.loss.mae = 1.0
  config.loss.ssim = 0.0
  config.loss.perceptual = 0.0
  config.loss.mse = 0.0
  config.gan = ml_collections.ConfigDict()
  # Weight of the adversarial loss against that L1 (pix2pix weighs L1 100 x the adversarial
  # loss: 1 / 100 here, where the L1 is of maps scaled to [0, 1]).
  config.gan.adversarial = 0.01
  config.gan.critic_filters = config.model.get_ref("filters")  # the discriminator's F
  config.lock()
  return config
