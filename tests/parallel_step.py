"""One train step on 1 and on 8 (forced CPU) devices, for tests/test_parallel.py.

``python -m tests.parallel_step KIND OUT.npz`` runs pkd_jax.train.train_step once on a mesh of one
device and once on a mesh of 8, on the same global batch of 8 from the same initial state, placed
as the training loop places them (pkd_jax.parallel: the state, the teachers' variables and
weights replicated, the batch split along its batch axis), and saves for each: the metrics, the
updated parameters, BatchNorm statistics and Adam first moments (``(1 - b1) * gradient`` after
one step), and whether the new state is still replicated and the batch was split. KIND:

* "plain": a teacher's step (1/8) on the ground truth;
* "kd": a distillation step of the 1/16 student with two stacked teachers (1/8 and full);
* "evaluate": instead of a step, validation (pkd_jax.train.evaluate: the validation split's 2
  slices in a batch of 8, padded) and prediction (pkd_jax.inference.predict: 3 slices in batches
  of 2, rounded up to 8 devices and padded) on both meshes: the saved "metrics[...]" and "maps[...]";
* "multihost": as "plain", but the 8 devices are 4 in each of two processes started by the test
  (jax.distributed through JAX_COORDINATOR_ADDRESS, JAX_NUM_PROCESSES, JAX_PROCESS_ID): each
  loads its share of the batch through the pipeline's per-process sharding, which must be its
  rows of the unsharded pipeline's batch; process 0 also runs the single-device step on the
  unsharded batch and writes OUT.npz.

XLA_FLAGS must hold --xla_force_host_platform_device_count before jax is imported, hence a
process of its own.
"""

import os
import sys

KIND = sys.argv[1] if __name__ == "__main__" else "plain"
DEVICES = 8  # in all
LOCAL_DEVICES = 4 if KIND == "multihost" else DEVICES
os.environ["XLA_FLAGS"] = " ".join(filter(None, [
    os.environ.get("XLA_FLAGS"), f"--xla_force_host_platform_device_count={LOCAL_DEVICES}"]))
os.environ["JAX_PLATFORMS"] = "cpu"  # the forced devices are CPU ones, also where a GPU is

# pylint: disable=wrong-import-position
import functools  # noqa: E402

import grain  # noqa: E402
import jax  # noqa: E402
import numpy as np  # noqa: E402
import optax  # noqa: E402

from configs import student as student_config  # noqa: E402
from configs import teacher as teacher_config  # noqa: E402
from pkd_jax import checkpoints, inference, models, parallel, train  # noqa: E402
from pkd_jax.data import pipeline  # noqa: E402
from pkd_jax.state import init_state, make_optimizer  # noqa: E402
from tests.helpers import config_with  # noqa: E402

BATCH = 8
# The plain lax convolutions (what "auto" picks on GPU): see tests/test_parallel.py for why not
# the CPU's fast re-formulations.
PLAIN_CONVOLUTIONS = dict(model__conv_impl="conv3d", model__down_impl="conv",
                          model__up_impl="conv_transpose")


def _config(kind: str):
  if kind == "kd":
    return config_with(student_config.get_config, "pkd,test", data__batch_size=BATCH,
                       **PLAIN_CONVOLUTIONS)
  return config_with(teacher_config.get_config, "8,test", data__batch_size=BATCH,
                     **PLAIN_CONVOLUTIONS)


def _batch(config, teacher_factors=(), shard=None):
  """The step's host inputs from the pipeline's first training batch (this process's share)."""
  dataset = pipeline.make_dataset_from_config(config.data, "train", config.seed, shard=shard)
  return train.device_batch(next(pipeline.make_iterator(dataset)), config.data.factors,
                            config.train.factor, teacher_factors)


def _teachers(config):
  """Two teachers of the student's architecture stacked, as in tests/test_distill.py."""
  model, tx = models.from_config(config), make_optimizer(config)
  variables = []
  for seed in (1, 2):
    t = init_state(config, model, tx, seed)
    variables.append({"params": t.params, "batch_stats": t.batch_stats})
  return {"variables": jax.tree.map(lambda *xs: np.stack(xs), *variables),
          "weights": np.array([0.5, 0.5], np.float32)}


