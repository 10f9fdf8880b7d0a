"""The 1/16 student and its distillation: the whole job in one command.

Config string: ``configs/student.py:STRATEGY[,SCALE]`` with STRATEGY one of none (no
distillation, the paper's "w/o PKD"), kd, takd, mtkd, dgkd, pkd (default) and SCALE one of test,
demo, mini, paper (default paper), e.g.

    python -m pkd_jax.main --config=configs/student.py:pkd,demo --workdir=runs/demo

finds (or trains) every teacher the strategy needs under WORKDIR/teachers/<name> (x8, x4, x2, x1;
x1_seed1, x1_seed2 for mtkd; ta_x4 for takd) or in distill.teachers_dir, then trains the student
in WORKDIR/student_<strategy>, evaluates it on the test split and writes WORKDIR/results_<strategy>.*.
"""

import ml_collections

from configs import base
from pkd_jax.distill import STRATEGIES


def get_config(arg: str | None = None):
  strategy, scale = base.parse_arg(arg, "strategy", tuple(STRATEGIES), "pkd")
  config = base.apply_scale(base.get_config(), scale)
  config.role = "student"
  config.train.factor = 16  # the student sees 1/16 of the frames
  config.data.factors = (16, 8, 4, 2, 1)  # every example carries the crop at each factor
  d = config.distill = ml_collections.ConfigDict()
  d.strategy = strategy  # see pkd_jax/distill.py
  # L_KD = |f_s - f_t|_1 + lambda_kd * L_map(student maps, teacher maps);
  # L_total = L_GT + lambda_total * L_KD. The paper gives no values; see the README for ours.
  d.lambda_kd = 1.0
  d.lambda_total = 1.0
  # PKD: the next teacher takes over when the epoch-mean KD loss has not decreased by more than
  # min_delta for `patience` epochs (the paper: 5, at every scale), or after max_epochs_per_stage
  # (0: no cap; else a safety net, well beyond patience + 1). schedule.json says which rule fired.
  # An epoch is one pass over the training slices, (train cases x slices) // batch_size steps, or
  # epoch_steps steps if that is set (> 0): the demo's 500 steps are 5.2 passes, too few for 4
  # teachers x (patience + 1) epochs, so its schedule counts epochs of 8 steps (62 in the run).
  d.patience = 5
  d.min_delta = 0.0
  d.max_epochs_per_stage = 0
  d.epoch_steps = 0
  d.dgkd_drop = 1  # DGKD: teachers dropped at random each step (of 4)
  d.mtkd_seeds = (0, 1, 2)  # MTKD: seeds of the three full-resolution teachers
  d.teachers_dir = ""  # another folder to look for trained teachers in (before WORKDIR/teachers)
  d.teacher_steps = 0  # optimiser steps of each teacher trained here (0: train.steps)
  if scale == "test":  # seconds: the cap switches every epoch (2 steps), patience never can
    d.max_epochs_per_stage = 1
  elif scale == "demo":  # 96 steps per pass; 8-step epochs, a cap of 3 x patience (120 steps)
    d.epoch_steps, d.max_epochs_per_stage = 8, 15
  config.lock()
  return config
