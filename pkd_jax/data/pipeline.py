"""The input pipeline (grain): slices -> degrade at several factors -> random patch -> batches.

A *record* is one axial slice of one case. Sources give random access to preprocessed slices
(:class:`PhantomSlices` generates them on demand, :class:`NiftiSlices` reads cases from disk). The
dataset shuffles records (a new order every epoch), then, per record and with a random generator
grain derives from (seed, record position), draws one crop: rows [y0, y0 + h), columns
[x0, x0 + w) and frames [t0, t0 + L) of the 40-frame series. For each temporal factor n the
sample-and-hold degradation is applied to the whole series first and the crop taken afterwards,
so every factor of one example shows the same patch: a teacher and its student see the same crop.

An example is a dict of numpy arrays:

* ``scans``: (K, L, h, w) float32, normalised intensities (preprocess.normalise_hu), one per factor
  in the order of ``factors``;
* ``tmax``, ``cbv``, ``cbf``: (h, w) float32 ground-truth maps in physical units;
* ``brain_mask``: (h, w) float32, 1 inside the brain;
* ``origin``: (5,) int32, (case position, slice, t0, y0, x0), where the patch came from.

Batches stack examples on a new leading axis. The iterator is grain's ``DatasetIterator``: its
``get_state()`` / ``set_state()`` save and restore the position, so a resumed run sees exactly the
batches an uninterrupted run would.

Phantom splits are disjoint by construction: split s uses case indices SPLIT_OFFSETS[s] + i.
"""

from __future__ import annotations

import collections
import dataclasses
import os
from typing import Any, Sequence

import grain
import numpy as np

from pkd_jax.data import nifti, phantom, preprocess, temporal
from pkd_jax.data.case import TARGET_MAPS
from pkd_jax.errors import InputError

SPLIT_OFFSETS = {"train": 0, "validation": 1_000_000, "test": 2_000_000}


def _split_offset(split: str) -> int:
  if split not in SPLIT_OFFSETS:
    raise ValueError(f"unknown split {split!r}; valid splits: {sorted(SPLIT_OFFSETS)}")
  return SPLIT_OFFSETS[split]


# (phantom config, data seed, case indices) -> {record: slice record}: PhantomSlices' caches.
_SHARED_CACHES: dict[tuple, dict[int, dict[str, Any]]] = {}


class PhantomSlices:
  """Random access to the slices of phantom cases of one split, generated on demand.

  Record i is slice i % S of case SPLIT_OFFSETS[split] + i // S. The phantom is generated at the
  preprocessing geometry, on its time grid (config.frame_interval_s a single value), so
  preprocessing reduces to normalisation.
  """

  def __init__(self, config: phantom.PhantomConfig, seed: int, split: str, num_cases: int,
               cache: bool = False):
    self.config, self.seed, self.num_cases = config, seed, num_cases
    self.case_indices = [_split_offset(split) + i for i in range(num_cases)]
    low, high = config.frame_interval_s
    if low != high:
      raise ValueError(f"phantom slices for the network need one frame interval (the time grid), "
                       f"got the range {config.frame_interval_s}")
    self.geometry = preprocess.Geometry(config.height, config.width, config.num_frames, low)
    self._params: dict[int, dict[str, Any]] = {}  # case index -> case_parameters (small)
    # Sources of the same cases share one cache in a process: the units of an experiment each
    # made their own and generated their ~1,000 training slices again (13 ms each at the mini
    # scale: ~14 s a unit, 37 units).
    self._cache: dict[int, dict[str, np.ndarray]] | None = (
        _SHARED_CACHES.setdefault((config, seed, tuple(self.case_indices)), {}) if cache else None)

  def __getstate__(self):  # sent to grain's worker processes without what was generated
    return dict(self.__dict__, _params={}, _cache=None if self._cache is None else {})

  def __len__(self) -> int:
    return self.num_cases * self.config.num_slices

  def check_factors(self, factors: Sequence[int]) -> None:
    for n in factors:
      temporal.check_factor(n, self.config.num_frames, f"phantom frames ({n})")

  def case_info(self, case_pos: int) -> dict[str, Any]:
    """Frame times (s) and the true AIF (enhancement, HU) of a case."""
    index = self.case_indices[case_pos]
    params = self._params.get(index) or phantom.case_parameters(self.config, self.seed, index)
    times = phantom.frame_times_s(self.config, params)
    return {"frame_times_s": times, "aif_hu": phantom.arterial_curve(times, params)}

  def voxel_ml(self, case_pos: int) -> float:
    """Volume of one voxel of a case in ml."""
    del case_pos  # the same for every phantom case
    return self.config.pixel_mm ** 2 * self.config.slice_thickness_mm / 1000.0

  def __getitem__(self, record: int) -> dict[str, Any]:
    if self._cache is not None and record in self._cache:
      return self._cache[record]
    case_pos, slice_index = divmod(int(record), self.config.num_slices)
    index = self.case_indices[case_pos]
    if index not in self._params:
      self._params[index] = phantom.case_parameters(self.config, self.seed, index)
    sl = phantom.generate_slice(self.config, self.seed, index, slice_index, self._params[index])
    out = _slice_record(sl["scan_hu"], {k: sl[k] for k in TARGET_MAPS}, sl["brain"], case_pos,
                        slice_index)
    if self._cache is not None:
      self._cache[record] = out
    return out


