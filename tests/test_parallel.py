"""Data parallelism (pkd_jax.parallel): a train step on 8 devices is the single-device step.

The steps run in a subprocess (tests/parallel_step.py) with 8 forced CPU devices, which XLA reads
only before jax is imported. What "the same step" can mean in float32, measured:

* the forward pass over the global batch (the loss, its terms, the new BatchNorm statistics)
  agrees to a few float32 roundings (measured: 1e-7 relative, 6e-8 absolute): BatchNorm
  normalises with the global batch's statistics;
* the gradients agree to 1e-2 in norm per parameter array (measured at worst 8e-4 in the
  teacher's step and 5e-3 in the distillation step, both PReLU slopes: scalars whose gradient is
  a sum over every voxel; most arrays agree to 1e-6): the sums over the batch are all-reduced;
* the updated parameters agree (rtol 1e-4, atol 1e-5) wherever Adam's first update is decided by
  the gradient: it is lr * g / (|g| + eps) with eps 1e-8, so where both gradients have the same
  sign and |g| >= 1e-6 it is lr * sign(g) to 1% (measured: 86% and 88% of the elements, the
  others having tiny gradients at initialisation). Elsewhere float32 rounding decides it: where
  an element's gradient is near zero, or zero in exact arithmetic (the biases of the
  convolutions ahead of a BatchNorm: rounding noise of ~1e-10 here), the update can flip sign
  between device counts, a difference of up to 2 lr that says nothing about the parallelism; it
  is bounded by 2 lr only.

The steps use the plain lax convolutions (the forms "auto" picks on GPU): with the CPU's fast
re-formulations ("auto" on CPU), the single-device float32 gradient of this tiny network at a
batch of 8 is itself 1-2% off the float64 gradient in the deepest levels (measured), while the
8-device one stays within 1e-5 of it, so the comparison would measure that, not the sharding.
"""

import os
import pathlib
import socket
import subprocess
import sys

import grain
import jax
import numpy as np
import pytest

from configs import student as student_config
from configs import teacher as teacher_config
from pkd_jax import checkpoints, parallel, train
from pkd_jax.data import pipeline
from pkd_jax.errors import InputError
from tests.helpers import config_with

REPO = pathlib.Path(__file__).resolve().parents[1]


def _load(path) -> tuple[dict, dict]:
  """The single-device and the 8-device results that tests/parallel_step.py saved."""
  with np.load(path) as data:
    arrays = {k: data[k] for k in data.files}
  part = lambda prefix: {k[len(prefix):]: v for k, v in arrays.items() if k.startswith(prefix)}
  return part("one/"), part("eight/")


def _steps(kind: str, tmp_path) -> tuple[dict, dict]:
  out = tmp_path / f"{kind}.npz"
  result = subprocess.run([sys.executable, "-m", "tests.parallel_step", kind, str(out)],
                          cwd=REPO, capture_output=True, text=True, check=False, timeout=900)
  assert result.returncode == 0, result.stderr[-3000:]
  return _load(out)


def _assert_same_step(one: dict, eight: dict, train_config) -> dict[str, float]:
  """Asserts what the module docstring says (train_config: the steps' Adam settings); returns
  the measured differences."""
  learning_rate, b1 = train_config.learning_rate, train_config.b1
  for flags in (one, eight):
    assert flags["flag/split"] and flags["flag/replicated"]
  measured = {}
  for group, rtol, atol in (("metrics", 1e-5, 0.0), ("batch_stats", 1e-4, 1e-5)):
    keys = [k for k in one if k.startswith(group)]
    assert keys and set(keys) == {k for k in eight if k.startswith(group)}
    for k in keys:
      np.testing.assert_allclose(eight[k], one[k], rtol=rtol, atol=atol, err_msg=k)
    measured[f"{group} max abs"] = max(float(np.max(np.abs(eight[k] - one[k]))) for k in keys)
  grads = [k for k in one if k.startswith("mu")]  # Adam's first moment: (1 - b1) * gradient
  top = max(np.linalg.norm(one[k]) for k in grads)
  covered = total = 0
  worst_grad = worst_param = 0.0
  for k in grads:
    g1, g8 = one[k], eight[k]
    p1, p8 = one["params" + k[2:]], eight["params" + k[2:]]
    assert np.all(np.abs(p8 - p1) <= 2 * learning_rate), k  # Adam's first step: |update| < lr
    if np.linalg.norm(g1) <= 1e-6 * top:  # a bias BatchNorm cancels: zero but for rounding
      assert np.max(np.abs(g8 - g1)) <= 1e-6 * top, k
      continue
    error = float(np.linalg.norm(g8 - g1) / np.linalg.norm(g1))
    assert error <= 1e-2, (k, error)
    worst_grad = max(worst_grad, error)
    determined = ((np.sign(g8) == np.sign(g1)) &
                  (np.minimum(np.abs(g1), np.abs(g8)) >= (1 - b1) * 1e-6))  # |g| >= 1e-6
    np.testing.assert_allclose(p8[determined], p1[determined], rtol=1e-4, atol=1e-5, err_msg=k)
    if determined.any():
      worst_param = max(worst_param, float(np.max(np.abs(p8 - p1)[determined])))
    covered, total = covered + int(determined.sum()), total + determined.size
  assert covered >= 0.8 * total, (covered, total)
  measured.update({"gradient max relative error (norm, per parameter)": worst_grad,
                   "params max abs (gradient determined)": worst_param,
                   "share of elements whose update the gradient decides": covered / total})
  return measured


