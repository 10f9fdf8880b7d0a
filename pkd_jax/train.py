"""Training: the train state, the jit-compiled train and eval steps, and the training loop.

The train step is a pure module-level function, jit-compiled once per run, with the state
donated. It already takes an optional teacher's variables (a frozen pytree, never in the
optimiser state): swapping one teacher for another of the same structure is a host-side swap
that does not retrace or recompile.

The loop (:func:`train_and_evaluate`) draws batches from the grain pipeline, logs scalars to
TensorBoard (``workdir/tb``), validates every ``train.eval_every`` steps on held-out cases and
writes an orbax checkpoint there (``workdir/checkpoints``: the latest ``train.keep_checkpoints``
plus the best by validation loss; each written atomically) holding the train state and the input
pipeline's position. A run started on a workdir with checkpoints resumes from the latest, so it
ends exactly where an uninterrupted run would. A non-finite loss stops the run with a clear
message; the last good checkpoint is kept.

Data parallelism (pkd_jax.parallel): the loop runs on a mesh of all devices (one device is a mesh
of one). The state after initialisation or restoring, the teachers' variables and the perceptual
network are replicated; every batch, training and validation (the teachers' inputs too), is split
along its batch axis (:data:`BATCH_AXES`). The steps are the same jitted functions: XLA's SPMD
partitioner makes the means over the batch (losses, BatchNorm statistics, gradients) all-reduces,
so a step on N devices is the single-device step on the same global batch. The batch size must
divide by the number of devices. With several processes each loads its share of every training
batch (the pipeline shards its example stream by process) and all of every validation batch.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os
from typing import Sequence

import grain
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from absl import logging
from tqdm import tqdm

from pkd_jax import checkpoints, distill, fileio, gan, hooks, inference, losses, models, parallel
from pkd_jax import runtime
from pkd_jax.data import pipeline, temporal
from pkd_jax.data.case import TARGET_MAPS, TMAX_THRESHOLD_S
from pkd_jax.errors import InputError, TrainingStopped
from pkd_jax.models import vgg
from pkd_jax.state import TrainState, init_state, make_optimizer, make_schedule


@dataclasses.dataclass(frozen=True)
class LossConfig:
  """The static (hashable) part of the loss: term weights, the maps' ranges, KD lambdas."""

  weights: tuple[tuple[str, float], ...]  # (('mae', 1.0), ('ssim', 1.0), ('perceptual', 1.0))
  ranges: tuple[tuple[str, float], ...]  # (('tmax', 20.0), ...)
  lambda_kd: float = 1.0  # L_KD = |f_s - f_t| + lambda_kd * L_map(y_s, y_t)
  lambda_total: float = 1.0  # L_total = L_GT + lambda_total * L_KD
  kd_combine: str = "targets"  # several teachers: "targets" or "losses" (pkd_jax.distill)

  @classmethod
  def from_config(cls, config: ml_collections.ConfigDict) -> "LossConfig":
    weights = tuple((k, float(config.loss[k])) for k in ("mae", "ssim", "perceptual", "mse"))
    ranges = tuple((k, float(config.data.map_ranges[k])) for k in TARGET_MAPS)
    distill_config = config.get("distill")
    if distill_config is None:
      return cls(weights, ranges)
    return cls(weights, ranges, float(distill_config.lambda_kd),
               float(distill_config.lambda_total),
               distill.get_strategy(distill_config.strategy).combine)


def make_perceptual(config: ml_collections.ConfigDict):
  """The perceptual loss network, or None when its weight is 0.

  A weights file given in the config is loaded (and so checked) even when the weight is 0.
  """
  if config.loss.perceptual_weights:
    net = vgg.load_vgg16_params(config.loss.perceptual_weights)
    logging.info("perceptual loss: ImageNet VGG16 weights from %s", config.loss.perceptual_weights)
    return net if config.loss.perceptual else None
  if config.loss.perceptual == 0:
    return None
  logging.info("perceptual loss: VGG16 with fixed random weights (seed %d; Liu et al., CVPR 2021)",
               config.loss.perceptual_seed)
  return vgg.random_vgg16_params(config.loss.perceptual_seed)


