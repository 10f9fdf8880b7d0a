"""Checkpoints of a workdir: what they are checkpoints of (model.json), the orbax manager that
writes them (the latest few plus the best by validation loss), resuming a run, and loading a
trained model's variables for evaluation, distillation and prediction.

Loading never changes the folder: a manager opened for reading is read-only and leaves the
temporary folders of a checkpoint being written alone, so predicting from (or evaluating) a run
that is still training is safe.
"""

from __future__ import annotations

import collections
import json
import os
from typing import Any

import jax
import ml_collections
import numpy as np
import orbax.checkpoint as ocp
from absl import logging
from orbax.checkpoint import checkpoint_managers

from pkd_jax import fileio, models, parallel
from pkd_jax.data.case import TARGET_MAPS
from pkd_jax.errors import InputError
from pkd_jax.state import TrainState, init_state, make_optimizer

MODEL_SPEC_FILE = "model.json"  # what a workdir's checkpoints are checkpoints of


def model_spec(config: ml_collections.ConfigDict) -> dict[str, Any]:
  """What a checkpoint holds: architecture and input; a workdir must not mix two of them.

  ``grid``: the preprocessing geometry the model was trained at (config.data.height, width,
  num_frames; with frame_interval_s the time grid), so that pkd_jax.predict needs no flags for it.
  """
  return dict(model=config.model.name, filters=config.model.filters,
              num_frames=config.data.patch.num_frames, factor=config.train.factor,
              grid=dict(height=int(config.data.height), width=int(config.data.width),
                        num_frames=int(config.data.num_frames)),
              frame_interval_s=float(config.data.frame_interval_s),
              input_norm=config.data.input_norm, scale_outputs=bool(config.model.scale_outputs),
              map_ranges={k: float(config.data.map_ranges[k]) for k in TARGET_MAPS})


def check_workdir_spec(workdir: str, spec: dict[str, Any]) -> None:
  """Writes workdir/model.json, or checks that the one there matches: else a clear error."""
  path = os.path.join(workdir, MODEL_SPEC_FILE)
  if os.path.exists(path):
    with open(path) as f:
      found = json.load(f)
    if "grid" not in found and found == {k: v for k, v in spec.items() if k != "grid"}:
      try:  # written before runs recorded their grid: the same model, the file gains the grid
        fileio.write_json(path, spec)
      except OSError:
        pass
      return
    if found != spec:
      diff = {k: (found.get(k), spec.get(k)) for k in set(found) | set(spec) if found.get(k) != spec.get(k)}
      raise InputError(path, "the workdir holds checkpoints of another model (found, configured): "
                       + ", ".join(f"{k} {a!r} vs {b!r}" for k, (a, b) in sorted(diff.items()))
                       + "; use another --workdir")
    return
  fileio.write_json(path, spec)


def _val_loss(metrics) -> float:
  """The quality of a checkpoint (lower is better): the validation loss saved with it."""
  return float(metrics["val_loss"])


def checkpoint_manager(workdir: str, keep: int, read_only: bool = False) -> ocp.CheckpointManager:
  """Latest `keep` checkpoints plus the best (lowest validation loss), written atomically.

  orbax writes a checkpoint's metrics to disk, and ``best_step()`` ranks by them, only when the
  options carry a ``best_fn``; without it ``best_step()`` is the latest step, and a reopened
  manager (a resumed run) sees no metrics, so the keep policy deletes the best checkpoint.

  read_only: for loading; the manager neither creates nor deletes anything (a writing manager
  removes unfinished ``*.orbax-checkpoint-tmp`` folders when it opens: the checkpoint another
  process is writing at that moment).
  """
  policy = checkpoint_managers.AnyPreservationPolicy([
      checkpoint_managers.LatestN(n=keep),
      checkpoint_managers.BestN(get_metric_fn=_val_loss, reverse=True, n=1,
                                keep_checkpoints_without_metrics=False),
  ])
  quiet = _ReadOnlyNotices() if read_only else None  # two warnings per load otherwise
  if quiet:
    logging.get_absl_logger().addFilter(quiet)
  try:
    options = ocp.CheckpointManagerOptions(preservation_policy=policy, best_fn=_val_loss,
                                           best_mode="min", cleanup_tmp_directories=not read_only,
                                           read_only=read_only, create=not read_only)
    return ocp.CheckpointManager(os.path.join(os.path.abspath(workdir), "checkpoints"),
                                 options=options, item_names=(FLAT, "state", "data", "teaching"))
  finally:
    if quiet:
      logging.get_absl_logger().removeFilter(quiet)


