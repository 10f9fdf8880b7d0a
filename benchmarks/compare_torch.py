"""Benchmark: pkd-jax's train step against PyTorch running the same network, side by side.

    python benchmarks/compare_torch.py [--torch_python PYTHON] [--shapes 2,32,64,8;1,32,128,16]
        [--rounds 3] [--steps 5] [--device cpu|cuda] [--dtype float32|bfloat16]
        [--out benchmarks/results/compare_torch.json]

For each shape (batch, frames T, H = W, filters F) it alternates, --rounds times, a PyTorch run of
`shared/bench/torch_vnet.py` (the authors' V-Net in PyTorch, MAE of the three maps,
Adam(0.5, 0.99)) and `benchmarks/train_step.py --peer-comparable` (the same work through
pkd-jax's own train step), each in a fresh process with the same number of threads, and reports
each run's median step time and the ratio JAX / PyTorch of the medians over rounds (below 1: JAX
is faster). Alternating in one run is what makes the ratio meaningful on a noisy shared machine.
With --device cuda or --dtype bfloat16 the PyTorch side is benchmarks/torch_device.py (the same
network, imported from torch_vnet.py, on the GPU and/or under bf16 autocast).

torch is never a dependency of pkd-jax: give --torch_python, the interpreter of a separate venv
(`python -m venv torchenv && torchenv/bin/pip install torch==2.13.0` gets a CPU wheel), or run this
where `import torch` works. Without torch the script says so and exits with status 2.
"""

from __future__ import annotations

import json
import os
import platform
import statistics
import subprocess
import sys

from absl import app, flags

from pkd_jax import fileio

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEFAULT_TORCH_SCRIPT = os.path.join(os.path.dirname(ROOT), "shared", "bench", "torch_vnet.py")

_TORCH_PYTHON = flags.DEFINE_string("torch_python", sys.executable,
                                    "Python interpreter that can import torch")
_TORCH_SCRIPT = flags.DEFINE_string("torch_script", DEFAULT_TORCH_SCRIPT,
                                    "the PyTorch reference (shared/bench/torch_vnet.py)")
_SHAPES = flags.DEFINE_string("shapes", "2,32,64,8;1,32,128,16",
                              "batch,frames,size,filters shapes, separated by ';'")
_ROUNDS = flags.DEFINE_integer("rounds", 3, "alternating rounds of (PyTorch, JAX) per shape")
_STEPS = flags.DEFINE_integer("steps", 5, "timed steps per run (after the warm-up step)")
_THREADS = flags.DEFINE_integer("threads", 0, "threads for both (0: every core the process has)")
_IMPLS = flags.DEFINE_string("impls", "", "JAX down,up,conv implementations (default: automatic)")
_OUT = flags.DEFINE_string("out", "benchmarks/results/compare_torch.json", "JSON output path")
_DEVICE = flags.DEFINE_enum("device", "cpu", ["cpu", "cuda"],
                            "where both run: cpu (JAX_PLATFORMS=cpu) or cuda (the GPU)")
_DTYPE = flags.DEFINE_enum("dtype", "float32", ["float32", "bfloat16"],
                           "computation dtype of both (bfloat16: autocast in PyTorch, "
                           "model.dtype in JAX; float32 parameters and optimiser state)")
DEVICE_SCRIPT = os.path.join(ROOT, "benchmarks", "torch_device.py")


def last_json(stdout: str, what: str) -> dict:
  lines = [line for line in stdout.splitlines() if line.startswith("{")]
  if not lines:
    raise RuntimeError(f"{what} printed no JSON:\n{stdout[-2000:]}")
  return json.loads(lines[-1])


def run(command: list[str], env: dict[str, str], what: str) -> dict:
  done = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, check=False)
  if done.returncode:
    raise RuntimeError(f"{what} failed (exit {done.returncode}):\n{done.stderr[-3000:]}")
  return last_json(done.stdout, what)