def test_train_step_on_8_devices_is_the_single_device_step(tmp_path):
  one, eight = _steps("plain", tmp_path)
  print(_assert_same_step(one, eight, teacher_config.get_config("8,test").train))
  # The 8-device process saved its new state: this one-device process loads it (prediction and
  # evaluation on another machine; orbax refused with "Topology mismatch" before).
  config = config_with(teacher_config.get_config, "8,test")
  loaded = checkpoints.load_variables(str(tmp_path / "plain.npz.run"), config, "latest")
  flat = jax.tree_util.tree_flatten_with_path(loaded["params"])[0]
  assert flat
  for path, leaf in flat:
    np.testing.assert_array_equal(np.asarray(leaf), eight[f"params{jax.tree_util.keystr(path)}"])


@pytest.mark.extended
def test_distillation_step_on_8_devices_is_the_single_device_step(tmp_path):
  # Two stacked teachers: their inputs (K, B, ...) are split along their second axis.
  one, eight = _steps("kd", tmp_path)
  assert "metrics['kd']" in one
  print(_assert_same_step(one, eight, student_config.get_config("pkd,test").train))


@pytest.mark.extended
def test_validation_and_prediction_on_8_devices_match_one_device(tmp_path):
  # The last batches are padded to a multiple of 8 and the padding dropped or weighted 0.
  one, eight = _steps("evaluate", tmp_path)
  assert set(one) == set(eight) and "metrics['loss']" in one and "maps['tmax']" in one
  assert one["maps['tmax']"].shape == (3, 48, 48)
  for k in one:  # a forward pass in evaluation mode: each slice computed alone
    np.testing.assert_allclose(eight[k], one[k], rtol=1e-5, atol=1e-6, err_msg=k)


@pytest.mark.extended
def test_two_processes_feeding_their_shares_take_the_single_device_step(tmp_path):
  # jax.distributed on this machine: 2 processes x 4 CPU devices, each loading its share of the
  # batch through the pipeline (checked against the unsharded pipeline's rows in the script).
  with socket.socket() as s:
    s.bind(("localhost", 0))
    port = s.getsockname()[1]
  out, logs = tmp_path / "multihost.npz", [tmp_path / f"process{i}.log" for i in range(2)]
  processes = []
  for i, log in enumerate(logs):
    with open(log, "w") as f:  # a file: a full pipe would stall a process the other waits for
      processes.append(subprocess.Popen(
          [sys.executable, "-m", "tests.parallel_step", "multihost", str(out)], cwd=REPO,
          stdout=f, stderr=subprocess.STDOUT,
          env=dict(os.environ, JAX_COORDINATOR_ADDRESS=f"localhost:{port}",
                   JAX_NUM_PROCESSES="2", JAX_PROCESS_ID=str(i))))
  try:
    for p in processes:
      p.wait(timeout=900)
  finally:
    for p in processes:
      p.kill()
  for p, log in zip(processes, logs):
    assert p.returncode == 0, log.read_text()[-3000:]
  one, eight = _load(out)
  print(_assert_same_step(one, eight, teacher_config.get_config("8,test").train))


def test_process_shares_of_the_training_stream_make_up_the_unsharded_batches():
  config = config_with(teacher_config.get_config, "8,test", data__batch_size=4)
  iterator = lambda shard=None: pipeline.make_iterator(pipeline.make_dataset_from_config(
      config.data, "train", config.seed, shard=shard))
  whole = iterator()
  shares = [iterator(grain.sharding.ShardOptions(i, 2)) for i in range(2)]
  for _ in range(3):  # over an epoch boundary (4 training slices)
    batch, parts = next(whole), [next(s) for s in shares]
    for k in ("scans", "tmax", "origin"):  # the same examples, crops included
      for i, part in enumerate(parts):
        assert part[k].shape[0] == 2
        np.testing.assert_array_equal(part[k], batch[k][i::2], err_msg=k)
  with pytest.raises(InputError, match="config.data.batch_size.*3 processes"):
    pipeline.make_dataset_from_config(config.data, "train", config.seed,
                                      shard=grain.sharding.ShardOptions(0, 3))


def test_batches_are_padded_split_and_gathered_back():
  mesh = parallel.make_mesh()  # the test process's devices (one on CPU)
  devices = parallel.num_devices(mesh)
  batch = {"x": np.arange(3 * 2, dtype=np.float32).reshape(3, 2),
           "teacher_x": np.zeros((2, 3, 4), np.float32)}
  padded, size = parallel.pad_batch(batch, 4, axes=train.BATCH_AXES)
  assert size == 3 and padded["x"].shape == (4, 2) and padded["teacher_x"].shape == (2, 4, 4)
  np.testing.assert_array_equal(padded["x"][:3], batch["x"])
  assert not padded["x"][3:].any()
  placed = parallel.shard_batch(mesh, padded, axes=train.BATCH_AXES, global_batch=True)
  assert placed["teacher_x"].sharding.spec == parallel.batch_sharding(mesh, 1).spec
  np.testing.assert_array_equal(parallel.to_host(placed)["x"], padded["x"])
  with pytest.raises(ValueError, match="disagree on the batch size"):
    parallel.pad_batch({"x": np.zeros(3), "y": np.zeros(4)}, 2)
  if devices > 1:
    with pytest.raises(ValueError, match="does not split"):
      parallel.shard_batch(mesh, np.zeros(devices + 1), global_batch=True)


def test_batch_size_that_does_not_divide_by_the_devices_is_a_clear_error(monkeypatch):
  monkeypatch.setattr(train.jax, "device_count", lambda: 4)
  with pytest.raises(InputError, match="config.data.batch_size.*6 does not divide by the "
                                       "number of devices, 4"):
    train.check_config(config_with(teacher_config.get_config, "8,test", data__batch_size=6))
  train.check_config(config_with(teacher_config.get_config, "8,test", data__batch_size=8))