class _ReadOnlyNotices:  # pylint: disable=too-few-public-methods
  """Drops orbax's warnings that a read-only manager is read-only (what was asked for)."""

  NOTICES = ("Given directory is read only", "CheckpointManagerOptions.read_only=True")

  def filter(self, record) -> bool:
    return not str(record.getMessage()).startswith(self.NOTICES)


# The train state is saved flat (item "flat"): its model variables (params, batch_stats) and the
# rest (step, optimiser state, a GAN's critic) each as a few 1-D arrays, the leaves of one dtype
# in tree order (:func:`_chunks`). orbax's cost is per array: a test-scale V-Net state's 870 arrays
# took 0.69 s to save and 0.56 s to load (load_variables) as the state's own tree, 0.13 s and
# 0.065 s flat; the paper-size one 1.30 s and 0.64 s against 1.17 s and 0.20 s (2-core CPU,
# medians of 4, 2026-12-04). Checkpoints written before (item "state", the tree) still load.
FLAT = "flat"
_VARIABLES = ("params", "batch_stats")


def _parts(state) -> dict[str, Any]:
  """The state as its two flat parts' trees: the model variables and the rest."""
  return {"variables": {k: getattr(state, k) for k in _VARIABLES},
          "rest": state.replace(**{k: None for k in _VARIABLES})}


CHUNK = 2 ** 20  # elements: smaller leaves are packed into flat arrays of up to this many


def _size(leaf) -> int:
  return int(np.prod(leaf.shape, dtype=np.int64))


def _chunks(leaves) -> list[str]:
  """Which flat array each leaf goes to: the leaves of one dtype, in tree order, packed into
  arrays ("float32_0", "float32_1", ...) of up to :data:`CHUNK` elements; a leaf of CHUNK or more
  is an array of its own (saved without a copy: packing large leaves only cost time, e.g. a
  paper-size V-Net's state took 1.66 s to save packed whole against 0.94 s unpacked). Decided by
  shapes and dtypes alone, so the same for a state and its abstract tree."""
  fill: dict[str, tuple[int, int]] = {}  # dtype -> (its current array's number, elements in it)
  names = []
  for leaf in leaves:
    dtype, size = np.dtype(leaf.dtype).name, _size(leaf)
    number, used = fill.get(dtype, (-1, CHUNK))
    if used + size > CHUNK:
      number, used = number + 1, 0
    fill[dtype] = (number, CHUNK if size >= CHUNK else used + size)
    names.append(f"{dtype}_{number}")
  return names


def _flatten(tree) -> dict[str, np.ndarray]:
  """tree's leaves (host arrays) concatenated in tree order into 1-D arrays (:func:`_chunks`)."""
  leaves = [np.asarray(leaf) for leaf in jax.tree.leaves(tree)]
  groups: dict[str, list[np.ndarray]] = {}
  for name, leaf in zip(_chunks(leaves), leaves):
    groups.setdefault(name, []).append(leaf.ravel())
  return {name: np.concatenate(arrays) if len(arrays) > 1 else arrays[0]
          for name, arrays in groups.items()}


def _flat_shapes(abstract) -> dict[str, np.ndarray]:
  """Empty host arrays shaped as :func:`_flatten` makes them from a tree of this structure."""
  leaves = jax.tree.leaves(abstract)
  sizes: dict[str, tuple[int, Any]] = {}
  for name, leaf in zip(_chunks(leaves), leaves):
    size, _ = sizes.get(name, (0, leaf.dtype))
    sizes[name] = (size + _size(leaf), leaf.dtype)
  return {name: np.empty((size,), dtype) for name, (size, dtype) in sizes.items()}


