"""The UniToBrain competitor: one 2D U-Net per map (pkd_jax.models.unitobrain), trained with its
own MSE loss on the ground truth at one temporal factor (no distillation).

Config string: ``configs/unitobrain.py:FACTOR[,SCALE]`` with FACTOR in 1, 2, 4, 8, 16 (1 = full
temporal resolution; at FACTOR > 1 the network is trained directly on the degraded input) and
SCALE in test, demo, mini, paper (default paper), e.g.

    python -m pkd_jax.main --config=configs/unitobrain.py:8,demo --workdir=runs/unitobrain_x8

It trains and evaluates as a teacher does (role "teacher"): same data, patches, window rule,
optimiser and schedule (configs/base.py: Adam 1e-3, betas 0.5 and 0.99, the distillation paper's
settings, not UniToBrain's); only the network, its width, its output scaling and the loss differ.
"""

from configs import base

# F, the first level's width (the bottleneck is 16 F): the paper's 64 (widths 64 ... 1024, 93.2 M
# parameters for the three networks at 32 frames) at "paper" scale; small widths at the CPU
# scales: 4 at "test" (seconds for the test suite), 8 at "demo" and "mini" (1.47 M parameters).
# Measured on a shared 2-core CPU at demo scale (batch 2 of 32 x 32 x 32): a train step takes
# 0.026 s at F = 8 (0.15 s at F = 16, 0.59 s at F = 32) against the V-Net teacher's 0.31 s at F = 4.
FILTERS = {"test": 4, "demo": 8, "mini": 8, "paper": 64}


def get_config(arg: str | None = None):
  config = base.competitor_config(arg, "unitobrain", FILTERS)
  # The competitor's own loss: the mean squared error of each map (divided by its data.map_ranges
  # value, as every loss term here), summed over the three maps; no MAE, SSIM or perceptual term.
  config.loss.mse = 1.0
  config.loss.mae = 0.0
  config.loss.ssim = 0.0
  config.loss.perceptual = 0.0
  config.lock()
  return config
