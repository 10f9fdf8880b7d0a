"""Adversarial training (UNET-GAN-Assisted, pkd_jax.models.unet_gan): the generator and the
discriminator update alternately, each with its own optimiser state, in one jitted step.

Each step (pix2pix's recipe, Isola et al., CVPR 2017):

1. the generator's update: L_GT (the config's loss terms; L1 for UNET-GAN) plus
   ``config.gan.adversarial`` times the non-saturating adversarial loss, the binary cross-entropy
   of the discriminator's patch logits on (input, generated maps) against "real";
2. the discriminator's update, with the maps the generator produced in step 1 (before its update,
   held constant): half the cross-entropy of (input, true maps) against "real" plus half that of
   (input, generated maps) against "fake".

The discriminator sees a patch's T input frames and the three maps, each divided by its range,
as the channels of one image. Both use the pipeline's optimiser (pkd_jax.state.make_optimizer).
Logged apart (train/* in TensorBoard): the generator's ``gt``, ``g_adversarial`` and ``loss``
(their weighted sum), the discriminator's ``d_loss`` and its mean probabilities ``d_real`` and
``d_fake``. A GAN run takes no teachers.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import optax

from pkd_jax import losses
from pkd_jax.data.case import TARGET_MAPS
from pkd_jax.state import GANState


def critic_input(x: jax.Array, maps: dict[str, jax.Array], ranges: dict[str, float]) -> jax.Array:
  """(B, T, H, W, 1) frames and {map: (B, H, W)} -> (B, H, W, T + 3), the maps over their ranges."""
  frames = jnp.moveaxis(x[..., 0], 1, -1)
  scaled = jnp.stack([maps[k] / ranges[k] for k in TARGET_MAPS], axis=-1)
  return jnp.concatenate([frames.astype(jnp.float32), scaled.astype(jnp.float32)], axis=-1)


def _bce(logits: jax.Array, real: bool) -> jax.Array:
  labels = jnp.full_like(logits, 1.0 if real else 0.0)
  return jnp.mean(optax.sigmoid_binary_cross_entropy(logits, labels))


@functools.partial(jax.jit, static_argnames=("model", "tx", "loss_config", "critic", "adversarial"),
                   donate_argnums=0)
def train_step(state: GANState, batch, teachers, perceptual, *, model, tx, loss_config, critic,
               adversarial: float):
  """One generator update, then one discriminator update (see the module docstring)."""
  if teachers is not None:
    raise ValueError("adversarial training takes no teachers")
  ranges, weights = dict(loss_config.ranges), dict(loss_config.weights)
  targets = {k: batch[k] for k in TARGET_MAPS}
  judge = lambda params, maps: critic.apply({"params": params}, critic_input(batch["x"], maps,
                                                                             ranges))

  def generator_loss(params):
    (maps, _), updates = model.apply({"params": params, "batch_stats": state.batch_stats},
                                     batch["x"], train=True, mutable=["batch_stats"])
    gt, metrics = losses.gt_loss(maps, targets, ranges, weights, perceptual)
    adv = _bce(judge(state.critic_params, maps), real=True)
    loss = gt + adversarial * adv
    return loss, (dict(metrics, g_adversarial=adv, loss=loss), updates["batch_stats"], maps)

  (_, (metrics, batch_stats, fake)), grads = jax.value_and_grad(generator_loss, has_aux=True)(
      state.params)
  updates, opt_state = tx.update(grads, state.opt_state, state.params)
  params = optax.apply_updates(state.params, updates)
  fake = jax.lax.stop_gradient(fake)

  def critic_loss(critic_params):
    real_logits, fake_logits = judge(critic_params, targets), judge(critic_params, fake)
    loss = 0.5 * (_bce(real_logits, real=True) + _bce(fake_logits, real=False))
    return loss, dict(d_loss=loss, d_real=jnp.mean(jax.nn.sigmoid(real_logits)),
                      d_fake=jnp.mean(jax.nn.sigmoid(fake_logits)))

  (_, critic_metrics), critic_grads = jax.value_and_grad(critic_loss, has_aux=True)(
      state.critic_params)
  critic_updates, critic_opt_state = tx.update(critic_grads, state.critic_opt_state,
                                               state.critic_params)
  metrics = dict(metrics, **critic_metrics, grad_norm=optax.tree.norm(grads),
                 param_norm=optax.tree.norm(params))
  return state.replace(step=state.step + 1, params=params, batch_stats=batch_stats,
                       opt_state=opt_state,
                       critic_params=optax.apply_updates(state.critic_params, critic_updates),
                       critic_opt_state=critic_opt_state), metrics
