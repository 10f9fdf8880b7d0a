"""Losses on perfusion maps: MAE, SSIM, perceptual (VGG features), L_map and L_GT.

All functions are pure and jit-able. Maps are (B, H, W) float arrays. The paper's per-map loss is

  L_map = w_mae * MAE + w_ssim * (1 - SSIM) + w_perc * Perceptual,

computed on maps scaled to [0, 1] by the data source's range for that map (e.g. 24 s for Tmax on
RAPID-scaled data): ``pred / data_range`` (not clipped, so the loss keeps a gradient outside the
range) against ``clip(target / data_range, 0, 1)``. The paper's weights are all 1.
L_GT = L_Tmax + L_CBV + L_CBF.

Weights are read when the function is traced: a perceptual weight that is the Python number 0
skips the VGG network entirely (its term is reported as 0), so ``perceptual`` may then be None.
"""

from __future__ import annotations

from typing import Mapping, Sequence

import dm_pix
import jax
import jax.numpy as jnp

from pkd_jax.data.case import TARGET_MAPS
from pkd_jax.models.vgg import FEATURE_LAYERS, PerceptualNet

# The maps summed into L_GT, in the paper's order (same as pkd_jax.data.case.TARGET_MAPS).
MAP_KEYS = TARGET_MAPS  # ("tmax", "cbv", "cbf")
WEIGHT_KEYS = ("mae", "ssim", "perceptual")  # the paper's terms, all required
OPTIONAL_WEIGHT_KEYS = ("mse",)  # a departure from the paper, 0 when absent
SSIM_FILTER_SIZE = 11  # Gaussian window, as in Wang et al. 2004 and the paper's evaluation
SSIM_FILTER_SIGMA = 1.5


def _check_maps(pred: jax.Array, target: jax.Array, what: str) -> None:
  if pred.shape != target.shape:
    raise ValueError(f"{what}: pred shape {pred.shape} != target shape {target.shape}")
  if pred.ndim != 3:
    raise ValueError(f"{what}: expected maps of shape (B, H, W), got {pred.shape}")


def mae(pred: jax.Array, target: jax.Array) -> jax.Array:
  """Mean absolute error over all elements (a scalar)."""
  return jnp.mean(jnp.abs(jnp.asarray(pred, jnp.float32) - jnp.asarray(target, jnp.float32)))


def ssim(pred: jax.Array, target: jax.Array, data_range: float = 1.0) -> jax.Array:
  """Per-map SSIM (B,) of (B, H, W) maps: Gaussian window 11, sigma 1.5, K1 0.01, K2 0.03.

  ``data_range`` is the dynamic range L of the values (SSIM's C1 = (0.01 L)^2, C2 = (0.03 L)^2).
  dm_pix filters with 'valid' convolutions, so H and W must be at least 11; the mean is over the
  (H - 10) x (W - 10) valid positions.
  """
  _check_maps(pred, target, "ssim")
  if min(pred.shape[1:]) < SSIM_FILTER_SIZE:
    raise ValueError(f"ssim: maps must be at least {SSIM_FILTER_SIZE} x {SSIM_FILTER_SIZE} "
                     f"(Gaussian window), got {pred.shape[1:]}")
  a = jnp.asarray(pred, jnp.float32)[..., None]  # dm_pix wants (B, H, W, C)
  b = jnp.asarray(target, jnp.float32)[..., None]
  return dm_pix.ssim(a, b, max_val=data_range, filter_size=SSIM_FILTER_SIZE,
                     filter_sigma=SSIM_FILTER_SIGMA)


def ssim_loss(pred: jax.Array, target: jax.Array, data_range: float = 1.0) -> jax.Array:
  """1 - mean SSIM (a scalar; 0 for identical maps)."""
  return 1.0 - jnp.mean(ssim(pred, target, data_range))


def perceptual_loss(vgg: PerceptualNet, pred: jax.Array, target: jax.Array,
                    layers: Sequence[str] = FEATURE_LAYERS) -> jax.Array:
  """Feature reconstruction loss (Johnson et al. 2016), summed over VGG layers.

  sum over layers j of mean((phi_j(pred) - phi_j(target))^2), the mean over batch, positions and
  channels (Johnson's 1 / (C_j H_j W_j) normalisation, averaged over the batch). Maps (B, H, W),
  meant to be in [0, 1], are replicated to 3 channels; ``vgg`` applies ImageNet normalisation when
  its weights are ImageNet's. The target's features are constants (stop_gradient): gradients flow
  to ``pred`` only.
  """
  _check_maps(pred, target, "perceptual_loss")
  unknown = [name for name in layers if name not in FEATURE_LAYERS]
  if unknown or not layers:
    raise ValueError(f"perceptual_loss: unknown layers {unknown or layers}; "
                     f"valid: {FEATURE_LAYERS}")
  batch = pred.shape[0]
  images = jnp.concatenate([jnp.asarray(pred, jnp.float32),
                            jax.lax.stop_gradient(jnp.asarray(target, jnp.float32))])
  images = jnp.repeat(images[..., None], 3, axis=-1)  # grey -> RGB
  features = vgg.features(images)  # one pass over pred and target together
  total = jnp.zeros((), jnp.float32)
  for name in layers:
    f_pred, f_target = features[name][:batch], jax.lax.stop_gradient(features[name][batch:])
    total = total + jnp.mean(jnp.square(f_pred - f_target))
  return total