def check_config(config: ml_collections.ConfigDict) -> None:
  """Clear errors for settings that cannot work, before anything is built."""
  patch = config.data.patch
  for name in ("height", "width", "num_frames"):
    if patch[name] % 16 or patch[name] <= 0:
      raise InputError(f"config.data.patch.{name}",
                       f"{patch[name]} does not divide by 16 (the V-Net halves it four times)")
  temporal.check_factor(config.train.factor, config.data.num_frames, "config.train.factor")
  if config.train.factor not in config.data.factors:
    raise InputError("config.data.factors", f"{tuple(config.data.factors)} lacks the model's "
                     f"factor config.train.factor = {config.train.factor}")
  if config.train.steps < 1 or config.train.eval_every < 1:
    raise InputError("config.train", "steps and eval_every must be positive")
  devices = jax.device_count()  # all processes': the mesh of pkd_jax.parallel
  if config.data.batch_size < 1 or config.data.batch_size % devices:
    raise InputError("config.data.batch_size",
                     f"{config.data.batch_size} does not divide by the number of devices, "
                     f"{devices}: each step splits the batch evenly over them")


def _kd(feature, maps, teachers, teacher_x, perceptual, student_features=None, *, model,
        loss_config: LossConfig):
  """L_KD against K stacked, frozen teachers (see pkd_jax.distill for the combinations):
  "targets", the averaged teachers' maps and the weighted mean of per-teacher feature terms;
  "losses", the weighted mean of per-teacher L_KD."""
  # One teacher after another (lax.map), not jax.vmap: vmapping the convolutions over K sets of
  # kernels makes grouped convolutions, which XLA's CPU backend runs ~9x slower (a demo-size
  # step with 3 teachers took 1.35 s vmapped, 0.36 s mapped; with none 0.23 s).
  apply = lambda variables_x: model.apply(variables_x[0], variables_x[1], train=False)
  teacher_maps, teacher_aux = jax.lax.stop_gradient(
      jax.lax.map(apply, (teachers["variables"], teacher_x)))  # each (K, B, ...)
  weights = teachers["weights"]  # (K,), summing to 1
  ranges, term_weights = dict(loss_config.ranges), dict(loss_config.weights)
  kd_loss = functools.partial(losses.kd_loss, ranges=ranges, weights=term_weights,
                              perceptual=perceptual, lambda_kd=loss_config.lambda_kd,
                              student_features=student_features)
  average = lambda x: jnp.tensordot(weights, x.astype(jnp.float32), axes=1)
  if loss_config.kd_combine == "targets":  # maps: the averaged teacher's; features: per teacher
    per_teacher_feature = jax.vmap(lambda f: losses.feature_loss(feature, f))(
        teacher_aux["bottleneck"])
    soft, _ = losses.gt_loss(maps, {k: average(v) for k, v in teacher_maps.items()}, ranges,
                             term_weights, perceptual, student_features)
    return losses.kd_from_terms(average(per_teacher_feature), soft, loss_config.lambda_kd)
  per_teacher = jax.vmap(lambda f, m: kd_loss(feature, f, maps, m))(teacher_aux["bottleneck"],
                                                                   teacher_maps)
  return jax.tree.map(average, per_teacher)  # the weighted mean of per-teacher losses


