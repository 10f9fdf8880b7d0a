"""VGG16 convolutional features (up to relu4_3) in flax.linen, for the perceptual loss.

The network is VGG16's ``features`` stack (Simonyan & Zisserman 2015) cut after relu4_3: blocks of
2, 2, 3, 3 conv3x3 (SAME padding, stride 1) + ReLU layers with 64, 128, 256, 512 channels and a
2x2 stride-2 max-pool between blocks (none after block 4). Input is (B, H, W, 3) NHWC; the output is
a dict of the activations at relu1_2 (B, H, W, 64), relu2_2 (B, H/2, W/2, 128), relu3_3
(B, H/4, W/4, 256) and relu4_3 (B, H/8, W/8, 512) (odd sizes are floored by the pools, as in
PyTorch).

Two sets of weights, each returned as a :class:`PerceptualNet` that records whether the input must
be ImageNet-normalised:

* :func:`random_vgg16_params` (the default; nothing can be downloaded here): a fixed, seeded random
  initialisation. Liu et al., CVPR 2021, "Generic Perceptual Loss for Modeling Structured Output
  Dependencies", show that a randomly initialised network's features work as a perceptual loss
  about as well as ImageNet-trained ones; what matters is the architecture, provided the random
  weights keep the feature and gradient scales stable through depth. We use He (Kaiming) normal
  weights, N(0, 2 / fan_in) with fan_in = 3 * 3 * C_in (variance preserving for ReLU), and zero
  biases, drawn with numpy from the seed (identical on every backend). Inputs are then used as
  they are (maps in [0, 1]), without ImageNet normalisation.
* :func:`load_vgg16_params`: ImageNet weights from a local ``.npz`` holding torchvision's VGG16
  state-dict arrays under their torchvision names. Inputs are ImageNet-normalised.

torchvision's ``vgg16().features`` indices and our layer names (the ``.weight`` is OIHW
(out, in, kh, kw) in PyTorch, converted to flax's HWIO (kh, kw, in, out)):

====================  ==========  ================
torchvision key       our layer   weight (OIHW)
====================  ==========  ================
features.0            conv1_1     (64, 3, 3, 3)
features.2            conv1_2     (64, 64, 3, 3)
features.5            conv2_1     (128, 64, 3, 3)
features.7            conv2_2     (128, 128, 3, 3)
features.10           conv3_1     (256, 128, 3, 3)
features.12           conv3_2     (256, 256, 3, 3)
features.14           conv3_3     (256, 256, 3, 3)
features.17           conv4_1     (512, 256, 3, 3)
features.19           conv4_2     (512, 512, 3, 3)
features.21           conv4_3     (512, 512, 3, 3)
====================  ==========  ================

The other indices are ReLUs (1, 3, 6, 8, 11, 13, 15, 18, 20, 22: relu1_2 is index 3, relu2_2 8,
relu3_3 15, relu4_3 22) and max-pools (4, 9, 16, 23). conv5 (features.24/26/28) and the
classifier are not needed; if present in the file they are ignored.

Users with PyTorch convert torchvision's checkpoint once with::

  python -m pkd_jax.tools.vgg convert vgg16-397923af.pth vgg16.npz

which is the only place torch is imported (inside that command); the package never needs it.
"""

from __future__ import annotations

import os
import tempfile
import zipfile
from typing import Any, Mapping

import flax.linen as nn
import flax.struct
import jax
import jax.numpy as jnp
import numpy as np

from pkd_jax.errors import InputError

# (our layer name, torchvision features index, in channels, out channels), in network order.
VGG16_CONVS = (
    ("conv1_1", 0, 3, 64),
    ("conv1_2", 2, 64, 64),
    ("conv2_1", 5, 64, 128),
    ("conv2_2", 7, 128, 128),
    ("conv3_1", 10, 128, 256),
    ("conv3_2", 12, 256, 256),
    ("conv3_3", 14, 256, 256),
    ("conv4_1", 17, 256, 512),
    ("conv4_2", 19, 512, 512),
    ("conv4_3", 21, 512, 512),
)
# Convolution names per block; a max-pool separates consecutive blocks.
BLOCKS = (("conv1_1", "conv1_2"), ("conv2_1", "conv2_2"), ("conv3_1", "conv3_2", "conv3_3"),
          ("conv4_1", "conv4_2", "conv4_3"))