def _unflatten(abstract, flat: dict[str, np.ndarray]):
  """The inverse of :func:`_flatten` onto ``abstract``'s structure (host arrays, views)."""
  leaves, treedef = jax.tree.flatten(abstract)
  offsets = dict.fromkeys(flat, 0)
  out = []
  for name, leaf in zip(_chunks(leaves), leaves):
    size = _size(leaf)
    out.append(flat[name][offsets[name]:offsets[name] + size].reshape(leaf.shape))
    offsets[name] += size
  return jax.tree.unflatten(treedef, out)


def _flat_restore(parts: dict[str, Any]) -> ocp.args.PyTreeRestore:
  """The restore args of the flat state's parts named in ``parts`` (name -> abstract tree), as
  host arrays; :func:`_unflatten_parts` puts the restored arrays back on those trees."""
  target = {name: _flat_shapes(tree) for name, tree in parts.items()}
  restore_args = jax.tree.map(lambda _: ocp.RestoreArgs(restore_type=np.ndarray), target)
  return ocp.args.PyTreeRestore(item=target, restore_args=restore_args, partial_restore=True)


def _unflatten_parts(parts: dict[str, Any], restored: dict[str, Any]) -> dict[str, Any]:
  return {name: _unflatten(tree, restored[FLAT][name]) for name, tree in parts.items()}


def _is_flat(manager: ocp.CheckpointManager, step: int) -> bool:
  return os.path.isdir(os.path.join(str(manager.directory), str(step), FLAT))


def save(manager: ocp.CheckpointManager, step: int, state: TrainState, data_state: dict,
         teaching_state: dict, val_loss: float) -> None:
  """Starts writing checkpoint ``step`` (orbax finishes it in the background): the train state
  (flat, :data:`FLAT`), the input iterator's state and the loop's hooks' (:func:`restore_latest`
  reads them back), ranked by ``val_loss``.
  """
  flat = {name: _flatten(tree) for name, tree in _parts(parallel.to_host(state)).items()}
  manager.save(step, args=ocp.args.Composite(**{
      FLAT: ocp.args.PyTreeSave(flat), "data": ocp.args.JsonSave(data_state),
      "teaching": ocp.args.JsonSave(teaching_state)}), metrics={"val_loss": float(val_loss)})


def restore_latest(manager: ocp.CheckpointManager, state: TrainState, data_iterator,
                   hooks: Any = None):
  """Restores the latest checkpoint onto state's structure (host arrays for a flat checkpoint),
  the input iterator and the loop's hooks (anything with ``load_state_dict``, e.g. a
  distillation's teaching; saved as the checkpoint's "teaching" item)."""
  step = manager.latest_step()
  abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, state)
  try:
    if _is_flat(manager, step):
      parts = _parts(abstract)
      restored = manager.restore(step, args=ocp.args.Composite(**{
          FLAT: _flat_restore(parts), "data": ocp.args.JsonRestore(),
          "teaching": ocp.args.JsonRestore()}))
      parts = _unflatten_parts(parts, restored)
      restored_state = parts["rest"].replace(**parts["variables"])
    else:  # written before the flat layout
      restored = manager.restore(step, args=ocp.args.Composite(
          state=ocp.args.StandardRestore(abstract), data=ocp.args.JsonRestore(),
          teaching=ocp.args.JsonRestore()))
      restored_state = restored["state"]
  except (ValueError, KeyError, TypeError) as e:
    raise InputError(manager.directory, f"cannot restore checkpoint {step} onto this model "
                     f"(another architecture?): {' '.join(str(e).split())[:300]}") from e
  data_iterator.set_state(restored["data"])
  if hooks is not None:
    hooks.load_state_dict(restored["teaching"])
  return restored_state