def perceptual_features(vgg: PerceptualNet, maps: Mapping[str, jax.Array]
                        ) -> dict[str, dict[str, jax.Array]]:
  """VGG features of several (B, H, W) maps in [0, 1], in one pass: {map: {layer: features}}.

  Computing the student's features once and passing them to :func:`gt_loss` and :func:`kd_loss`
  saves a VGG pass (and its backward pass) per step when a teacher is present.
  """
  keys = list(maps)
  images = jnp.concatenate([jnp.asarray(maps[k], jnp.float32) for k in keys])
  features = vgg.features(jnp.repeat(images[..., None], 3, axis=-1))
  batch = maps[keys[0]].shape[0]
  return {k: {name: f[i * batch:(i + 1) * batch] for name, f in features.items()}
          for i, k in enumerate(keys)}


def feature_distance(pred_features: Mapping[str, jax.Array], target_features: Mapping[str, jax.Array],
                     layers: Sequence[str] = FEATURE_LAYERS) -> jax.Array:
  """sum over layers of mean((phi(pred) - phi(target))^2), the target's features held constant."""
  return sum(jnp.mean(jnp.square(pred_features[n] - jax.lax.stop_gradient(target_features[n])))
             for n in layers)


def _is_zero(weight) -> bool:
  """True for a weight known at trace time to be 0 (a Python or concrete number)."""
  try:
    return float(weight) == 0.0
  except (TypeError, jax.errors.ConcretizationTypeError):
    return False  # a traced weight: cannot skip


def _check_weights(weights: Mapping[str, float]) -> None:
  missing = [k for k in WEIGHT_KEYS if k not in weights]
  unknown = [k for k in weights if k not in WEIGHT_KEYS + OPTIONAL_WEIGHT_KEYS]
  if missing or unknown:
    raise ValueError(f"loss weights need exactly the keys {WEIGHT_KEYS}; missing {missing}, "
                     f"unknown {unknown}")


def map_loss(pred: jax.Array, target: jax.Array, data_range: float,
             weights: Mapping[str, float], perceptual: PerceptualNet | None,
             features: tuple[Mapping[str, jax.Array], Mapping[str, jax.Array]] | None = None
             ) -> tuple[jax.Array, dict[str, jax.Array]]:
  """L_map of one map type: w_mae * MAE + w_ssim * (1 - SSIM) + w_perc * Perceptual (+ w_mse * MSE).

  The optional MSE term (config.loss.mse, 0 in the paper) weighs each voxel by its error: under
  MAE alone a rare lesion (10-20% of the brain) pulls the prediction up no harder than a healthy
  voxel pulls it down, so a network unsure of the lesion predicts the healthy median everywhere.

  Args:
    pred: (B, H, W) predicted map, physical units.
    target: (B, H, W) reference map (ground truth, or a teacher's prediction), physical units.
    data_range: the map's range maximum in physical units (e.g. 24.0 s for Tmax); both maps are
      divided by it, the target then clipped to [0, 1] (pred is not clipped).
    weights: {'mae': w, 'ssim': w, 'perceptual': w} and optionally 'mse'. A perceptual weight
      of (Python) 0 skips the VGG computation.
    perceptual: the VGG feature net, or None when the perceptual weight is 0.
    features: optional precomputed VGG features (of pred / data_range, of the clipped scaled
      target), from :func:`perceptual_features`; then the VGG is not run here.

  Returns:
    (loss, terms), terms = {'mae': MAE, 'ssim': SSIM index (higher is better; the loss uses
    1 - SSIM), 'perceptual': feature loss (0 when skipped)}, all unweighted and on the [0, 1]
    scale.
  """
  _check_maps(pred, target, "map_loss")
  _check_weights(weights)
  p = jnp.asarray(pred, jnp.float32) / data_range
  t = jnp.clip(jnp.asarray(target, jnp.float32) / data_range, 0.0, 1.0)
  terms = {"mae": mae(p, t), "ssim": jnp.mean(ssim(p, t, 1.0))}
  loss = weights["mae"] * terms["mae"] + weights["ssim"] * (1.0 - terms["ssim"])
  if not _is_zero(weights.get("mse", 0.0)):
    terms["mse"] = jnp.mean(jnp.square(p - t))
    loss = loss + weights["mse"] * terms["mse"]
  if _is_zero(weights["perceptual"]):
    terms["perceptual"] = jnp.zeros((), jnp.float32)
  else:
    if perceptual is None:
      raise ValueError("map_loss: the perceptual weight is nonzero but no perceptual network "
                       "(PerceptualNet) was given")
    if features is None:
      terms["perceptual"] = perceptual_loss(perceptual, p, t)
    else:
      terms["perceptual"] = feature_distance(*features)
    loss = loss + weights["perceptual"] * terms["perceptual"]
  return loss, terms