class NiftiSlices:
  """Random access to the slices of NIfTI cases (any layout of pkd_jax.data.nifti), preprocessed.

  Every case folder under root must hold its scan and the tmax, cbv and cbf maps, checked here
  before anything trains (an error names each folder lacking one), unless excluded by name
  (exclude, as nifti.find_cases'). Cases are read and preprocessed on first use; the most recent
  few are kept in memory.
  """

  def __init__(self, root: str, layout: str = "isles2018", patterns: dict[str, str] | None = None,
               geometry: preprocess.Geometry = preprocess.Geometry(), max_cached_cases: int = 4,
               exclude: Sequence[str] = ()):
    self.case_dirs = nifti.find_cases(root, layout, patterns, exclude=exclude, require_maps=True)
    self.layout, self.patterns, self.geometry = layout, patterns, geometry
    self.max_cached_cases = max_cached_cases
    self._cases: collections.OrderedDict = collections.OrderedDict()  # position -> Case, LRU
    self.records, self._scan_frames = [], []  # (case position, slice); (scan path, raw frames)
    for pos, case_dir in enumerate(self.case_dirs):
      path, (_, _, num_slices, num_frames) = nifti.scan_shape(case_dir, layout, patterns)
      self.records += [(pos, s) for s in range(num_slices)]
      self._scan_frames.append((path, num_frames))

  def check_factors(self, factors: Sequence[int]) -> None:
    """Every scan, as acquired (before resampling), must keep two frames at every factor."""
    for path, num_frames in self._scan_frames:
      for n in factors:
        temporal.check_factor(n, num_frames, str(path))

  def __getstate__(self):  # sent to grain's worker processes without the loaded cases
    return dict(self.__dict__, _cases=collections.OrderedDict())

  def case_info(self, case_pos: int) -> dict[str, Any]:
    """Frame times (s) of a case after preprocessing; its AIF is unknown (None)."""
    return {"frame_times_s": self._load(case_pos).frame_times_s, "aif_hu": None}

  def voxel_ml(self, case_pos: int) -> float:
    """Volume of one voxel of a case in ml, after preprocessing."""
    dz, dy, dx = self._load(case_pos).spacing_mm
    return dz * dy * dx / 1000.0

  def _load(self, case_pos: int):
    if case_pos in self._cases:
      self._cases.move_to_end(case_pos)
    else:
      case = nifti.read_case(self.case_dirs[case_pos], self.layout, self.patterns)
      self._cases[case_pos] = preprocess.preprocess_case(case, self.geometry)
      if len(self._cases) > self.max_cached_cases:
        self._cases.popitem(last=False)
    return self._cases[case_pos]

  def __len__(self) -> int:
    return len(self.records)

  def __getitem__(self, record: int) -> dict[str, Any]:
    case_pos, s = self.records[int(record)]
    case = self._load(case_pos)
    return _slice_record(case.scan_hu[s], {k: case.maps[k][s] for k in TARGET_MAPS},
                         case.masks["brain"][s], case_pos, s)


def _slice_record(scan_hu, maps, brain, case_pos, slice_index) -> dict[str, Any]:
  return dict(scan=preprocess.normalise_hu(scan_hu), brain_mask=brain.astype(np.float32),
              case=case_pos, slice=slice_index, **{k: v.astype(np.float32) for k, v in maps.items()})


@dataclasses.dataclass(frozen=True)
class PatchSpec:
  """The training patch: the paper's random 128 x 128 x 32 crops of the 256 x 256 x 40 slices."""

  height: int = 128
  width: int = 128
  num_frames: int = 32