# The activations returned, one per block (the ReLU after its last convolution).
FEATURE_LAYERS = ("relu1_2", "relu2_2", "relu3_3", "relu4_3")

# ImageNet statistics torchvision's VGG weights were trained with (RGB, inputs in [0, 1]).
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

# He (Kaiming) normal: N(0, 2 / fan_in), untruncated.
_HE_NORMAL = nn.initializers.variance_scaling(2.0, "fan_in", "normal")


class VGG16Features(nn.Module):
  """VGG16 feature layers up to relu4_3: (B, H, W, 3) -> {relu1_2, relu2_2, relu3_3, relu4_3}."""

  @nn.compact
  def __call__(self, x: jax.Array) -> dict[str, jax.Array]:
    features = {}
    for block_index, (block, layer) in enumerate(zip(BLOCKS, FEATURE_LAYERS)):
      if block_index > 0:
        x = nn.max_pool(x, window_shape=(2, 2), strides=(2, 2), padding="VALID")
      for name in block:
        out_channels = next(c[3] for c in VGG16_CONVS if c[0] == name)
        x = nn.Conv(out_channels, (3, 3), padding="SAME", kernel_init=_HE_NORMAL,
                    bias_init=nn.initializers.zeros, name=name)(x)
        x = nn.relu(x)
      features[layer] = x
    return features


@flax.struct.dataclass
class PerceptualNet:
  """VGG16 feature weights plus how inputs must be prepared for them.

  A pytree: ``params`` are leaves (pass a PerceptualNet straight into a jitted function), while
  ``imagenet_normalise`` and ``description`` are static.
  """

  params: Any  # flax variables {'params': {'conv1_1': {'kernel', 'bias'}, ...}}
  imagenet_normalise: bool = flax.struct.field(pytree_node=False, default=False)
  description: str = flax.struct.field(pytree_node=False, default="")  # for logs

  def features(self, images: jax.Array) -> dict[str, jax.Array]:
    """VGG features of (B, H, W, 3) RGB images in [0, 1] (normalised here if the weights need)."""
    x = jnp.asarray(images, jnp.float32)
    if self.imagenet_normalise:
      x = (x - jnp.asarray(IMAGENET_MEAN)) / jnp.asarray(IMAGENET_STD)
    return VGG16Features().apply(self.params, x)


def random_vgg16_params(seed: int = 0) -> PerceptualNet:
  """A fixed random VGG16: He-normal kernels N(0, 2 / (9 C_in)), zero biases.

  Drawn with numpy's PCG64 generator (``np.random.default_rng(seed)``, float32 standard normals,
  layer by layer in network order, each kernel in HWIO order), so the weights are the same on
  every backend and do not depend on JAX's PRNG implementation or on jit.
  """
  rng = np.random.default_rng(seed)
  params = {}
  for name, _, c_in, c_out in VGG16_CONVS:
    std = np.float32(np.sqrt(2.0 / (3 * 3 * c_in)))
    kernel = rng.standard_normal((3, 3, c_in, c_out), dtype=np.float32) * std
    params[name] = {"kernel": jnp.asarray(kernel), "bias": jnp.zeros((c_out,), jnp.float32)}
  return PerceptualNet(
      params={"params": params}, imagenet_normalise=False,
      description=f"VGG16 to relu4_3, random He-normal weights (numpy seed {seed}; "
      "Liu et al., CVPR 2021)")


def _expected_shapes() -> dict[str, tuple[int, ...]]:
  shapes = {}
  for _, index, c_in, c_out in VGG16_CONVS:
    shapes[f"features.{index}.weight"] = (c_out, c_in, 3, 3)
    shapes[f"features.{index}.bias"] = (c_out,)
  return shapes


