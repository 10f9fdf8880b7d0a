"""Base configuration shared by every role: data, model, losses, optimiser, training loop.

Role configs (configs/teacher.py, ...) start from :func:`get_config` and select a scale with
:func:`apply_scale`: "test" (seconds, for the test suite), "demo" (minutes on a laptop CPU), "mini"
(one teacher that learns the lesions in 20 minutes on 2 CPU cores) or "paper" (the paper's sizes and 80,000 iterations). Any field can be overridden on the command
line, e.g. ``--config.train.steps=100``; a key that does not exist is an error.
"""

import ml_collections

SCALES = ("test", "demo", "mini", "paper")


def parse_arg(arg: str | None, what: str, valid: tuple[str, ...], default: str) -> tuple[str, str]:
  """A role's config string "KIND[,SCALE]" (in either order) -> (kind, scale).

  e.g. teacher "8,demo" -> ("8", "demo"), student "pkd" -> ("pkd", "paper"). what names the kind
  in errors ("temporal factor", "strategy"); a missing kind is default, a missing scale "paper".
  """
  parts = [p.strip() for p in (arg or "").split(",") if p.strip()]
  unknown = [p for p in parts if p not in valid and p not in SCALES]
  if unknown:
    raise ValueError(f"bad config string {arg!r}: {unknown[0]!r} is neither a {what} "
                     f"({', '.join(valid)}) nor a scale ({', '.join(SCALES)})")
  kinds, scales = [p for p in parts if p in valid], [p for p in parts if p in SCALES]
  if len(kinds) > 1 or len(scales) > 1:
    raise ValueError(f"bad config string {arg!r}: expected one {what} and at most one scale")
  return (kinds[0] if kinds else default), (scales[0] if scales else "paper")


def get_data_config() -> ml_collections.ConfigDict:
  data = ml_collections.ConfigDict()
  data.source = "phantom"  # "phantom" (built-in, exact ground truth) or "nifti" (files on disk)
  # Seeds the phantom cases, which the splits share (disjoint case indices): the data stays the
  # same when config.seed (initialisation, shuffling, crops) changes, e.g. MTKD's teachers.
  data.seed = 0
  # Phantom (pkd_jax.data.phantom.PhantomConfig); generated directly at the preprocessed geometry.
  data.phantom = ml_collections.ConfigDict()
  data.phantom.height = 256  # in-plane rows, as the paper's preprocessed scans
  data.phantom.width = 256  # in-plane columns
  data.phantom.num_frames = 40  # frames per scan (the paper's 40)
  data.phantom.num_slices = 8  # axial slices per case
  data.phantom.noise = True  # dose-dependent correlated noise (False: noise-free scans)
  data.phantom.mas = (50.0, 150.0)  # tube current-time product range, drawn per case
  data.num_cases = ml_collections.ConfigDict()
  data.num_cases.train = 64  # phantom cases per split; splits are disjoint by construction
  data.num_cases.validation = 8
  data.num_cases.test = 8
  # Keep generated phantom slices in memory (worth it for small datasets), shared by every run
  # of the same cases in the process (an experiment's units) until it exits.
  data.cache = False
  # NIfTI data (source = "nifti"): one folder per split below root, e.g. root/train/case_1/...
  data.root = ""  # dataset folder
  data.layout = "isles2018"  # "isles2018" or "folder" (then give data.patterns)
  data.patterns = ml_collections.ConfigDict()  # role -> glob, e.g. scan="*4D*.nii.gz" (folder layout)
  # Case folders to leave out, as "SPLIT/CASE_FOLDER" below root (e.g. ("train/case_7",)); any
  # other case folder lacking its scan or a tmax, cbv or cbf map stops the run before training.
  data.exclude = ()
  # Preprocessing geometry of every scan (pkd_jax.data.preprocess.Geometry).
  data.height = data.phantom.get_ref("height")
  data.width = data.phantom.get_ref("width")
  data.num_frames = data.phantom.get_ref("num_frames")
  # The fixed time grid (seconds per frame) every scan is resampled onto (preprocess.Geometry):
  # Tmax and CBF are defined in seconds, so a frame must mean the same time in every scan.
  # 40 frames of 1.5 s cover 58.5 s, the bolus passage and washout of late (delayed) tissue.
  data.frame_interval_s = 1.5
  # Temporal factors present in every example (student and teachers see the same patch). Role
  # configs set this to the factors the run needs.
  data.factors = (16, 8, 4, 2, 1)
  # Factors (of data.factors) whose training examples keep frames k, k + n, ... from a random
  # sampling offset k < n instead of 0, n, ...: the authors' release trains the 1/n student on
  # every offset (DESIGN.md, section 2), e.g. (16,) for a 1/16 student. Evaluation keeps offset 0.
  data.random_offset_factors = ()
  # Training patch: the paper's random 128 x 128 x 32 crops; each side must divide by 16.
  data.patch = ml_collections.ConfigDict()
  data.patch.height = 128
  data.patch.width = 128
  data.patch.num_frames = 32
  # Validation, test and prediction average the network's maps over T-frame windows starting every
  # window_stride frames of the whole series (and at its end): pkd_jax.inference, the window rule.
  data.window_stride = 4
  data.batch_size = 2  # examples per batch
  # The network's input intensity (pkd_jax.data.preprocess.network_input): "hu" is
  # clip(HU, -100, 700) / 100 (tissue enhancement of 10 HU is 0.1); "enhancement" keeps the
  # pre-bolus frame 0 as anatomy and amplifies the enhancement over it 10x (10 HU is 1.0).
  data.input_norm = "enhancement"
  data.num_workers = 0  # grain worker processes (0: prepare batches in the main process)
  # Map ranges (the data source's units): maps are divided by these for SSIM and the perceptual
  # loss, and metrics clip to them. Phantom: physiological ranges of its physical units (its Tmax
  # stays below 18 s, CBV below 8 ml/100 g, CBF below 100 ml/100 g/min). For RAPID-scaled data
  # such as ISLES 2018 use the paper's 24 / 200 / 1000.
  data.map_ranges = ml_collections.ConfigDict(dict(tmax=20.0, cbv=8.0, cbf=100.0))
  return data