class CropAndDegrade(grain.transforms.RandomMap):
  """Degrades each slice at every factor and crops the same patch from all of them.

  random_offset_factors: factors whose frames start at a random sampling offset k < n, drawn
  per example when random_crop is on (training), as "offsets" (one per factor, 0 for the
  others); the input transform then uses the degraded series' own first frame, frame k, since
  frame 0 was not acquired (pkd_jax.data.temporal).
  """

  def __init__(self, factors: Sequence[int], patch: PatchSpec | None, random_crop: bool = True,
               input_norm: str = "hu", random_offset_factors: Sequence[int] = ()):
    self.factors, self.patch, self.random_crop = tuple(factors), patch, random_crop
    self.input_norm = input_norm
    unknown = set(random_offset_factors) - set(self.factors)
    if unknown:
      raise InputError("config.data.random_offset_factors",
                       f"{sorted(unknown)} not among the factors {self.factors}")
    self.random_offset_factors = tuple(random_offset_factors) if random_crop else ()

  def random_map(self, record: dict[str, Any], rng: np.random.Generator) -> dict[str, Any]:
    # The input transform is frame-wise given frame 0, so it commutes with the degradation.
    scan = preprocess.network_input(record["scan"], self.input_norm)
    t, h, w = scan.shape
    ph, pw, pt = (h, w, t) if self.patch is None else (self.patch.height, self.patch.width,
                                                      self.patch.num_frames)
    if self.random_crop:
      t0, y0, x0 = (int(rng.integers(0, n - p + 1)) for n, p in ((t, pt), (h, ph), (w, pw)))
    else:
      t0, y0, x0 = (t - pt) // 2, (h - ph) // 2, (w - pw) // 2
    window = scan[:, y0:y0 + ph, x0:x0 + pw]
    offsets = [int(rng.integers(0, n)) if n in self.random_offset_factors else 0
               for n in self.factors]
    # Crop of the degraded series: frame t0 + i of the crop holds input frame held[t0 + i].
    scans = []
    for n, k in zip(self.factors, offsets):
      held = temporal.held_frame_indices(t, n, k)
      if k:  # the input transform on the series as acquired, whose first frame is frame k
        series = preprocess.network_input(record["scan"][held, y0:y0 + ph, x0:x0 + pw],
                                          self.input_norm)
        scans.append(series[t0:t0 + pt])
      else:
        scans.append(window[held[t0:t0 + pt]])
    out = {k: record[k][y0:y0 + ph, x0:x0 + pw] for k in (*TARGET_MAPS, "brain_mask")}
    out["scans"] = np.stack(scans)
    out["origin"] = np.array([record["case"], record["slice"], t0, y0, x0], np.int32)
    if self.random_offset_factors:
      out["offsets"] = np.array(offsets, np.int32)
    return out


def make_dataset(source, *, factors: Sequence[int], patch: PatchSpec | None, batch_size: int,
                 seed: int, train: bool = True, input_norm: str = "hu",
                 shard: grain.sharding.ShardOptions | None = None,
                 random_offset_factors: Sequence[int] = ()) -> grain.MapDataset:
  """The batched dataset over a slice source.

  train=True: shuffled (a new order every epoch), repeated forever, random crops, full batches;
  random_offset_factors: factors trained on a random sampling offset (:class:`CropAndDegrade`).
  train=False: one pass in order, centre crops (or whole slices with patch=None), the last
  partial batch kept, offset 0.

  shard (training only; several processes feeding one global batch, pkd_jax.parallel): shard
  ``i`` of ``n`` keeps the examples at positions i, i + n, i + 2n, ... of the shuffled, cropped
  example stream and batches them ``batch_size / n`` at a time. The crops are drawn from the
  examples' positions in the whole stream, so batch k of the n shards together holds exactly
  the examples (and crops) of batch k of the unsharded dataset, in another order. None (or
  one shard): the whole stream.
  """
  source.check_factors(factors)
  geometry = source.geometry
  if patch is not None and (patch.height > geometry.height or patch.width > geometry.width or
                            patch.num_frames > geometry.num_frames):
    raise InputError("patch", f"{patch} does not fit in the preprocessed slices {geometry}")
  if len(source) == 0:
    raise ValueError("the data source has no slices")
  ds = grain.MapDataset.source(source)
  if train:
    ds = ds.seed(seed).shuffle().repeat(None)
  ds = ds.random_map(CropAndDegrade(factors, patch, random_crop=train, input_norm=input_norm,
                                    random_offset_factors=random_offset_factors), seed=seed)
  if shard is not None and shard.shard_count > 1:
    if not train:
      raise ValueError("only the training stream is sharded: every process reads whole "
                       "evaluation batches")
    if batch_size % shard.shard_count:
      raise InputError("config.data.batch_size", f"{batch_size} does not divide by the "
                       f"{shard.shard_count} processes that load a share of each batch")
    ds = ds[shard.shard_index::shard.shard_count]
    batch_size //= shard.shard_count
  return ds.batch(batch_size, drop_remainder=train)