def _check_state_dict(arrays: Mapping[str, np.ndarray], where: str) -> None:
  """Raises InputError naming ``where`` if a needed key is missing or has the wrong shape."""
  for key, shape in _expected_shapes().items():
    if key not in arrays:
      raise InputError(where, f"missing key {key!r}; expected torchvision VGG16 state-dict arrays "
                       "(features.0.weight ... features.21.bias)")
    found = tuple(np.shape(arrays[key]))
    if found != shape:
      raise InputError(where, f"key {key!r} has shape {found}, expected {shape}")


def params_from_state_dict(arrays: Mapping[str, np.ndarray]) -> dict[str, Any]:
  """Flax variables from torchvision VGG16 arrays (OIHW weights -> HWIO kernels)."""
  params = {}
  for name, index, _, _ in VGG16_CONVS:
    weight = np.asarray(arrays[f"features.{index}.weight"], np.float32)
    bias = np.asarray(arrays[f"features.{index}.bias"], np.float32)
    params[name] = {"kernel": jnp.asarray(weight.transpose(2, 3, 1, 0)), "bias": jnp.asarray(bias)}
  return {"params": params}


def load_vgg16_params(path: os.PathLike | str) -> PerceptualNet:
  """ImageNet VGG16 weights from an ``.npz`` of torchvision state-dict arrays (see module doc)."""
  path = os.fspath(path)
  if not os.path.exists(path):
    raise InputError(path, "no such file (VGG16 weights .npz; convert torchvision's checkpoint "
                     "with `python -m pkd_jax.tools.vgg convert vgg16.pth vgg16.npz`)")
  if os.path.isdir(path):
    raise InputError(path, "is a folder, expected a VGG16 weights .npz file")
  needed = _expected_shapes()
  try:
    npz = np.load(path, allow_pickle=False)
    if not isinstance(npz, np.lib.npyio.NpzFile):
      raise InputError(path, "holds a single array, expected an .npz archive of named arrays")
    with npz:
      arrays = {key: npz[key] for key in npz.files if key in needed}
  except InputError:
    raise
  except (OSError, ValueError, EOFError, zipfile.BadZipFile, KeyError) as e:
    raise InputError(path, f"cannot read as an .npz archive: {e}") from e
  _check_state_dict(arrays, path)
  for key, value in arrays.items():
    if not np.issubdtype(value.dtype, np.floating):
      raise InputError(path, f"key {key!r} has dtype {value.dtype}, expected floating point")
    if not np.all(np.isfinite(value)):
      raise InputError(path, f"key {key!r} holds non-finite values")
  return PerceptualNet(params=params_from_state_dict(arrays), imagenet_normalise=True,
                       description=f"VGG16 to relu4_3, ImageNet weights from {path}")


def _to_numpy(value: Any) -> np.ndarray:
  if hasattr(value, "detach"):  # a torch tensor
    return value.detach().cpu().float().numpy()
  return np.asarray(value)


def save_state_dict_npz(state_dict: Mapping[str, Any], path: os.PathLike | str,
                        where: str = "state dict") -> None:
  """Writes a VGG16 state dict's arrays to ``path`` (.npz), atomically (temp file, then rename).

  Values may be numpy arrays or torch tensors. The needed keys are checked first (an InputError
  naming ``where`` otherwise); every array-valued entry is kept under its own name.
  """
  path = os.fspath(path)
  arrays = {key: _to_numpy(value) for key, value in state_dict.items()
            if hasattr(value, "shape")}
  _check_state_dict(arrays, where)
  folder = os.path.dirname(os.path.abspath(path))
  if not os.path.isdir(folder):
    raise InputError(path, f"output folder {folder} does not exist")
  fd, tmp = tempfile.mkstemp(prefix=os.path.basename(path) + ".", suffix=".tmp", dir=folder)
  try:
    with os.fdopen(fd, "wb") as f:
      np.savez(f, **arrays)
    os.replace(tmp, path)
  except BaseException:
    if os.path.exists(tmp):
      os.remove(tmp)
    raise