def get_model_config() -> ml_collections.ConfigDict:
  model = ml_collections.ConfigDict()
  model.name = "vnet"  # a key of pkd_jax.models.MODELS
  model.filters = 16  # F: encoder widths F, 2F, 4F, 8F, 16F (the authors' 16)
  # Convolution implementations: exact re-formulations with the same parameters (a checkpoint
  # works with any choice). "auto" picks the fastest measured form for the JAX backend
  # (pkd_jax.models.vnet.AUTO_IMPLS: the reshaped/stacked forms on CPU, plain lax on GPU).
  model.down_impl = "auto"  # "conv" (lax strided conv) or "space_to_depth" (reshape + matmul)
  model.up_impl = "auto"  # "conv_transpose" or "depth_to_space" (matmul + reshape)
  # "conv3d", "conv2d_sum" (three 2D convs over temporal shifts) or "conv2d_stacked" (one 2D
  # conv of the temporal shifts stacked on the channels)
  model.conv_impl = "auto"
  model.dtype = "float32"  # computation dtype: "float32" or "bfloat16" (parameters stay float32)
  # True: heads predict maps divided by data.map_ranges, multiplied back at the output (an
  # ablation; False, the paper's plain heads, overfits one batch better: tests/test_train.py).
  model.scale_outputs = False
  return model


def get_loss_config() -> ml_collections.ConfigDict:
  loss = ml_collections.ConfigDict()
  # L_map = w_mae * MAE + w_ssim * (1 - SSIM) + w_perceptual * Perceptual (the paper: all 1).
  loss.mae = 1.0
  loss.ssim = 1.0
  loss.perceptual = 1.0
  # Mean squared error weight (not in the paper: 0 is the paper's loss). See losses.map_loss.
  loss.mse = 0.0
  # Perceptual features: "" for a fixed seeded random VGG16 (Liu et al., CVPR 2021), or a .npz
  # of torchvision's ImageNet VGG16 (python -m pkd_jax.tools.vgg convert vgg16.pth vgg16.npz).
  loss.perceptual_weights = ""
  loss.perceptual_seed = 0  # seed of the random VGG16
  return loss


def get_train_config() -> ml_collections.ConfigDict:
  train = ml_collections.ConfigDict()
  train.factor = 1  # temporal factor of the model's input (1 = full resolution)
  train.steps = 80_000  # optimiser steps (the paper's 80,000 iterations)
  train.learning_rate = 1e-3  # Adam, decayed linearly to 0 over train.steps
  train.b1 = 0.5  # Adam beta1 (the paper's 0.5)
  train.b2 = 0.99  # Adam beta2 (the paper's 0.99)
  train.log_every = 50  # steps between TensorBoard scalars
  train.eval_every = 1000  # steps between validations; a checkpoint is written at each
  train.eval_batches = 0  # validation batches per evaluation (0: the whole validation split)
  train.keep_checkpoints = 3  # latest checkpoints kept (the best by validation loss is kept too)
  # Several processes (hosts) train one model: main.py calls jax.distributed.initialize() first
  # (pkd_jax.parallel.initialize_distributed; README, "On several GPUs or hosts"). Not needed
  # for several devices of one process: every run is data parallel over all its devices.
  train.distributed = False
  return train


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  """The base config at the paper's scale; role configs lock it after choosing a variant."""
  del arg
  config = ml_collections.ConfigDict()
  config.role = "teacher"  # what main.py runs: "teacher"
  config.seed = 0  # seeds the initialisation, the shuffling and the crops (data.seed: the phantom)
  config.data = get_data_config()
  config.model = get_model_config()
  config.loss = get_loss_config()
  config.train = get_train_config()
  config.reference = ml_collections.ConfigDict()  # the report's reference rows (pkd_jax.baselines)
  config.reference.classical_grid = "full"  # the classical pipelines searched: "full" or "small"
  return config


