"""Convert torchvision's ImageNet VGG16 weights for the perceptual loss (needs torch, which pkd-jax
itself never does):

    python -m pkd_jax.tools.vgg convert vgg16-397923af.pth vgg16.npz

then ``--config.loss.perceptual_weights=vgg16.npz``. The network is pkd_jax.models.vgg.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Mapping
from typing import Sequence

from pkd_jax.errors import InputError, exit_on_input_error
from pkd_jax.models import vgg


def convert_torch_checkpoint(src: os.PathLike | str, dst: os.PathLike | str) -> None:
  """Converts torchvision's VGG16 ``.pth`` (a state dict) to our ``.npz``; needs torch."""
  src = os.fspath(src)
  try:
    import torch  # pylint: disable=import-outside-toplevel
  except ImportError as e:
    raise InputError("convert", "PyTorch is not installed; this command (and only this one) "
                     "needs it: pip install torch, or convert on a machine that has it") from e
  if not os.path.isfile(src):
    raise InputError(src, "no such file (torchvision VGG16 checkpoint .pth)")
  try:
    state = torch.load(src, map_location="cpu", weights_only=True)
  except Exception as e:  # pylint: disable=broad-except
    raise InputError(src, f"cannot load as a PyTorch state dict: {e}") from e
  if hasattr(state, "state_dict"):
    state = state.state_dict()
  if not isinstance(state, Mapping):
    raise InputError(src, f"holds a {type(state).__name__}, expected a state dict")
  vgg.save_state_dict_npz(state, dst, where=src)


@exit_on_input_error
def main(argv: Sequence[str] | None = None) -> None:
  parser = argparse.ArgumentParser(prog="python -m pkd_jax.tools.vgg",
                                   description="VGG16 weights for the perceptual loss.")
  commands = parser.add_subparsers(dest="command", required=True)
  convert = commands.add_parser(
      "convert", help="convert torchvision's VGG16 .pth state dict to an .npz (needs torch)")
  convert.add_argument("src", help="torchvision VGG16 checkpoint, e.g. vgg16-397923af.pth")
  convert.add_argument("dst", help="output .npz, for load_vgg16_params")
  args = parser.parse_args(argv)
  if args.command == "convert":
    convert_torch_checkpoint(args.src, args.dst)
    print(f"wrote {args.dst}")


if __name__ == "__main__":
  main(sys.argv[1:])
