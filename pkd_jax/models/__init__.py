"""Model registry: networks by name, as configs refer to them, and building one from a config."""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from pkd_jax.data.case import TARGET_MAPS
from pkd_jax.errors import InputError
from pkd_jax.models import vnet
from pkd_jax.models.vnet import VNet

MODELS: dict[str, type[nn.Module]] = {"vnet": VNet}


def get_model(name: str, **kwargs) -> nn.Module:
  """Builds the model registered as ``name`` with the given attributes."""
  if name not in MODELS:
    raise InputError("model", f"unknown model {name!r}; valid: {', '.join(sorted(MODELS))}")
  return MODELS[name](**kwargs)


def impls_from_config(config) -> dict[str, str]:
  """config.model's convolution implementations, "auto" resolved for the default JAX backend."""
  m = config.model
  return vnet.resolve_impls(jax.default_backend(), down_impl=m.down_impl, up_impl=m.up_impl,
                            conv_impl=m.conv_impl)


def from_config(config) -> nn.Module:
  """The network of config.model, for inputs of config.data.patch.num_frames frames."""
  m = config.model
  dtypes = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}
  if m.dtype not in dtypes:
    raise InputError("config.model.dtype", f"unknown dtype {m.dtype!r}; valid: {sorted(dtypes)}")
  try:
    scales = (tuple(float(config.data.map_ranges[k]) for k in TARGET_MAPS)
              if m.scale_outputs else None)
    return get_model(m.name, filters=m.filters, num_frames=config.data.patch.num_frames,
                     dtype=dtypes[m.dtype], output_scales=scales, **impls_from_config(config))
  except ValueError as e:
    raise InputError("config.model", str(e)) from e


def count_params(params) -> int:
  """The number of scalars in a pytree of arrays (or of ``jax.ShapeDtypeStruct``s)."""
  return int(sum(np.prod(leaf.shape, dtype=np.int64) for leaf in jax.tree_util.tree_leaves(params)))