def _loss_fn(params, batch_stats, batch, teachers, perceptual, *, model, loss_config: LossConfig):
  """L_GT (+ lambda_total L_KD when a teacher is given) and the batch-norm statistics update."""
  (maps, aux), updates = model.apply({"params": params, "batch_stats": batch_stats}, batch["x"],
                                     train=True, mutable=["batch_stats"])
  targets = {k: batch[k] for k in TARGET_MAPS}
  ranges, weights = dict(loss_config.ranges), dict(loss_config.weights)
  features = None  # the student's VGG features, computed once for L_GT and L_KD
  if perceptual is not None and weights["perceptual"]:
    features = losses.perceptual_features(perceptual, losses.scale_maps(maps, ranges))
  loss, metrics = losses.gt_loss(maps, targets, ranges, weights, perceptual, features)
  if teachers is not None:
    kd, kd_metrics = _kd(aux["bottleneck"], maps, teachers, batch["teacher_x"], perceptual,
                         features, model=model, loss_config=loss_config)
    loss = loss + loss_config.lambda_total * kd
    metrics = {**metrics, **kd_metrics}
  metrics["loss"] = loss
  return loss, (metrics, updates["batch_stats"])


_TRAIN_STEP_JIT = dict(static_argnames=("model", "tx", "loss_config"), donate_argnums=0)
_EVAL_STEP_JIT = dict(static_argnames=("model", "loss_config", "window_frames", "stride"))


def _train_step(state: TrainState, batch, teachers, perceptual, *, model, tx,
                loss_config: LossConfig):
  """One optimiser step.

  teachers: None, or {"variables": K frozen teachers' variables stacked on a leading axis,
  "weights": (K,)}, with batch["teacher_x"] (K, B, T, H, W, 1) their inputs. Other teachers of the
  same structure (the next PKD stage, other DGKD weights) reuse the same compiled step.
  """
  grad_fn = jax.value_and_grad(_loss_fn, has_aux=True)
  (_, (metrics, batch_stats)), grads = grad_fn(state.params, state.batch_stats, batch, teachers,
                                               perceptual, model=model, loss_config=loss_config)
  updates, opt_state = tx.update(grads, state.opt_state, state.params)
  params = optax.apply_updates(state.params, updates)
  metrics = dict(metrics, grad_norm=optax.tree.norm(grads), param_norm=optax.tree.norm(params))
  new_state = state.replace(step=state.step + 1, params=params, batch_stats=batch_stats,
                            opt_state=opt_state)
  return new_state, metrics


train_step = runtime.jit_with_options(_train_step, **_TRAIN_STEP_JIT)


def make_step(config: ml_collections.ConfigDict, model, tx, loss_config: LossConfig):
  """The step the loop runs, ``step(state, batch, teachers, perceptual) -> (state, metrics)``:
  :func:`train_step`, or with a ``gan`` config section the adversarial step of pkd_jax.gan."""
  if config.get("gan") is not None:
    return functools.partial(gan.train_step, model=model, tx=tx, loss_config=loss_config,
                             critic=models.critic_from_config(config),
                             adversarial=float(config.gan.adversarial))
  return functools.partial(train_step_fn(model), model=model, tx=tx, loss_config=loss_config)


def train_step_fn(model):
  """:func:`train_step`, compiled with the XLA options of ``model`` if it has any
  (pkd_jax.models.compiler_options: XLA's own CPU convolutions for wide V-Nets)."""
  options = models.compiler_options(model)
  if not options:  # the module-level name, so that replacing train.train_step reaches the loop
    return train_step
  return runtime.jit_with_options(_train_step, options, **_TRAIN_STEP_JIT)


