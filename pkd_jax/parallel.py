"""Data parallelism through jax.sharding: one device mesh over a 'data' axis, one code path.

Every jitted step (train, validation, prediction) runs on global arrays laid out over a mesh of
all devices (of all processes): the batch is split along its batch axis, one slice per device,
and everything else (parameters, optimiser state, BatchNorm statistics, teachers' variables, the
perceptual network) is replicated. The steps themselves know nothing of this: under ``jax.jit``
XLA's SPMD partitioner turns the global-view program into per-device programs, and a reduction
over the sharded batch axis (the losses' means, BatchNorm's batch mean and variance, the sum of
gradients over examples) becomes a per-device partial reduction followed by an all-reduce. So
BatchNorm normalises with the statistics of the whole global batch, as on one device, and one
step on N devices equals the single-device step on the same global batch up to the order of
float32 additions (tests/test_parallel.py measures it). A single device is a mesh of one: there
is no separate single-device branch. See the JAX guide "Distributed arrays and automatic
parallelization" (https://docs.jax.dev/en/latest/parallel.html) and
``jax.make_array_from_process_local_data``'s documentation.

The mesh's axis is of type ``AxisType.Auto`` (``jax.make_mesh`` defaults to ``Explicit`` in
this JAX): in auto mode the partitioner propagates the inputs' shardings through the program
itself, which is all plain data parallelism needs; explicit mode would carry shardings in the
types of every intermediate and needs ``jax.set_mesh`` around the calls.

Several processes (hosts): :func:`initialize_distributed` connects them
(``jax.distributed.initialize``) before JAX does anything else; the mesh then spans every
process's devices. Arrays are made from process-local numpy data with
``jax.make_array_from_process_local_data``:

* training batches: each process loads only its share of the global batch (the input pipeline
  shards its example stream by process, grain's ``ShardByJaxProcess``) and :func:`shard_batch`
  assembles the global batch from the shares;
* validation and prediction batches: every process holds the whole global batch (they are read
  in order, the same on every process) and :func:`shard_batch` with ``global_batch=True`` puts
  on each device its rows only;
* replicated values (:func:`replicate`) must be the same on every process, as an initialisation
  from one seed or a restored checkpoint is.

Results to read on the host go through :func:`to_host`, which gathers the rows other processes
hold when an array is split over processes.
"""

from __future__ import annotations

import os
from typing import Any, Mapping

import jax
import numpy as np
from jax.sharding import AxisType, NamedSharding, PartitionSpec

DATA_AXIS = "data"


def initialize_distributed() -> None:
  """Connects the processes of a multi-host run (``jax.distributed.initialize``).

  Must run before any JAX computation. Cluster managers JAX detects (Slurm, Open MPI, Cloud TPU,
  Kubernetes) need nothing else; otherwise set ``JAX_COORDINATOR_ADDRESS`` (host:port of process
  0, read by JAX), and ``JAX_NUM_PROCESSES`` and ``JAX_PROCESS_ID`` (read here) on every process.
  """
  count, index = os.environ.get("JAX_NUM_PROCESSES"), os.environ.get("JAX_PROCESS_ID")
  jax.distributed.initialize(num_processes=None if count is None else int(count),
                             process_id=None if index is None else int(index))


def make_mesh(devices=None) -> jax.sharding.Mesh:
  """A 1D mesh over ``devices`` (default: all devices of all processes), its axis 'data'."""
  devices = jax.devices() if devices is None else list(devices)
  return jax.make_mesh((len(devices),), (DATA_AXIS,), axis_types=(AxisType.Auto,),
                       devices=devices)


def num_devices(mesh: jax.sharding.Mesh) -> int:
  """Devices along the mesh's data axis: the global batch splits into this many parts."""
  return mesh.shape[DATA_AXIS]


def batch_sharding(mesh: jax.sharding.Mesh, batch_axis: int = 0) -> NamedSharding:
  """Split along ``batch_axis`` over the data axis, the other axes whole."""
  return NamedSharding(mesh, PartitionSpec(*([None] * batch_axis), DATA_AXIS))


