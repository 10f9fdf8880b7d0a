"""Base configuration: the data layer (paper geometry). Role configs (teacher, student) build on it.

Usage from the command line: ``--config=configs/base.py``; any field can be overridden, e.g.
``--config.data.batch_size=4``.
"""

import ml_collections


def get_data_config() -> ml_collections.ConfigDict:
  data = ml_collections.ConfigDict()
  data.source = "phantom"  # "phantom" (built-in, exact ground truth) or "nifti" (files on disk)
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
  data.cache = False  # keep generated phantom slices in memory (worth it for small datasets)
  # NIfTI data (source = "nifti"): one folder per split below root, e.g. root/train/case_1/...
  data.root = ""  # dataset folder
  data.layout = "isles2018"  # "isles2018" or "folder" (then give data.patterns)
  data.patterns = ml_collections.ConfigDict()  # role -> glob, e.g. scan="*4D*.nii.gz" (folder layout)
  # Preprocessing geometry of every scan (pkd_jax.data.preprocess.Geometry).
  data.height = data.phantom.get_ref("height")
  data.width = data.phantom.get_ref("width")
  data.num_frames = data.phantom.get_ref("num_frames")
  # Temporal factors present in every example (student and teachers see the same patch).
  data.factors = (16, 8, 4, 2, 1)
  # Training patch: the paper's random 128 x 128 x 32 crops.
  data.patch = ml_collections.ConfigDict()
  data.patch.height = 128
  data.patch.width = 128
  data.patch.num_frames = 32
  data.batch_size = 2  # examples per batch
  data.num_workers = 0  # grain worker processes (0: prepare batches in the main process)
  return data


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  del arg  # no variants yet
  config = ml_collections.ConfigDict()
  config.seed = 0  # seeds the phantom, the shuffling and the crops
  config.data = get_data_config()
  config.lock()
  return config