def apply_scale(config: ml_collections.ConfigDict, scale: str) -> ml_collections.ConfigDict:
  """Sets sizes for a scale: "test" (seconds), "demo" (minutes on a CPU) or "paper"."""
  if scale not in SCALES:
    raise ValueError(f"unknown scale {scale!r}; valid scales: {', '.join(SCALES)}")
  data, model, train = config.data, config.model, config.train
  if scale == "test":  # seconds; the perceptual term is off (tests/test_losses.py covers it)
    data.phantom.height = data.phantom.width = 48
    data.phantom.num_slices = 2
    data.patch.height = data.patch.width = 32  # 16 would leave BatchNorm 2 values at the bottleneck
    data.patch.num_frames = 16
    data.window_stride = 8  # 4 windows of the 40 frames (7 with 4): validation and scoring
    data.num_cases.train, data.num_cases.validation, data.num_cases.test = 2, 1, 1
    data.cache = True
    model.filters = 4
    config.loss.perceptual = 0.0
    config.reference.classical_grid = "small"
    train.steps, train.eval_every, train.log_every = 6, 3, 1
  elif scale in ("demo", "mini"):  # 64 x 64 slices, 32 x 32 x 32 patches, F = 4, on a CPU.
    # Departures, measured in the README ("Does the teacher learn?"): the MSE term (without it
    # the networks predict the healthy median) and no perceptual term (a quarter of a CPU step).
    data.phantom.height = data.phantom.width = 64
    data.phantom.num_slices = 4
    data.patch.height = data.patch.width = 32
    data.patch.num_frames = 32
    data.cache = True
    model.filters = 4
    config.loss.mse = 10.0
    config.loss.perceptual = 0.0
    if scale == "demo":  # the whole method in minutes
      data.num_cases.train, data.num_cases.validation, data.num_cases.test = 48, 2, 4
      # 500 steps are too few for MSE 10 to pull the lesions out (teacher x1: Tmax > 6 s Dice
      # 0.10 on the test cases); MSE 100 gives 0.76 in the same steps (README, ablations).
      config.loss.mse = 100.0
      train.steps, train.eval_every, train.log_every = 500, 100, 10
    else:  # one full-resolution teacher that learns the lesions in <= 20 min on 2 CPU cores
      # (experiments/teacher_mini.py): many more cases and steps
      data.num_cases.train, data.num_cases.validation, data.num_cases.test = 256, 4, 16
      train.steps, train.eval_every, train.log_every = 5000, 500, 25
  return config


COMPETITOR_FACTORS = (1, 2, 4, 8, 16)


def competitor_config(arg: str | None, model: str, filters: dict[str, int]
                      ) -> ml_collections.ConfigDict:
  """A competitor network (configs/unitobrain.py, configs/unet_gan.py) trained on the ground
  truth at one temporal factor "FACTOR[,SCALE]" (factor 16 too: no distillation), as a teacher
  is: same data, patches, window rule, optimiser and schedule; widths per scale from filters.

  The networks predict each map divided by its data.map_ranges value (multiplied back at the
  output): plain outputs must grow to CBF's ~50 ml/100 g/min through the last layer, and one
  batch's MSE fell only 0.12 -> 0.09 in 100 steps (tests/test_unitobrain.py's overfit) against
  0.35 -> 0.022 with this. Left unlocked for the role config to set its loss.
  """
  kind, scale = parse_arg(arg, "temporal factor", tuple(map(str, COMPETITOR_FACTORS)), "1")
  config = apply_scale(get_config(), scale)
  config.role = "teacher"  # trained on the ground truth by pkd_jax.train, as a teacher
  config.model.name = model  # pkd_jax.models.MODELS; the *_impl fields (V-Net's) are unused
  config.model.filters = filters[scale]
  config.model.scale_outputs = True
  config.train.factor = int(kind)
  config.data.factors = (int(kind),)  # the input at its own factor only
  return config
