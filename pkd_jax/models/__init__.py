"""Model registry: networks by name, as configs refer to them."""

from __future__ import annotations

import flax.linen as nn
import jax
import numpy as np

from pkd_jax.errors import InputError
from pkd_jax.models.vnet import VNet

MODELS: dict[str, type[nn.Module]] = {"vnet": VNet}


def get_model(name: str, **kwargs) -> nn.Module:
  """Builds the model registered as ``name`` with the given attributes."""
  if name not in MODELS:
    raise InputError("model", f"unknown model {name!r}; valid: {', '.join(sorted(MODELS))}")
  return MODELS[name](**kwargs)


def count_params(params) -> int:
  """The number of scalars in a pytree of arrays (or of ``jax.ShapeDtypeStruct``s)."""
  return int(sum(np.prod(leaf.shape, dtype=np.int64) for leaf in jax.tree_util.tree_leaves(params)))
