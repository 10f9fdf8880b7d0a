"""Model registry: networks by name, as configs refer to them, and building one from a config."""

from __future__ import annotations

import dataclasses

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from pkd_jax.data.case import TARGET_MAPS
from pkd_jax.errors import InputError
from pkd_jax.models import vnet
from pkd_jax.models.unet_gan import PatchDiscriminator, UNetGAN
from pkd_jax.models.unitobrain import UniToBrain
from pkd_jax.models.vnet import VNet

MODELS: dict[str, type[nn.Module]] = {"vnet": VNet, "unitobrain": UniToBrain, "unet_gan": UNetGAN}
DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}


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


def compiler_options(model: nn.Module) -> dict[str, str]:
  """XLA compiler options for the programs (train, evaluation, prediction steps) of ``model`` on
  the default backend; {} for XLA's defaults (pkd_jax.models.vnet.compiler_options)."""
  if isinstance(model, VNet):
    return vnet.compiler_options(jax.default_backend(), model.filters)
  return {}


def from_config(config) -> nn.Module:
  """The network of config.model, for inputs of config.data.patch.num_frames frames."""
  m = config.model
  dtype = _dtype(config)
  try:
    scales = (tuple(float(config.data.map_ranges[k]) for k in TARGET_MAPS)
              if m.scale_outputs else None)
    kwargs = dict(filters=m.filters, num_frames=config.data.patch.num_frames,
                  dtype=dtype, output_scales=scales, heads=TARGET_MAPS,
                  **impls_from_config(config))
  except ValueError as e:
    raise InputError("config.model", str(e)) from e
  if m.name in MODELS:  # only the attributes the model declares (the impls are the V-Net's)
    declared = {f.name for f in dataclasses.fields(MODELS[m.name])}
    if scales is not None and "output_scales" not in declared:
      raise InputError("config.model.scale_outputs", f"model {m.name!r} has no output scales")
    kwargs = {k: v for k, v in kwargs.items() if k in declared}
  try:
    return get_model(m.name, **kwargs)
  except ValueError as e:
    raise InputError("config.model", str(e)) from e


def _dtype(config):
  if config.model.dtype not in DTYPES:
    raise InputError("config.model.dtype",
                     f"unknown dtype {config.model.dtype!r}; valid: {sorted(DTYPES)}")
  return DTYPES[config.model.dtype]


def critic_from_config(config) -> nn.Module:
  """The discriminator of an adversarially trained config (config.gan, pkd_jax.gan)."""
  return PatchDiscriminator(filters=int(config.gan.critic_filters), dtype=_dtype(config))


def count_params(params) -> int:
  """The number of scalars in a pytree of arrays (or of ``jax.ShapeDtypeStruct``s)."""
  return int(sum(np.prod(leaf.shape, dtype=np.int64) for leaf in jax.tree_util.tree_leaves(params)))
