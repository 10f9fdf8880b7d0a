"""A teacher: the V-Net trained on the ground truth at one temporal factor.

Config string: ``configs/teacher.py:FACTOR[,SCALE]`` with FACTOR in 1, 2, 4, 8 (1 = full temporal
resolution) and SCALE in test, demo, paper (default paper), e.g.

    python -m pkd_jax.main --config=configs/teacher.py:8,demo --workdir=runs/teacher_x8
"""

from configs import base

TEACHER_FACTORS = (1, 2, 4, 8)


def parse_arg(arg: str | None, valid_factors) -> tuple[int, str]:
  """'8,demo' -> (8, 'demo'); the factor must be one of valid_factors."""
  parts = [p.strip() for p in (arg or "").split(",") if p.strip()]
  factor, scale = 1, "paper"
  for part in parts:
    if part.isdigit():
      factor = int(part)
    else:
      scale = part
  if factor not in valid_factors:
    raise ValueError(f"temporal factor {factor} is not one of {valid_factors}")
  if scale not in base.SCALES:
    raise ValueError(f"unknown scale {scale!r}; valid scales: {', '.join(base.SCALES)}")
  return factor, scale


def get_config(arg: str | None = None):
  factor, scale = parse_arg(arg, TEACHER_FACTORS)
  config = base.apply_scale(base.get_config(), scale)
  config.role = "teacher"
  config.train.factor = factor
  config.data.factors = (factor,)  # a teacher sees only its own factor
  config.lock()
  return config