def is_finished(workdir: str, config: ml_collections.ConfigDict) -> bool:
  """True when workdir holds a checkpoint at config.train.steps: nothing is left to train."""
  if not os.path.isdir(os.path.join(workdir, "checkpoints")):
    return False
  latest = checkpoint_manager(workdir, config.train.keep_checkpoints, read_only=True).latest_step()
  return latest is not None and latest >= config.train.steps


# Variables loaded by this process (see load_variables): (checkpoint folder, its modification
# time, the model spec, the devices) -> variables; the most recently used few are kept.
_LOADED: collections.OrderedDict[tuple, dict[str, Any]] = collections.OrderedDict()
LOADED_KEEP = 8  # DGKD's and PKD's four teachers, and the model being scored


def load_variables(workdir: str, config: ml_collections.ConfigDict,
                   which: str = "best") -> dict[str, Any]:
  """A trained model's variables (params, batch_stats): the "best" (by validation loss) or the
  "latest" checkpoint of workdir.

  Only the variables are read (not the optimiser state: a third of the arrays, and a checkpoint
  of any optimiser loads). The last :data:`LOADED_KEEP` loaded stay in memory, keyed by the
  checkpoint's folder, step and modification time: an experiment that distils several students
  from the same teachers, then scores them all, reads each checkpoint once.
  """
  model, tx = models.from_config(config), make_optimizer(config)
  path = os.path.join(workdir, MODEL_SPEC_FILE)
  if not os.path.exists(path):
    raise InputError(workdir, "no trained model here (no model.json)")
  spec = model_spec(config)
  check_workdir_spec(workdir, spec)
  manager = checkpoint_manager(workdir, config.train.keep_checkpoints, read_only=True)
  if which not in ("best", "latest"):
    raise InputError("checkpoint", f"must be 'best' or 'latest', got {which!r}")
  step = manager.best_step() if which == "best" else manager.latest_step()
  if step is None and manager.latest_step() is not None:  # saved without validation metrics
    step = manager.latest_step()
    logging.warning("%s: no checkpoint has a saved validation loss; using the latest, step %d",
                    workdir, step)
  if step is None:
    raise InputError(workdir, "holds no checkpoint")
  # Onto this process's devices, replicated: a checkpoint saved on another number of devices
  # (orbax's saved sharding would be a "Topology mismatch" here) loads all the same.
  mesh = parallel.make_mesh()
  folder = os.path.join(str(manager.directory), str(step))
  key = (os.path.realpath(folder), os.stat(folder).st_mtime_ns, json.dumps(spec, sort_keys=True),
         tuple(d.id for d in mesh.devices.flat))
  if key in _LOADED:
    _LOADED.move_to_end(key)
    return dict(_LOADED[key])  # the arrays are immutable; the dict is the caller's
  fresh = jax.eval_shape(lambda: init_state(config, model, tx, 0))
  parts = {"variables": _parts(fresh)["variables"]}
  try:
    if _is_flat(manager, step):
      restored = manager.restore(step, args=ocp.args.Composite(**{FLAT: _flat_restore(parts)}))
      variables = parallel.replicate(mesh, _unflatten_parts(parts, restored)["variables"])
    else:  # written before the flat layout
      sharding = parallel.replicated(mesh)
      target = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sharding),
                            parts["variables"])
      restored = manager.restore(step, args=ocp.args.Composite(state=ocp.args.PyTreeRestore(
          item=target, restore_args=ocp.checkpoint_utils.construct_restore_args(target),
          partial_restore=True)))
      variables = {k: restored["state"][k] for k in _VARIABLES}
  except (ValueError, KeyError, TypeError) as e:
    raise InputError(folder, "cannot load this checkpoint's variables onto the configured "
                     f"model: {' '.join(str(e).split())[:300]}") from e
  _LOADED[key] = variables
  while len(_LOADED) > LOADED_KEEP:
    _LOADED.popitem(last=False)
  return dict(variables)