def scale_maps(maps: Mapping[str, jax.Array], ranges: Mapping[str, float],
               clip: bool = False) -> dict[str, jax.Array]:
  """The three maps divided by their ranges (targets also clipped to [0, 1])."""
  scaled = {k: jnp.asarray(maps[k], jnp.float32) / ranges[k] for k in MAP_KEYS}
  return {k: jnp.clip(v, 0.0, 1.0) for k, v in scaled.items()} if clip else scaled


def gt_loss(preds: Mapping[str, jax.Array], targets: Mapping[str, jax.Array],
            ranges: Mapping[str, float], weights: Mapping[str, float],
            perceptual: PerceptualNet | None, pred_features=None
            ) -> tuple[jax.Array, dict[str, jax.Array]]:
  """L_GT = L_Tmax + L_CBV + L_CBF (each a :func:`map_loss` with that map's range).

  Args:
    preds, targets: {'tmax', 'cbv', 'cbf'} -> (B, H, W) maps in physical units (other keys are
      ignored).
    ranges: {'tmax', 'cbv', 'cbf'} -> range maximum in physical units.
    weights, perceptual: as in :func:`map_loss`, shared by the three maps.
    pred_features: the predictions' VGG features, perceptual_features(vgg, scale_maps(preds,
      ranges)), if already computed. With a perceptual term, the VGG runs once for the three
      target maps (and once for the predictions unless given).

  Returns:
    (loss, metrics), metrics = {'<map>/mae', '<map>/ssim', '<map>/perceptual', '<map>/loss' for
    each map, and 'gt': the total}.
  """
  for what, mapping in (("preds", preds), ("targets", targets), ("ranges", ranges)):
    missing = [k for k in MAP_KEYS if k not in mapping]
    if missing:
      raise KeyError(f"gt_loss: {what} lacks maps {missing}; needs {MAP_KEYS}")
  features = {k: None for k in MAP_KEYS}
  if not _is_zero(weights["perceptual"]) and perceptual is not None:
    if pred_features is None:
      pred_features = perceptual_features(perceptual, scale_maps(preds, ranges))
    target_features = perceptual_features(
        perceptual, jax.lax.stop_gradient(scale_maps(targets, ranges, clip=True)))
    features = {k: (pred_features[k], target_features[k]) for k in MAP_KEYS}
  total = jnp.zeros((), jnp.float32)
  metrics = {}
  for key in MAP_KEYS:
    loss, terms = map_loss(preds[key], targets[key], ranges[key], weights, perceptual,
                           features[key])
    total = total + loss
    for name, value in terms.items():
      metrics[f"{key}/{name}"] = value
    metrics[f"{key}/loss"] = loss
  metrics["gt"] = total
  return total, metrics


def feature_loss(student_feature: jax.Array, teacher_feature: jax.Array) -> jax.Array:
  """The feature term of L_KD: mean |f_s - f_t| over the bottleneck features (a scalar)."""
  return jnp.mean(jnp.abs(student_feature.astype(jnp.float32) -
                          teacher_feature.astype(jnp.float32)))


def kd_from_terms(feature: jax.Array, soft: jax.Array, lambda_kd: float
                  ) -> tuple[jax.Array, dict]:
  """L_KD = feature + lambda_kd * soft from its two terms, with :func:`kd_loss`'s metrics.

  For combinations that compute the terms separately (pkd_jax.distill: MTKD's per-teacher
  feature term with the averaged teachers' maps).
  """
  loss = feature + lambda_kd * soft
  return loss, {"kd/feature": feature, "kd/maps": soft, "kd": loss}


def kd_loss(student_feature: jax.Array, teacher_feature: jax.Array,
            student_maps: Mapping[str, jax.Array], teacher_maps: Mapping[str, jax.Array],
            ranges: Mapping[str, float], weights: Mapping[str, float],
            perceptual: PerceptualNet | None, lambda_kd: float,
            student_features=None) -> tuple[jax.Array, dict]:
  """L_KD = mean |f_s - f_t| + lambda_kd * L_map(y_s, y_t), the paper's distillation loss.

  f are the bottleneck features, y the maps; the teacher's maps are soft targets, scored with the
  same L_map as the ground truth (summed over the three maps, like L_GT). Pass the teacher's
  outputs through jax.lax.stop_gradient: the teacher is frozen. student_features: as
  pred_features of :func:`gt_loss`.

  Returns:
    (loss, metrics) with metrics {'kd/feature', 'kd/maps', 'kd'}.
  """
  feature = feature_loss(student_feature, teacher_feature)
  soft, _ = gt_loss(student_maps, teacher_maps, ranges, weights, perceptual, student_features)
  return kd_from_terms(feature, soft, lambda_kd)