def _eval_step(state: TrainState, batch, perceptual, *, model, loss_config: LossConfig,
               window_frames: int, stride: int):
  """Validation sums of one batch of whole slices, predicted by the window rule
  (pkd_jax.inference): per slice the loss terms and each map's MAE and squared error in its own
  units, summed over the real slices (``batch["weight"]`` 1; 0 for the padding that makes a last
  partial batch split over the devices), their number ``count/slices``, and the counts for the
  Dice of the Tmax > 6 s region inside the brain; :func:`evaluate` adds them up over batches.
  """
  variables = {"params": state.params, "batch_stats": state.batch_stats}
  maps = inference.windowed_maps(model, variables, batch["x"], window_frames, stride)
  targets = {k: batch[k] for k in TARGET_MAPS}
  ranges, weights = dict(loss_config.ranges), dict(loss_config.weights)

  def per_slice(slice_maps, slice_targets):  # one slice as a batch of one
    one = lambda d: {k: v[None] for k, v in d.items()}
    loss, metrics = losses.gt_loss(one(slice_maps), one(slice_targets), ranges, weights,
                                   perceptual)
    metrics = dict(metrics, loss=loss)
    for k in TARGET_MAPS:
      metrics[f"{k}/mae_units"] = jnp.mean(jnp.abs(slice_maps[k] - slice_targets[k]))
      metrics[f"{k}/mse_units"] = jnp.mean(jnp.square(slice_maps[k] - slice_targets[k]))
    return metrics

  real = batch["weight"] > 0
  metrics = {k: jnp.sum(jnp.where(real, v, 0.0))
             for k, v in jax.vmap(per_slice)(maps, targets).items()}
  metrics["count/slices"] = jnp.sum(real)
  brain = (batch["brain_mask"] > 0) & real[:, None, None]
  predicted = brain & (maps["tmax"] > TMAX_THRESHOLD_S)
  truth = brain & (targets["tmax"] > TMAX_THRESHOLD_S)
  metrics["count/tmax_gt6_both"] = jnp.sum(predicted & truth)
  metrics["count/tmax_gt6_predicted"] = jnp.sum(predicted)
  metrics["count/tmax_gt6_truth"] = jnp.sum(truth)
  return metrics


eval_step = runtime.jit_with_options(_eval_step, **_EVAL_STEP_JIT)


# The batch axis of each input of the steps where it is not 0: teacher_x is (K, B, T, H, W, 1).
BATCH_AXES = {"teacher_x": 1}


def device_batch(batch: dict[str, np.ndarray], factors, factor: int,
                 teacher_factors: Sequence[int] = ()) -> dict[str, np.ndarray]:
  """The step's inputs from a pipeline batch: x at the model's factor, and teacher_x
  (K, B, T, H, W, 1) at the teachers' factors (the same crop) when there are teachers.
  Host arrays: :func:`pkd_jax.parallel.shard_batch` (with :data:`BATCH_AXES`) places them."""
  out = {"x": pipeline.scans_for_factor(batch, factors, factor)}
  if teacher_factors:
    out["teacher_x"] = np.stack([pipeline.scans_for_factor(batch, factors, f)
                                 for f in teacher_factors])
  out.update({k: batch[k] for k in (*TARGET_MAPS, "brain_mask")})
  return out


# ----------------------------------------------------------------------------------------------
# The loop.


def evaluate(state, datasets_val, config, model, loss_config, perceptual,
             mesh: jax.sharding.Mesh | None = None) -> dict[str, float]:
  """Validation over whole slices by the window rule: mean loss terms and MAE per slice, RMSE per
  map in its units (over slices) and the Dice of Tmax > 6 s inside the brain (over all slices).

  mesh: the devices (default: all; pkd_jax.parallel). Each batch is split over them, the last
  partial one padded to a multiple of their number (the padding weighs 0). state and perceptual
  are expected on the mesh (replicated), as the loop holds them. Every process reads the whole
  validation batches (the same on all).
  """
  mesh = parallel.make_mesh() if mesh is None else mesh
  step = runtime.jit_with_options(_eval_step, models.compiler_options(model), **_EVAL_STEP_JIT)
  rows = []
  for i, batch in enumerate(datasets_val):
    if config.train.eval_batches and i >= config.train.eval_batches:
      break
    inputs, size = parallel.pad_batch(device_batch(batch, config.data.factors,
                                                   config.train.factor),
                                      parallel.num_devices(mesh), axes=BATCH_AXES)
    inputs["weight"] = (np.arange(len(inputs["x"])) < size).astype(np.float32)
    rows.append(step(state, parallel.shard_batch(mesh, inputs, axes=BATCH_AXES,
                                                 global_batch=True),
                     perceptual, model=model, loss_config=loss_config,
                     window_frames=config.data.patch.num_frames,
                     stride=config.data.window_stride))
  rows = parallel.to_host(rows)
  totals = {k: float(np.sum([r[k] for r in rows], dtype=np.float64)) for k in rows[0]}
  slices = totals.pop("count/slices")
  counts = {k: v for k, v in totals.items() if k.startswith("count/")}
  out = {k: v / slices for k, v in totals.items() if not k.startswith("count/")}
  for k in TARGET_MAPS:
    out[f"{k}/rmse_units"] = float(np.sqrt(out.pop(f"{k}/mse_units")))
  both, total = counts["count/tmax_gt6_both"], (counts["count/tmax_gt6_predicted"] +
                                                counts["count/tmax_gt6_truth"])
  out["tmax_gt6/dice"] = 2 * both / total if total else 1.0
  return out


