"""A teacher: the V-Net trained on the ground truth at one temporal factor.

Config string: ``configs/teacher.py:FACTOR[,SCALE]`` with FACTOR in 1, 2, 4, 8 (1 = full temporal
resolution) and SCALE in test, demo, mini, paper (default paper), e.g.

    python -m pkd_jax.main --config=configs/teacher.py:8,demo --workdir=runs/teacher_x8
"""

from configs import base

TEACHER_FACTORS = (1, 2, 4, 8)


def get_config(arg: str | None = None):
  kind, scale = base.parse_arg(arg, "temporal factor", tuple(map(str, TEACHER_FACTORS)), "1")
  factor = int(kind)
  config = base.apply_scale(base.get_config(), scale)
  config.role = "teacher"
  config.train.factor = factor
  config.data.factors = (factor,)  # a teacher sees only its own factor
  config.lock()
  return config