def make_iterator(dataset: grain.MapDataset, num_workers: int = 0,
                  prefetch_buffer_size: int = 2) -> grain.DatasetIterator:
  """A checkpointable iterator; num_workers > 0 prepares batches in that many processes.

  Worker processes need absl flags parsed (run under absl.app.run), a grain requirement.
  """
  ds = dataset.to_iter_dataset(grain.ReadOptions(num_threads=0, prefetch_buffer_size=0))
  if num_workers > 0:
    ds = ds.mp_prefetch(grain.MultiprocessingOptions(num_workers=num_workers,
                                                     per_worker_buffer_size=prefetch_buffer_size))
  return iter(ds)


def scans_for_factor(batch: dict[str, Any], factors: Sequence[int], factor: int):
  """The batch's input at one temporal factor, shaped for the model: (B, L, h, w, 1)."""
  return batch["scans"][:, list(factors).index(factor), ..., None]


SOURCES = ("phantom", "nifti")


def _excluded_cases(exclude: Sequence[str], split: str) -> list[str]:
  """The case folder names of one split among ``data.exclude``'s 'SPLIT/CASE_FOLDER' entries."""
  names = []
  for entry in exclude:
    parts = str(entry).split("/")
    if len(parts) != 2 or parts[0] not in SPLIT_OFFSETS or not parts[1]:
      raise InputError("config.data.exclude", f"each entry is SPLIT/CASE_FOLDER with SPLIT one of "
                       f"{', '.join(SPLIT_OFFSETS)} (e.g. 'train/case_7'), got {entry!r}")
    if parts[0] == split:
      names.append(parts[1])
  return names


def make_source(data, split: str):
  """The slice source of one split from a data config (configs/base.py, ``config.data``).

  Phantom: ``data.num_cases[split]`` cases of the split's index range, generated from
  ``data.seed`` (the data seed, not ``config.seed``: models of different initialisation seeds
  see the same cases). NIfTI: the cases in ``data.root/<split>`` in ``data.layout``, but those
  ``data.exclude`` lists as ``<split>/<case folder>``; any other case folder lacking its scan or a
  map is an error.
  """
  if data.source == "phantom":  # generated directly on the time grid
    grid = (data.frame_interval_s, data.frame_interval_s)
    config = phantom.PhantomConfig(**data.phantom, frame_interval_s=grid)
    return PhantomSlices(config, int(data.seed), split, data.num_cases[split], cache=data.cache)
  if data.source == "nifti":
    geometry = preprocess.Geometry(data.height, data.width, data.num_frames, data.frame_interval_s)
    patterns = dict(data.patterns) or None
    exclude = _excluded_cases(data.get("exclude", ()), split)
    return NiftiSlices(os.path.join(data.root, split), data.layout, patterns, geometry,
                       exclude=exclude)
  raise InputError("config.data.source", f"unknown source {data.source!r}; valid: {SOURCES}")


def make_dataset_from_config(data, split: str, seed: int, source=None,
                             shard: grain.sharding.ShardOptions | None = None
                             ) -> grain.MapDataset:
  """make_dataset with the config's factors and batch size: random patches in training order for
  'train', whole slices in order for the other splits.

  seed: seeds the shuffling and the crops (the phantom's cases come from data.seed).
  source: the split's slice source if already made (else made here by make_source).
  shard: this process's share of each training batch (see make_dataset), e.g.
  ``grain.sharding.ShardByJaxProcess()``.
  """
  train = split == "train"
  # Training: random patches. Other splits: whole slices and whole series (the window rule of
  # pkd_jax.inference then covers the series as at test time).
  patch = PatchSpec(data.patch.height, data.patch.width, data.patch.num_frames) if train else None
  source = make_source(data, split) if source is None else source
  return make_dataset(source, factors=data.factors, patch=patch, batch_size=data.batch_size,
                      seed=seed, train=train, input_norm=data.input_norm, shard=shard,
                      random_offset_factors=tuple(data.get("random_offset_factors", ())))