def schedule_epoch_steps(config: ml_collections.ConfigDict, num_records: int) -> int:
  """Steps per epoch of a distillation schedule (PKD's patience counts these epochs).

  config.distill.epoch_steps if set (> 0), else one pass over the num_records training slices:
  num_records // batch_size steps (at least 1).
  """
  distill_config = config.get("distill")
  if distill_config is not None and distill_config.get("epoch_steps", 0):
    if int(distill_config.epoch_steps) < 0:
      raise InputError("config.distill.epoch_steps",
                       f"must be 0 (one pass) or positive, got {distill_config.epoch_steps}")
    return int(distill_config.epoch_steps)
  return max(1, num_records // config.data.batch_size)


VALIDATION_HISTORY_FILE = "validation.json"  # [{"step": ..., metric: value, ...}, ...]


def _append_history(workdir: str, step: int, val: dict[str, float]) -> None:
  """Adds a validation to workdir/validation.json (the learning curves), replacing any later
  entries a resumed run recomputes."""
  path = os.path.join(workdir, VALIDATION_HISTORY_FILE)
  history = []
  if os.path.exists(path):
    with open(path) as f:
      history = [h for h in json.load(f) if h["step"] < step]
  fileio.write_json(path, history + [dict(step=step, **val)])


def _check_finite(pending: list, done: int, last_good: int | None, directory) -> float:
  """The last of the losses of steps done - len(pending) + 1 .. done (device scalars, read now);
  TrainingStopped at the first that is not finite."""
  losses = np.asarray(jax.device_get(pending), np.float64)
  bad = np.flatnonzero(~np.isfinite(losses))
  if bad.size:
    step, loss = done - len(losses) + int(bad[0]) + 1, losses[bad[0]]
    raise TrainingStopped(
        f"non-finite loss ({loss}) at step {step}; stopped. The last good checkpoint is step "
        f"{last_good} in {directory}" if last_good is not None else
        f"non-finite loss ({loss}) at step {step}; stopped before any checkpoint")
  return float(losses[-1])


class _TeachersOnMesh:
  """The train step's ``teachers`` argument replicated on the mesh: the stacked variables once
  per stack the hook hands out (a new object when the teachers change), the K weights each
  step."""

  def __init__(self, mesh: jax.sharding.Mesh):
    self.mesh, self._source, self._placed = mesh, None, None

  def __call__(self, teachers):
    if teachers is None:
      return None
    if teachers["variables"] is not self._source:
      self._source = teachers["variables"]
      self._placed = parallel.replicate(self.mesh, self._source)
    return dict(teachers, variables=self._placed,
                weights=parallel.replicate(self.mesh, teachers["weights"]))


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str,
                       hook: hooks.Hook | None = None) -> dict[str, float]:
  """Trains config's model in workdir (resuming if it holds checkpoints); returns final metrics.

  hook: what the run adds to the loop (pkd_jax.hooks), e.g. a distillation's teaching
  (pkd_jax.distill.Teaching, which writes workdir/schedule.json); None trains on the ground truth
  alone.
  """
  from tensorboardX import SummaryWriter  # pylint: disable=import-outside-toplevel

  check_config(config)
  checkpoints.check_workdir_spec(workdir, checkpoints.model_spec(config))
  hook = hook if hook is not None else hooks.Hook()
  mesh = parallel.make_mesh()  # all devices of all processes; one device is a mesh of one
  model, tx = models.from_config(config), make_optimizer(config)
  loss_config = LossConfig.from_config(config)
  perceptual = parallel.replicate(mesh, make_perceptual(config))
  source = pipeline.make_source(config.data, "train")  # the phantom: config.data.seed
  steps_per_epoch = schedule_epoch_steps(config, len(source))  # the distillation schedule's
  # Each process loads its share of every global batch (all of it with one process).
  train_data = pipeline.make_dataset_from_config(
      config.data, "train", config.seed, source=source,
      shard=grain.sharding.ShardByJaxProcess())
  val_data = pipeline.make_dataset_from_config(config.data, "validation", config.seed)
  iterator = pipeline.make_iterator(train_data, num_workers=config.data.num_workers)
  state = parallel.replicate(mesh, init_state(config, model, tx, config.seed))
  manager = checkpoints.checkpoint_manager(workdir, config.train.keep_checkpoints)
  if manager.latest_step() is not None:  # restored onto the replicated state's shardings
    state = parallel.replicate(mesh, checkpoints.restore_latest(manager, state, iterator, hook))
  teachers_on_mesh = _TeachersOnMesh(mesh)
  writer = SummaryWriter(os.path.join(workdir, "tb"))
  start_step, total = int(state.step), int(config.train.steps)
  factors, factor = config.data.factors, config.train.factor
  step_fn = make_step(config, model, tx, loss_config)
  last_good, val, pending = manager.latest_step(), {}, []
  name = f"1/{factor}" if factor > 1 else "full"
  describe = lambda: " ".join(filter(None, (f"{config.role} {name}", hook.describe())))
  resume = f", resuming at step {start_step}" if start_step else ""
  tqdm.write(f"{describe()}: {config.model.name} to {total} steps{resume}; results in {workdir}")
  bar = tqdm(range(start_step, total), initial=start_step, total=total, unit="step",
             desc=describe(), dynamic_ncols=True)
  log = hooks.RunLog(workdir, writer, bar)
  try:
    for step in bar:
      batch = parallel.shard_batch(
          mesh, device_batch(next(iterator), factors, factor, hook.teacher_factors()),
          axes=BATCH_AXES)
      state, metrics = step_fn(state, batch, teachers_on_mesh(hook.teachers_arg(step)),
                               perceptual)
      # No host round trip per step: the losses stay on the device until the next log or
      # validation step (or the end of a distillation epoch) reads them.
      pending.append(metrics["loss"])
      done = step + 1
      hook.after_step(done, metrics, log)
      if done % steps_per_epoch == 0:
        hook.end_epoch(done, log)
        bar.set_description(describe())
      is_eval = done % config.train.eval_every == 0 or done == total
      if is_eval or done % config.train.log_every == 0:
        loss = _check_finite(pending, done, last_good, manager.directory)
        pending = []
      if done % config.train.log_every == 0 or done == total:
        bar.set_postfix(loss=f"{loss:.4f}")
        for k, v in jax.device_get(metrics).items():
          writer.add_scalar(f"train/{k}", float(v), done)
        writer.add_scalar("train/learning_rate", float(make_schedule(config)(done)), done)
      if is_eval:
        val = evaluate(state, val_data, config, model, loss_config, perceptual, mesh)
        for k, v in val.items():
          writer.add_scalar(f"validation/{k}", v, done)
        checkpoints.save(manager, done, state, iterator.get_state(), hook.state_dict(),
                         val["loss"])
        last_good = done
        _append_history(workdir, done, val)
        bar.write(f"step {done}: validation loss {val['loss']:.4f}, Tmax RMSE "
                  f"{val['tmax/rmse_units']:.2f} s, Tmax > 6 s Dice {val['tmax_gt6/dice']:.2f}")
        hook.after_evaluation(done, val, log)
    hook.finish(log)
  finally:
    manager.wait_until_finished()
    writer.close()
    bar.close()
  return {"step": int(state.step), **{f"val_{k}": v for k, v in val.items()}}
