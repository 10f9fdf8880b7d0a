"""pkd_jax.runtime.environment: what a run's numbers depend on besides its config and code."""

import json
import platform

import jax

from pkd_jax import runtime


def test_cpu_description_names_the_model_and_its_widest_vector_extension(tmp_path):
  def described(text):
    path = tmp_path / "cpuinfo"
    path.write_text(text)
    return runtime.cpu_description(str(path))

  model = "model name\t: Some CPU @ 2.60GHz\n"
  assert described(model + "flags\t\t: fpu sse avx fma avx2 avx512f avx512bw\n") == (
      "Some CPU @ 2.60GHz, AVX-512")
  assert described(model + "flags\t\t: fpu sse avx fma avx2\n") == "Some CPU @ 2.60GHz, AVX2"
  assert described(model + "flags\t\t: fpu sse\n") == "Some CPU @ 2.60GHz"
  # Every core repeats its block: the first one is read.
  assert described(model + "flags\t: avx\n\n" + model.replace("Some", "Other") + "flags\t: avx2\n"
                   ) == "Some CPU @ 2.60GHz, AVX"
  assert described("processor\t: 0\n") == platform.machine()  # no model name (e.g. some ARM)
  assert runtime.cpu_description(str(tmp_path / "missing")) == platform.machine()


def test_environment_records_versions_backend_cpu_and_xla_flags(monkeypatch):
  monkeypatch.setenv("XLA_FLAGS", "--xla_backend_optimization_level=0")
  env = runtime.environment()
  assert env["packages"]["jax"] == jax.__version__
  assert set(env["packages"]) == set(runtime.NUMERIC_PACKAGES)
  assert env["backend"] == jax.default_backend()
  assert env["devices"].startswith(f"{len(jax.devices())} x ")
  assert env["xla_flags"] == "--xla_backend_optimization_level=0"
  assert env["python"] == platform.python_version()
  assert json.loads(json.dumps(env)) == env  # goes into the experiments' JSON as it is
