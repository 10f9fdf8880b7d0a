"""How much Tmax does one voxel's own series tell, at each temporal factor? A k-NN probe.

    python experiments/voxel_oracle.py [--factors=16,8,4,1] [--train_cases=64] [--neighbours=64]
        [--sigma_px=1.0] [--out=experiments/results]

No network: each brain voxel of the mini Table 2's test cases (experiments/table2.py, 16 cases)
gets the median Tmax of its k nearest training voxels (k-d tree, scipy) in a small feature space
built from its own degraded series alone: the distinct held frames of the network's input
(pkd_jax.inference.slice_input, the "enhancement" normalisation), spatially smoothed (Gaussian,
--sigma_px), each also minus the slice's median over the brain (so the slice's own healthy tissue
is the reference: the bolus arrives at a different time in every case); at full resolution the
40 frames are averaged into 6 bins first. CBV and CBF stay the constant predictor's. The maps are
scored exactly as the table's rows (pkd_jax.metrics.score on the same records).

It answers one question about the mini table's reading: when the 1/16 students do not beat the
constant predictor on Tmax, is it because a voxel's 3 frames hold no Tmax at all? If this probe
finds Tmax at 1/8 and full resolution but nothing at 1/16, the 1/16 signal (the competitors do
find some: README, Results) must come from spatial context, which a network has to learn.
Writes ``voxel_oracle_mini.{md,json}`` under --out.
"""

from __future__ import annotations

import os
import sys
import time

import numpy as np
from absl import app, flags
from scipy import ndimage, spatial

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

# pylint: disable=wrong-import-position
from experiments import table2
from experiments.common import provenance, summary
from pkd_jax import baselines, evaluate, fileio, inference, metrics
from pkd_jax.data import temporal

_FACTORS = flags.DEFINE_list("factors", ["16", "8", "4", "1"], "temporal factors to probe")
_TRAIN_CASES = flags.DEFINE_integer("train_cases", 64, "training cases whose voxels are searched")
_NEIGHBOURS = flags.DEFINE_integer("neighbours", 64, "k of the k-NN median")
_SIGMA = flags.DEFINE_float("sigma_px", 1.0, "spatial Gaussian smoothing of the frames (pixels)")
# --out (default experiments/results) is experiments/table2.py's flag, with the same meaning.

FULL_RESOLUTION_BINS = 6  # frames of a series with more distinct frames are averaged into these


def voxel_features(record, factor: int, input_norm: str, sigma_px: float) -> np.ndarray:
  """(H * W, 2 * F) features of a slice at a temporal factor: its F distinct held frames
  (at most FULL_RESOLUTION_BINS, binned), smoothed, and the same minus the slice's brain median."""
  series = inference.slice_input(record["scan"], factor, input_norm)[..., 0]
  frames = series[np.unique(temporal.held_frame_indices(series.shape[0], factor))]
  if len(frames) > FULL_RESOLUTION_BINS:
    frames = np.stack([b.mean(0) for b in np.array_split(frames, FULL_RESOLUTION_BINS)])
  frames = np.stack([ndimage.gaussian_filter(f, sigma_px) for f in frames])
  brain = record["brain_mask"] > 0
  context = np.array([np.median(f[brain]) if brain.any() else 0.0 for f in frames])
  features = np.concatenate([frames, frames - context[:, None, None]])
  return features.reshape(len(features), -1).T


def knn_tmax(train_records, test_records, factor: int, input_norm: str, sigma_px: float,
             neighbours: int) -> np.ndarray:
  """(N, H, W) Tmax of the test slices: the k-NN median over the training brain voxels."""
  xs, ys = [], []
  for r in train_records:
    brain = r["brain_mask"].ravel() > 0
    xs.append(voxel_features(r, factor, input_norm, sigma_px)[brain])
    ys.append(r["tmax"].ravel()[brain])
  x, y = np.concatenate(xs), np.concatenate(ys)
  mean, std = x.mean(0), x.std(0) + 1e-6
  tree = spatial.cKDTree((x - mean) / std)
  out = np.zeros((len(test_records), *test_records[0]["tmax"].shape), np.float32)
  for i, r in enumerate(test_records):
    brain = r["brain_mask"].ravel() > 0
    if brain.any():
      feats = voxel_features(r, factor, input_norm, sigma_px)[brain]
      _, idx = tree.query((feats - mean) / std, k=neighbours)
      out[i].ravel()[brain] = np.median(y[idx.reshape(len(feats), -1)], axis=1)
  return out


def _name(factor: int) -> str:
  return f"k-NN voxel probe, {'full' if factor == 1 else f'1/{factor}'}"


def main(argv):
  del argv
  start = time.time()
  factors = [int(f) for f in _FACTORS.value]
  table = table2.Table2("mini", "unused", flags.FLAGS.out)  # only its configs and test records
  config = table2.apply_settings(table.base_config(),
                                 (("data.num_cases.train", _TRAIN_CASES.value),))
  train_records = evaluate.split_records(config, "train")[0]
  test = table.test_records
  values = baselines.healthy_values(config)
  ranges = dict(config.data.map_ranges)
  rows = {}
  constant = baselines.constant_maps(test[0], values)
  rows["constant healthy"] = summary(metrics.score(test[0], constant, ranges, test[1])["per_case"],
                                     0.0)
  for factor in factors:
    t0 = time.time()
    preds = dict(constant, tmax=knn_tmax(train_records, test[0], factor, config.data.input_norm,
                                         _SIGMA.value, _NEIGHBOURS.value))
    result = metrics.score(test[0], preds, ranges, test[1])
    rows[_name(factor)] = dict(summary(result["per_case"], result["tmax_gt6_dice"]),
                               factor=factor, seconds=round(time.time() - t0, 1))
    print(f"{_name(factor)}: Tmax RMSE {rows[_name(factor)]['tmax_rmse']:.3f} s, "
          f"Dice {result['tmax_gt6_dice']:.2f}", flush=True)
  lines = ["# Tmax from one voxel's own series: k-NN probe on the mini Table 2's test cases", "",
           f"{_TRAIN_CASES.value} training cases, k = {_NEIGHBOURS.value}, smoothing sigma "
           f"{_SIGMA.value} px; CBV and CBF are the constant's.", "",
           "| method | Tmax RMSE (s) | Tmax > 6 s Dice |", "|---|---|---|"]
  lines += [f"| {name} | {r['tmax_rmse']:.3f} | {r['tmax_gt6_dice']:.2f} |"
            for name, r in rows.items()]
  os.makedirs(flags.FLAGS.out, exist_ok=True)
  stem = os.path.join(flags.FLAGS.out, "voxel_oracle_mini")
  fileio.write_text(stem + ".md", "\n".join(lines) + "\n")
  fileio.write_json(stem + ".json", dict(
      command=" ".join(["python"] + sys.argv), **provenance(),
      train_cases=_TRAIN_CASES.value, neighbours=_NEIGHBOURS.value, sigma_px=_SIGMA.value,
      num_test_cases=len(test[1]), rows=rows, wall_s=round(time.time() - start, 1)))
  print("\n".join(lines))


if __name__ == "__main__":
  app.run(main)
