"""The grain input pipeline: same crop at every factor, restorable iterator, disjoint splits."""

import dataclasses

import numpy as np
import pytest
from absl import flags

from configs import base
from pkd_jax.data import nifti, phantom, pipeline, preprocess, temporal
from pkd_jax.errors import InputError

CONFIG = phantom.PhantomConfig(height=32, width=32, num_frames=40, num_slices=2,
                               frame_interval_s=(1.5, 1.5))  # on the time grid
PATCH = pipeline.PatchSpec(16, 16, 32)
FACTORS = (16, 4, 1)


def _dataset(num_cases=3, batch_size=2, seed=0, train=True, source=None):
  source = source or pipeline.PhantomSlices(CONFIG, seed=1, split="train", num_cases=num_cases)
  return pipeline.make_dataset(source, factors=FACTORS, patch=PATCH, batch_size=batch_size,
                               seed=seed, train=train), source


def test_batch_shapes_and_same_crop_at_every_factor():
  dataset, source = _dataset()
  batch = next(pipeline.make_iterator(dataset))
  assert batch["scans"].shape == (2, 3, 32, 16, 16) and batch["scans"].dtype == np.float32
  for key in ("tmax", "cbv", "cbf", "brain_mask"):
    assert batch[key].shape == (2, 16, 16)
  for example in range(2):
    case_pos, slice_index, t0, y0, x0 = batch["origin"][example]
    record = source[case_pos * CONFIG.num_slices + slice_index]
    for k, factor in enumerate(FACTORS):
      # Degrade the whole 40-frame slice first, then crop: what the teacher at `factor` sees.
      full = temporal.degrade_np(record["scan"], factor)
      np.testing.assert_array_equal(batch["scans"][example, k],
                                    full[t0:t0 + 32, y0:y0 + 16, x0:x0 + 16])
    np.testing.assert_array_equal(batch["tmax"][example], record["tmax"][y0:y0 + 16, x0:x0 + 16])
  model_input = pipeline.scans_for_factor(batch, FACTORS, 4)
  assert model_input.shape == (2, 32, 16, 16, 1)
  np.testing.assert_array_equal(model_input[..., 0], batch["scans"][:, 1])


def test_random_offsets_change_only_their_factor_and_use_its_own_first_frame():
  source = pipeline.PhantomSlices(CONFIG, seed=1, split="train", num_cases=3)
  def batches(offset_factors, train=True, count=6):
    dataset = pipeline.make_dataset(source, factors=FACTORS, patch=PATCH, batch_size=2, seed=0,
                                    train=train, input_norm="enhancement",
                                    random_offset_factors=offset_factors)
    iterator = pipeline.make_iterator(dataset)
    return [next(iterator) for _ in range(count)]
  plain, offset = batches(()), batches((16,))
  assert "offsets" not in plain[0]
  drawn = np.concatenate([b["offsets"] for b in offset])
  assert (drawn[:, 1:] == 0).all() and (drawn[:, 0] < 16).all()
  assert len(set(drawn[:, 0])) > 3  # 12 draws of 16 offsets
  for want, got in zip(plain, offset):
    np.testing.assert_array_equal(got["origin"], want["origin"])  # the same crops
    np.testing.assert_array_equal(got["scans"][:, 1:], want["scans"][:, 1:])  # 1/4, full
    for example in range(2):
      case_pos, slice_index, t0, y0, x0 = got["origin"][example]
      record = source[case_pos * CONFIG.num_slices + slice_index]
      k = int(got["offsets"][example, 0])
      series = record["scan"][temporal.held_frame_indices(40, 16, k)]
      expected = preprocess.network_input(series, "enhancement")  # the baseline is frame k
      np.testing.assert_allclose(got["scans"][example, 0],
                                 expected[t0:t0 + 32, y0:y0 + 16, x0:x0 + 16], rtol=1e-6)
  # Evaluation keeps offset 0; a factor that is not in the example is a clear error.
  assert "offsets" not in batches((16,), train=False, count=1)[0]
  with pytest.raises(InputError, match="random_offset_factors.*not among"):
    pipeline.make_dataset(source, factors=FACTORS, patch=PATCH, batch_size=2, seed=0,
                          random_offset_factors=(8,))


def test_restored_iterator_yields_the_same_next_batches():
  dataset, _ = _dataset()
  iterator = pipeline.make_iterator(dataset)
  for _ in range(4):  # past the first epoch (6 slices, 3 batches)
    next(iterator)
  state = iterator.get_state()
  expected = [next(iterator) for _ in range(3)]
  resumed = pipeline.make_iterator(_dataset()[0])
  resumed.set_state(state)
  for want in expected:
    got = next(resumed)
    for key in want:
      np.testing.assert_array_equal(got[key], want[key])


