"""The PyTorch reference's train step on a chosen device and dtype (a CUDA GPU, bfloat16).

    python benchmarks/torch_device.py --torch_script ../shared/bench/torch_vnet.py \
        --device cuda --dtype bfloat16 --batch 2 --frames 32 --size 128 --filters 16 --steps 20

`shared/bench/torch_vnet.py` (the measuring instrument: the V-Net of DESIGN.md section 4 in
PyTorch) times its step on the CPU in float32 only. This runs its network (imported from that
file, not copied), its loss (MAE of the three maps) and its optimiser (Adam(0.5, 0.99), lr 1e-3)
on --device, with --dtype bfloat16 through torch.autocast (bf16 convolutions, float32 parameters
and optimiser state: what pkd-jax's model.dtype=bfloat16 does), synchronising the device around
each timed step. Prints one JSON line whose last key is "median_step_s", like torch_vnet.py, for
benchmarks/compare_torch.py --device=cuda. torch is never a pkd-jax dependency: run this with an
interpreter that has it.
"""

import argparse
import contextlib
import importlib.util
import json
import statistics
import time

import torch


def load_reference(path: str):
  """The module torch_vnet.py, loaded from its path."""
  spec = importlib.util.spec_from_file_location("torch_vnet", path)
  if spec is None or spec.loader is None:
    raise SystemExit(f"{path}: not a Python file")
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def main():
  p = argparse.ArgumentParser()
  p.add_argument("--torch_script", required=True, help="shared/bench/torch_vnet.py")
  p.add_argument("--device", default="cuda")
  p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
  p.add_argument("--batch", type=int, default=2)
  p.add_argument("--frames", type=int, default=32)
  p.add_argument("--size", type=int, default=64)
  p.add_argument("--filters", type=int, default=8)
  p.add_argument("--steps", type=int, default=5)
  p.add_argument("--threads", type=int, default=0)
  a = p.parse_args()
  if a.threads:
    torch.set_num_threads(a.threads)
  device = torch.device(a.device)
  reference = load_reference(a.torch_script)
  torch.manual_seed(0)
  model = reference.VNet(a.filters, a.frames).to(device)
  opt = torch.optim.Adam(model.parameters(), lr=1e-3, betas=(0.5, 0.99))
  x = torch.randn(a.batch, 1, a.frames, a.size, a.size, device=device)
  ys = [torch.rand(a.batch, 1, a.size, a.size, device=device) for _ in range(3)]
  autocast = (torch.autocast(device.type, dtype=torch.bfloat16) if a.dtype == "bfloat16"
              else contextlib.nullcontext())

  def sync():
    if device.type == "cuda":
      torch.cuda.synchronize(device)

  def step():
    opt.zero_grad(set_to_none=True)
    with autocast:
      maps, _ = model(x)
      loss = sum((m.float() - y).abs().mean() for m, y in zip(maps, ys))
    loss.backward()
    opt.step()
    return loss

  sync()
  t0 = time.perf_counter()
  step()
  sync()
  first = time.perf_counter() - t0
  times = []
  for _ in range(a.steps):
    t0 = time.perf_counter()
    step()
    sync()
    times.append(time.perf_counter() - t0)
  params = sum(p.numel() for p in model.parameters())
  print(json.dumps({
      "impl": "torch", "torch": torch.__version__, "device": a.device,
      "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
      "dtype": a.dtype, "cudnn_allow_tf32": torch.backends.cudnn.allow_tf32,
      "threads": torch.get_num_threads(), "batch": a.batch, "frames": a.frames,
      "size": a.size, "filters": a.filters, "params": params, "first_step_s": first,
      "median_step_s": statistics.median(times)}))


if __name__ == "__main__":
  main()