def replicated(mesh: jax.sharding.Mesh) -> NamedSharding:
  """A whole copy on every device."""
  return NamedSharding(mesh, PartitionSpec())


def replicate(mesh: jax.sharding.Mesh, tree: Any) -> Any:
  """Every array leaf of ``tree`` replicated over the mesh (leaves already so are kept as they
  are). The values must be the same on every process (one seed's initialisation, a checkpoint).

  In one process this is one ``jax.device_put`` of the whole tree (device to device; leaves
  already on the mesh's one device may be returned without a copy). With several processes the
  leaves go through host memory: ``jax.device_put`` cannot move an array committed to one device
  (a restored or jit-made one) onto devices of other processes. On a 2-core CPU a fresh V-Net
  train state's 870 arrays took 68 ms by the host and 24 ms by ``device_put`` (medians of 5)."""
  sharding = replicated(mesh)
  if jax.process_count() == 1:
    return jax.device_put(tree, sharding)

  def place(x):
    if isinstance(x, jax.Array) and x.sharding == sharding:
      return x
    x = np.asarray(x)
    return jax.make_array_from_process_local_data(sharding, x, x.shape)

  return jax.tree.map(place, tree)


def shard_batch(mesh: jax.sharding.Mesh, batch: Mapping[str, np.ndarray] | np.ndarray, *,
                axes: Mapping[str, int] | None = None, global_batch: bool = False):
  """A batch (a dict of arrays, or one array) as global arrays split along their batch axis.

  axes: the batch axis of a key when it is not 0 (the train step's ``teacher_x``,
  (K, B, ...), has it at 1). global_batch=False: ``batch`` is this process's share of the
  global batch (all of it with one process); True: every process holds the whole global batch
  and each device takes its rows from it. The global batch's size must divide by the number of
  devices (:func:`pad_batch` pads it).
  """
  axes = dict(axes or {})
  count = num_devices(mesh) if global_batch else len(mesh.local_devices)

  def place(x, axis):
    x = np.asarray(x)
    if x.shape[axis] % count:
      raise ValueError(f"a batch of {x.shape[axis]} does not split over {count} devices")
    return jax.make_array_from_process_local_data(batch_sharding(mesh, axis), x,
                                                  x.shape if global_batch else None)

  if not isinstance(batch, Mapping):
    return place(batch, 0)
  return {k: place(v, axes.get(k, 0)) for k, v in batch.items()}


def pad_batch(batch: Mapping[str, np.ndarray], multiple: int, *,
              axes: Mapping[str, int] | None = None) -> tuple[dict[str, np.ndarray], int]:
  """(the batch with zero rows appended along each key's batch axis up to a multiple of
  ``multiple``, the number of real rows); the caller drops or masks the padding."""
  axes = dict(axes or {})
  sizes = {np.shape(v)[axes.get(k, 0)] for k, v in batch.items()}
  if len(sizes) != 1:
    raise ValueError(f"the batch's arrays disagree on the batch size: {sorted(sizes)}")
  size = sizes.pop()
  pad = -size % multiple

  def padded(x, axis):
    x = np.asarray(x)
    if not pad:
      return x
    widths = [(0, 0)] * x.ndim
    widths[axis] = (0, pad)
    return np.pad(x, widths)

  return {k: padded(v, axes.get(k, 0)) for k, v in batch.items()}, size


def to_host(tree: Any) -> Any:
  """Numpy copies of a tree's arrays; an array split over several processes is gathered first
  (``multihost_utils.process_allgather``, which every process must call)."""
  from jax.experimental import multihost_utils  # pylint: disable=import-outside-toplevel

  def get(x):
    if isinstance(x, jax.Array) and not x.is_fully_addressable and not x.is_fully_replicated:
      return np.asarray(multihost_utils.process_allgather(x, tiled=True))
    return np.asarray(jax.device_get(x))

  return jax.tree.map(get, tree)