def _step(config, batch, teachers, mesh, checkpoint_dir=None):
  """The loop's placement (batch: this process's share), then one train step; numpy results.
  checkpoint_dir: where to save the new state as the loop does (a run folder), if given."""
  model, tx = models.from_config(config), make_optimizer(config)
  state = parallel.replicate(mesh, init_state(config, model, tx, config.seed))
  placed = parallel.shard_batch(mesh, batch, axes=train.BATCH_AXES)
  split = all(x.sharding.spec == parallel.batch_sharding(mesh, train.BATCH_AXES.get(k, 0)).spec
              and x.shape[train.BATCH_AXES.get(k, 0)] == BATCH for k, x in placed.items())
  teachers = None if teachers is None else parallel.replicate(mesh, teachers)
  step = functools.partial(train.train_step, model=model, tx=tx,
                           loss_config=train.LossConfig.from_config(config))
  new_state, metrics = step(state, placed, teachers, None)
  if checkpoint_dir is not None:
    checkpoints.check_workdir_spec(checkpoint_dir, checkpoints.model_spec(config))
    manager = checkpoints.checkpoint_manager(checkpoint_dir, 1)
    checkpoints.save(manager, 1, new_state, {}, {}, val_loss=1.0)
    manager.wait_until_finished()
  replicated = all(x.sharding.is_fully_replicated and
                   len(x.sharding.device_set) == parallel.num_devices(mesh)
                   for x in jax.tree.leaves(new_state))
  host = parallel.to_host({"params": new_state.params, "batch_stats": new_state.batch_stats,
                           "mu": optax.tree.get(new_state.opt_state, "mu"),
                           "metrics": metrics})
  out = {f"{group}{jax.tree_util.keystr(path)}": np.asarray(leaf)
         for group in ("params", "batch_stats", "mu", "metrics")
         for path, leaf in jax.tree_util.tree_flatten_with_path(host[group])[0]}
  out.update({"flag/replicated": np.bool_(replicated), "flag/split": np.bool_(split)})
  return out


def _evaluate(config, mesh):
  """Validation metrics and predicted maps of the initial state on mesh."""
  model, tx = models.from_config(config), make_optimizer(config)
  state = parallel.replicate(mesh, init_state(config, model, tx, config.seed))
  val_data = pipeline.make_dataset_from_config(config.data, "validation", config.seed)
  metrics = train.evaluate(state, val_data, config, model, train.LossConfig.from_config(config),
                           None, mesh)
  source = pipeline.make_source(config.data, "validation")
  inputs = np.stack([inference.slice_input(source[i]["scan"], config.train.factor,
                                           config.data.input_norm) for i in (0, 1, 0)])
  maps = inference.predict(model, {"params": state.params, "batch_stats": state.batch_stats},
                           inputs, config.data.patch.num_frames, config.data.window_stride,
                           batch_size=2, mesh=mesh)
  return {**{f"metrics['{k}']": np.asarray(v) for k, v in metrics.items()},
          **{f"maps['{k}']": v for k, v in maps.items()}}


def _save(path: str, **runs) -> None:
  np.savez(path, **{f"{name}/{k}": v for name, run in runs.items() for k, v in run.items()})


def main(kind: str, out_path: str) -> None:
  if kind == "multihost":
    parallel.initialize_distributed()
  assert jax.device_count() == DEVICES, jax.devices()
  config = _config(kind)
  teacher_factors = (8, 1) if kind == "kd" else ()
  teachers = _teachers(config) if kind == "kd" else None
  batch = _batch(config, teacher_factors)  # the whole global batch
  one_device = parallel.make_mesh(jax.local_devices()[:1])
  if kind == "evaluate":
    _save(out_path, one=_evaluate(config, one_device),
          eight=_evaluate(config, parallel.make_mesh()))
    return
  if kind != "multihost":
    _save(out_path, one=_step(config, batch, teachers, one_device),
          eight=_step(config, batch, teachers, parallel.make_mesh(),
                      out_path + ".run" if kind == "plain" else None))
    return
  share = _batch(config, shard=grain.sharding.ShardByJaxProcess())
  rows = slice(jax.process_index(), None, jax.process_count())
  for k, v in share.items():  # this process's rows of the global batch
    np.testing.assert_array_equal(v, batch[k][rows], err_msg=k)
  eight = _step(config, share, None, parallel.make_mesh())  # every process takes part
  if jax.process_index() == 0:
    _save(out_path, one=_step(config, batch, None, one_device), eight=eight)


if __name__ == "__main__":
  main(*sys.argv[1:])