def main(argv):
  del argv
  threads = _THREADS.value or len(os.sched_getaffinity(0))
  check = subprocess.run([_TORCH_PYTHON.value, "-c", "import torch"], capture_output=True,
                         check=False)
  if check.returncode:
    print(f"torch is not importable by {_TORCH_PYTHON.value}; give --torch_python (a separate "
          f"venv with `pip install torch==2.13.0`)", file=sys.stderr)
    sys.exit(2)
  if not os.path.exists(_TORCH_SCRIPT.value):
    print(f"{_TORCH_SCRIPT.value}: no such file; give --torch_script", file=sys.stderr)
    sys.exit(2)
  env = dict(os.environ, OMP_NUM_THREADS=str(threads),
             PYTHONPATH=os.pathsep.join(p for p in (ROOT, os.environ.get("PYTHONPATH")) if p))
  if _DEVICE.value == "cpu":
    env["JAX_PLATFORMS"] = "cpu"
  results = {"benchmark": "compare_torch", "machine": f"{platform.machine()}, "
             f"{os.cpu_count()} cores", "device": _DEVICE.value, "dtype": _DTYPE.value,
             "threads": threads, "rounds": _ROUNDS.value,
             "steps": _STEPS.value, "shapes": []}
  for shape in _SHAPES.value.split(";"):
    b, t, s, f = (int(v) for v in shape.split(","))
    shape_args = ["--batch", str(b), "--frames", str(t), "--size", str(s), "--filters", str(f),
                  "--steps", str(_STEPS.value)]
    torch_cmd = [_TORCH_PYTHON.value, _TORCH_SCRIPT.value, *shape_args, "--threads", str(threads)]
    if _DEVICE.value != "cpu" or _DTYPE.value != "float32":  # torch_vnet.py: CPU, float32 only
      torch_cmd = [_TORCH_PYTHON.value, DEVICE_SCRIPT, "--torch_script", _TORCH_SCRIPT.value,
                   "--device", _DEVICE.value, "--dtype", _DTYPE.value, *shape_args,
                   "--threads", str(threads)]
    jax_cmd = [sys.executable, os.path.join(ROOT, "benchmarks", "train_step.py"),
               "--peer-comparable", "--dtype", _DTYPE.value, *shape_args]
    if _IMPLS.value:
      jax_cmd += ["--impls", _IMPLS.value]
    runs = {"torch": [], "jax": []}
    for r in range(_ROUNDS.value):
      runs["torch"].append(run(torch_cmd, env, f"PyTorch {shape}"))
      runs["jax"].append(run(jax_cmd, env, f"JAX {shape}"))
      print(f"shape {shape} round {r + 1}: torch {runs['torch'][-1]['median_step_s']:.3f} s, "
            f"jax {runs['jax'][-1]['median_step_s']:.3f} s", file=sys.stderr, flush=True)
    medians = {k: statistics.median(v["median_step_s"] for v in runs[k]) for k in runs}
    results["shapes"].append({
        "batch": b, "frames": t, "size": s, "filters": f,
        "torch_median_step_s": [v["median_step_s"] for v in runs["torch"]],
        "jax_median_step_s": [v["median_step_s"] for v in runs["jax"]],
        "jax_impls": runs["jax"][-1]["impls"], "torch_version": runs["torch"][-1]["torch"],
        "jax_device": runs["jax"][-1]["device"], "jax_version": runs["jax"][-1]["jax"],
        "jax_first_step_s": [v["first_step_s"] for v in runs["jax"]],
        "torch_first_step_s": [v["first_step_s"] for v in runs["torch"]],
        "ratio_jax_over_torch": round(medians["jax"] / medians["torch"], 3)})
    print(json.dumps(results["shapes"][-1]), flush=True)
  fileio.write_json(_OUT.value, results)
  print(f"wrote {_OUT.value}", file=sys.stderr)


if __name__ == "__main__":
  app.run(main)
