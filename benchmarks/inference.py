"""Benchmark: inference time per 256 x 256 x 40 slice and per 16-slice case, printed and as JSON.

    python benchmarks/inference.py [--filters 16] [--impl auto|fast|plain] [--batch 4] [--out FILE]

The network: the paper-size V-Net (F = 16, T = 32) applied to whole 256 x 256 slices (the
T-window rule of pkd_jax.inference), compile time reported separately from the timed calls. bSVD:
block-circulant truncated SVD deconvolution (pkd_jax.deconvolution) of a phantom case with its
true AIF. Both on random-initialised / phantom inputs: speed does not depend on the values.
"""

import json
import os
import platform
import time

import jax
import jax.numpy as jnp
import numpy as np
from absl import app, flags

from pkd_jax import deconvolution, fileio, inference, models
from pkd_jax.data import phantom
from pkd_jax.models import vnet

_FILTERS = flags.DEFINE_integer("filters", 16, "V-Net width F")
_IMPL = flags.DEFINE_enum("impl", "auto", ["auto", "fast", "plain"],
                          "convolution forms: the backend's choice (vnet.AUTO_IMPLS), the CPU's "
                          "fast exact forms, or the plain lax convolutions")
_BATCH = flags.DEFINE_integer("batch", 4, "slices per network call")
_SLICES = flags.DEFINE_integer("slices", 16, "slices of the timed case")
_OUT = flags.DEFINE_string("out", "benchmarks/results/inference.json", "JSON output path")


def main(argv):
  del argv
  auto = dict.fromkeys(vnet.PLAIN_IMPLS, "auto")
  impls = {"auto": vnet.resolve_impls(jax.default_backend(), **auto),
           "fast": vnet.FAST_IMPLS, "plain": vnet.PLAIN_IMPLS}[_IMPL.value]
  model = models.get_model("vnet", filters=_FILTERS.value, num_frames=32, **impls)
  x = jnp.zeros((_BATCH.value, 40, 256, 256, 1), jnp.float32)  # whole 40-frame series
  variables = jax.jit(lambda k: model.init(k, x[:1, :32], train=False))(
      jax.random.key(0, impl="rbg"))
  start = time.perf_counter()
  compiled = inference.predict_batch_fn(model).lower(
      variables, x, model=model, window_frames=32, stride=inference.DEFAULT_WINDOW_STRIDE).compile()
  compile_s = time.perf_counter() - start
  jax.block_until_ready(compiled(variables, x))  # warm-up
  inputs = np.random.default_rng(0).normal(size=(_SLICES.value, 40, 256, 256, 1)).astype(np.float32)
  start = time.perf_counter()
  inference.predict(model, variables, inputs, 32, batch_size=_BATCH.value)
  case_s = time.perf_counter() - start

  config = phantom.PhantomConfig(num_slices=_SLICES.value)
  case = phantom.generate_case(config, 0, 0)
  deconvolution.perfusion_maps(case.scan_hu[:1], case.aif_hu, case.frame_times_s,
                               case.masks["brain"][:1])  # compile
  start = time.perf_counter()
  deconvolution.perfusion_maps(case.scan_hu, case.aif_hu, case.frame_times_s, case.masks["brain"])
  svd_case_s = time.perf_counter() - start
  results = {
      "benchmark": "inference", "device": str(jax.devices()[0].device_kind),
      "machine": f"{platform.machine()}, {os.cpu_count()} cores", "jax": jax.__version__,
      "network": {"filters": _FILTERS.value, "impl": _IMPL.value, **impls, "batch": _BATCH.value,
                  "compile_s": round(compile_s, 2),
                  "seconds_per_slice": round(case_s / _SLICES.value, 3),
                  f"seconds_per_{_SLICES.value}_slice_case": round(case_s, 2)},
      "bsvd": {"seconds_per_slice": round(svd_case_s / _SLICES.value, 3),
               f"seconds_per_{_SLICES.value}_slice_case": round(svd_case_s, 2),
               "brain_voxels": int(case.masks["brain"].sum())},
  }
  text = json.dumps(results, indent=2)
  print(text)
  fileio.write_text(_OUT.value, text + "\n")


if __name__ == "__main__":
  app.run(main)