def test_epochs_cover_every_slice_once_in_a_new_order():
  dataset, source = _dataset(num_cases=3, batch_size=1)
  iterator = pipeline.make_iterator(dataset)
  epochs = [[tuple(next(iterator)["origin"][0, :2]) for _ in range(len(source))] for _ in range(2)]
  everything = {(c, s) for c in range(3) for s in range(2)}
  assert set(epochs[0]) == set(epochs[1]) == everything
  assert len(set(epochs[0])) == len(source)
  assert epochs[0] != epochs[1]


def test_validation_pass_is_ordered_and_complete():
  dataset, source = _dataset(num_cases=2, batch_size=3, train=False)
  batches = list(dataset)
  origins = np.concatenate([b["origin"] for b in batches])
  assert [tuple(o[:2]) for o in origins] == [(c, s) for c in range(2) for s in range(2)]
  assert (origins[:, 2:] == [4, 8, 8]).all()  # centre crops


def test_phantom_splits_are_disjoint():
  indices = {split: set(pipeline.PhantomSlices(CONFIG, 0, split, 500).case_indices)
             for split in pipeline.SPLIT_OFFSETS}
  assert not indices["train"] & indices["validation"]
  assert not indices["train"] & indices["test"]
  assert not indices["validation"] & indices["test"]
  first = {split: pipeline.PhantomSlices(CONFIG, 0, split, 1)[0]["scan"] for split in indices}
  assert not np.array_equal(first["train"], first["validation"])


def test_cached_phantom_sources_of_the_same_cases_share_their_slices(monkeypatch):
  calls = []
  generate = phantom.generate_slice
  monkeypatch.setattr(phantom, "generate_slice", lambda *a, **k: calls.append(a[2:4]) or
                      generate(*a, **k))
  config = dataclasses.replace(CONFIG, height=16, width=16)
  first = pipeline.PhantomSlices(config, 5, "train", 2, cache=True)
  record = first[1]
  again = pipeline.PhantomSlices(config, 5, "train", 2, cache=True)
  assert again[1] is record and len(calls) == 1  # generated once, by the first source
  other_seed = pipeline.PhantomSlices(config, 6, "train", 2, cache=True)
  uncached = pipeline.PhantomSlices(config, 5, "train", 2)
  assert not np.array_equal(other_seed[1]["scan"], record["scan"])
  np.testing.assert_array_equal(uncached[1]["scan"], record["scan"])
  assert len(calls) == 3


def test_nifti_source_reads_written_phantom_and_checks_frames(tmp_path):
  cases = [phantom.generate_case(CONFIG, 3, i) for i in range(2)]
  nifti.write_isles_dataset(cases, tmp_path / "train")
  source = pipeline.NiftiSlices(str(tmp_path / "train"), geometry=pipeline.preprocess.Geometry(32, 32, 40))
  assert len(source) == 4
  batch = next(pipeline.make_iterator(_dataset(source=source)[0]))
  assert batch["scans"].shape == (2, 3, 32, 16, 16)
  assert batch["brain_mask"].sum() > 0  # estimated: ISLES has no brain mask
  short = dataclasses.replace(CONFIG, num_frames=10)
  nifti.write_isles_dataset([phantom.generate_case(short, 3, 0)], tmp_path / "short")
  short_source = pipeline.NiftiSlices(str(tmp_path / "short"),
                                      geometry=pipeline.preprocess.Geometry(32, 32, 40))
  with pytest.raises(InputError, match=r"CT_4DPWI.*10 frames are too few for temporal factor 16"):
    _dataset(source=short_source)


def test_patch_larger_than_slice_is_a_clear_error():
  source = pipeline.PhantomSlices(CONFIG, 0, "train", 1)
  with pytest.raises(InputError, match="patch"):
    pipeline.make_dataset(source, factors=FACTORS, patch=pipeline.PatchSpec(64, 64, 32),
                          batch_size=1, seed=0)


def test_config_builds_pipeline_and_rejects_unknown_source():
  config = base.get_config()
  with config.unlocked():
    config.data.phantom.height = config.data.phantom.width = 32
    config.data.phantom.num_slices = 1
    config.data.patch.height = config.data.patch.width = 16
    config.data.num_cases.train = 2
  assert config.data.height == 32  # the preprocessing geometry follows the phantom's
  batch = next(pipeline.make_iterator(pipeline.make_dataset_from_config(config.data, "train", 0)))
  assert batch["scans"].shape == (2, 5, 32, 16, 16)
  with config.unlocked():
    config.data.source = "dicom"
  with pytest.raises(InputError, match="unknown source 'dicom'"):
    pipeline.make_source(config.data, "train")


@pytest.mark.slow
def test_worker_processes_give_the_same_batches():
  flags.FLAGS.mark_as_parsed()  # grain's worker processes read absl flags
  dataset, _ = _dataset()
  serial = pipeline.make_iterator(dataset)
  parallel = pipeline.make_iterator(dataset, num_workers=2)
  for _ in range(4):
    want, got = next(serial), next(parallel)
    for key in want:
      np.testing.assert_array_equal(got[key], want[key])
