"""The train state and how a fresh one is made: the optimiser and the initialisation.

Shared by the training loop (pkd_jax.train) and by checkpoint loading (pkd_jax.checkpoints),
which restores onto the abstract shape of a fresh state. A config with a ``gan`` section trains
adversarially (pkd_jax.gan): its state also holds the discriminator and its own optimiser state.
"""

from __future__ import annotations

import functools
import inspect
from typing import Any

import flax
import jax
import jax.numpy as jnp
import ml_collections
import optax

from pkd_jax import models, runtime
from pkd_jax.data.case import TARGET_MAPS


@flax.struct.dataclass
class TrainState:
  step: jax.Array
  params: Any
  batch_stats: Any
  opt_state: Any


@flax.struct.dataclass
class GANState(TrainState):
  """The generator's state (the fields of :class:`TrainState`: evaluation and prediction use only
  params and batch_stats), and the discriminator's parameters and optimiser state."""

  critic_params: Any
  critic_opt_state: Any


def make_schedule(config: ml_collections.ConfigDict) -> optax.Schedule:
  """The learning rate, decayed linearly from train.learning_rate to 0 over train.steps."""
  return optax.linear_schedule(config.train.learning_rate, 0.0, max(int(config.train.steps), 1))


def make_optimizer(config: ml_collections.ConfigDict) -> optax.GradientTransformation:
  """Adam(b1, b2) with the linearly decayed learning rate (the paper: 0.5, 0.99, 1e-3).

  The same settings give the same object: the jitted steps take the optimiser as a static
  argument (hashed by identity), so runs of one process with equal settings (an experiment's
  units) share their compiled steps instead of compiling each its own.
  """
  t = config.train
  return _adam(float(t.learning_rate), float(t.b1), float(t.b2), max(int(t.steps), 1))


@functools.lru_cache(maxsize=None)
def _adam(learning_rate: float, b1: float, b2: float, steps: int) -> optax.GradientTransformation:
  return optax.adam(optax.linear_schedule(learning_rate, 0.0, steps), b1=b1, b2=b2)


@functools.lru_cache(maxsize=None)
def _jitted_init(model):
  """model.init, jit-compiled once per model (runs of the same architecture in one process, as
  the experiments train, share it)."""
  if "train" in inspect.signature(model.__call__).parameters:
    return jax.jit(functools.partial(model.init, train=False))
  return jax.jit(model.init)


def init_state(config, model, tx, seed: int) -> TrainState:
  """A fresh train state. Initialisation draws from JAX's "rbg" generator: threefry's unrolled
  rounds made the jitted init of the V-Net take ~35 s to compile on CPU, rbg ~9 s."""
  p = config.data.patch
  x = jnp.zeros((1, p.num_frames, p.height, p.width, 1), jnp.float32)
  rng = jax.random.key(seed, impl="rbg")
  variables = _jitted_init(model)(rng, x)
  params = variables["params"]
  # tx.init jitted once per optimiser: run eagerly it compiles a zeros program for every
  # parameter shape (53 in one test-scale experiment).
  opt_init = runtime.jit_with_options(tx.init)
  fields = dict(step=jnp.zeros((), jnp.int32), params=params,
                batch_stats=variables.get("batch_stats", {}), opt_state=opt_init(params))
  if config.get("gan") is None:
    return TrainState(**fields)
  critic = models.critic_from_config(config)
  x = jnp.zeros(critic_input_shape(config), jnp.float32)
  critic_params = _jitted_init(critic)(jax.random.fold_in(rng, 1), x)["params"]
  return GANState(**fields, critic_params=critic_params,
                  critic_opt_state=opt_init(critic_params))


def critic_input_shape(config) -> tuple[int, int, int, int]:
  """A discriminator's input for one patch: its T frames and the maps as channels."""
  p = config.data.patch
  return (1, p.height, p.width, p.num_frames + len(TARGET_MAPS))
