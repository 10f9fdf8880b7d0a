"""The window rule (defect 3): one rule at validation, test and prediction covering the series."""

import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from pkd_jax import inference, models
from pkd_jax.data import preprocess, temporal


def test_window_starts_cover_the_whole_series():
  assert inference.window_starts(40, 32, 4) == (0, 4, 8)
  assert inference.window_starts(40, 32, 3) == (0, 3, 6, 8)  # the last window ends at frame 40
  assert inference.window_starts(32, 32, 4) == (0,)
  with pytest.raises(ValueError, match="does not fit"):
    inference.window_starts(16, 32)


def test_windowed_maps_are_the_mean_of_the_maps_of_each_window():
  model = models.get_model("vnet", filters=2, num_frames=16)
  series = jax.random.normal(jax.random.key(0), (2, 24, 16, 16, 1))
  variables = model.init(jax.random.key(1), series[:, :16], train=False)
  maps = inference.windowed_maps(model, variables, series, 16, stride=4)
  per_window = [model.apply(variables, series[:, t0:t0 + 16], train=False)[0]
                for t0 in (0, 4, 8)]
  for k, v in maps.items():
    assert v.shape == (2, 16, 16)
    np.testing.assert_allclose(v, np.mean([w[k] for w in per_window], axis=0), atol=1e-5)


def test_predict_pads_the_last_batch_and_matches_windowed_maps():
  model = models.get_model("vnet", filters=2, num_frames=16)
  inputs = np.random.default_rng(0).normal(size=(3, 20, 16, 16, 1)).astype(np.float32)
  variables = model.init(jax.random.key(1), jnp.asarray(inputs[:1, :16]), train=False)
  out = inference.predict(model, variables, inputs, 16, stride=4, batch_size=2)
  expected = inference.windowed_maps(model, variables, jnp.asarray(inputs), 16, stride=4)
  for k, v in out.items():
    np.testing.assert_allclose(v, expected[k], atol=1e-5)


def test_predict_halves_a_batch_whose_program_needs_more_memory_than_is_free(monkeypatch,
                                                                              capsys):
  """XLA's memory analysis of the compiled batch against the free memory: with room for a batch
  of 1 but not 2, a batch of 4 asked for runs as batches of 1 (said on stderr), with the same
  maps; with room for none, the smallest batch runs with a warning."""
  model = models.get_model("vnet", filters=2, num_frames=16)
  inputs = np.random.default_rng(0).normal(size=(3, 20, 16, 16, 1)).astype(np.float32)
  variables = model.init(jax.random.key(1), jnp.asarray(inputs[:1, :16]), train=False)
  expected = inference.windowed_maps(model, variables, jnp.asarray(inputs), 16, stride=4)
  mesh = inference.parallel.make_mesh()
  fn = inference.predict_batch_fn(model)
  need = {b: inference.memory_need(fn.lower(variables, jnp.asarray(inputs[:1].repeat(b, 0)),
                                            model=model, window_frames=16, stride=4).compile(),
                                   mesh) for b in (1, 2, 4)}
  assert need[1] < need[2] < need[4]
  for free, batch, said in (((need[1] + need[2]) // 2, 1, "batches of 1 slice(s) instead of 4"),
                            (need[1] // 2, 1, "needs")):
    monkeypatch.setattr(inference, "_FITTED", type(inference._FITTED)())
    monkeypatch.setattr(inference.runtime, "free_memory_bytes", lambda device, f=free: f)
    out = inference.predict(model, variables, inputs, 16, stride=4, batch_size=4, mesh=mesh)
    assert said in capsys.readouterr().err
    assert list(inference._FITTED.values())[0][1] == batch
    for k, v in out.items():
      np.testing.assert_allclose(v, expected[k], atol=1e-5)
  monkeypatch.setattr(inference, "_FITTED", type(inference._FITTED)())
  monkeypatch.setattr(inference.runtime, "free_memory_bytes", lambda device: need[4])
  inference.predict(model, variables, inputs, 16, stride=4, batch_size=4, mesh=mesh)
  assert list(inference._FITTED.values())[0][1] == 4 and not capsys.readouterr().err


@pytest.mark.skipif(not os.path.exists("/proc/meminfo"), reason="Linux's /proc/meminfo")
def test_free_memory_of_a_cpu_is_the_hosts_available_memory():
  with open("/proc/meminfo", encoding="ascii") as f:
    total = int(next(line for line in f if line.startswith("MemTotal:")).split()[1]) * 1024
  cpu = jax.devices("cpu")[0]
  assert 0 < inference.runtime.free_memory_bytes(cpu) <= total


def test_slice_input_degrades_the_whole_series_after_the_input_transform():
  scan = np.random.default_rng(0).normal(size=(40, 16, 16)).astype(np.float32)
  out = inference.slice_input(scan, 8, "enhancement")
  assert out.shape == (40, 16, 16, 1)  # the whole series: every window is taken from it
  expected = temporal.degrade_np(preprocess.network_input(scan, "enhancement"), 8)
  np.testing.assert_array_equal(out[..., 0], expected)
