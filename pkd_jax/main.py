"""Entry point: ``python -m pkd_jax.main --config=configs/student.py:pkd,demo --workdir=runs/demo``.

Roles: "student" (configs/student.py: the whole distillation job, pkd_jax.job) and "teacher"
(configs/teacher.py: one teacher, pkd_jax.train).

Thin by design: parses the config (ml_collections config file with a config string; fields can
be overridden, e.g. ``--config.train.steps=100``) and dispatches on ``config.role``. Errors in the
user's input end with a one-line message and exit status 2.
"""

import re
import sys

from absl import app, flags, logging
from ml_collections import config_flags

from pkd_jax import job, parallel, runtime, train
from pkd_jax.errors import InputError, exit_on_input_error

_CONFIG = config_flags.DEFINE_config_file("config", None, "config file, e.g. configs/teacher.py:8",
                                          lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "folder for checkpoints, logs and results")
_MODE = flags.DEFINE_enum("mode", "train", ["train", "evaluate"],
                          "train (and, for students, evaluate), or only evaluate what the "
                          "workdir holds on the test split and write the report")
flags.mark_flags_as_required(["config", "workdir"])

ROLES = {("teacher", "train"): train.train_and_evaluate,
         ("teacher", "evaluate"): job.evaluate_teacher,
         ("student", "train"): job.run_student_job,
         ("student", "evaluate"): lambda config, workdir: job.Job(config, workdir).report()}


@exit_on_input_error
def run(config, workdir: str, mode: str = "train"):
  if (config.role, mode) not in ROLES:
    raise InputError("config.role", f"unknown role {config.role!r}; valid: teacher, student")
  logging.info("config:\n%s", config)
  return ROLES[(config.role, mode)](config, workdir)


def _innermost(error: BaseException) -> tuple[BaseException, str]:
  """The exception that a chain of wrappers carries, and its message as plain text.

  ml_collections wraps a KeyError (whose str() is the repr of its message) in an AttributeError:
  str() of the outer one is escaped twice over. The message is args[0] of the innermost one.
  """
  while error.args and isinstance(error.args[0], BaseException):
    error = error.args[0]
  text = error.args[0] if error.args and isinstance(error.args[0], str) else str(error)
  return error, text.strip()


def parse_flags(argv: list[str]) -> list[str]:
  """absl flag parsing with config errors reported in one line (exit 2) instead of a traceback."""
  try:
    return flags.FLAGS(argv)
  except (flags.Error, AttributeError, KeyError, ValueError, TypeError) as e:
    inner, text = _innermost(e)
    lines = [line.strip() for line in text.splitlines() if line.strip()] or [type(inner).__name__]
    if isinstance(inner, (AttributeError, KeyError)):  # an override of a field that does not exist
      name = lines[0].strip("\"'")
      where = [a.split("=")[0] for a in argv[1:] if a.startswith("--config.") and
               a.split("=")[0].split(".")[-1] == name] or ["--config"]
      hint = "".join(f"; {line[0].lower()}{line[1:]}" for line in lines[1:])
      message = f"{where[0]}: no such config field {name!r}{hint}"
    else:
      flag = next((a for a in argv[1:] if a.startswith("--config")), "--config")
      last = re.sub(r"^\w+Error: ", "", lines[-1])  # the config file's own error, unprefixed
      message = last if last.startswith("flag --") else f"{flag}: {last}"
    print(f"error: {message}", file=sys.stderr)
    sys.exit(2)


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
  if _CONFIG.value.train.get("distributed", False):  # before JAX does anything else
    parallel.initialize_distributed()
  runtime.enable_compilation_cache()
  verbosity = flags.FLAGS["verbosity"]  # absl's own flag: --verbosity=0 shows library INFO lines
  runtime.set_library_logging(verbosity.value if verbosity.present else None)
  run(_CONFIG.value, _WORKDIR.value, _MODE.value)


if __name__ == "__main__":
  app.run(main, flags_parser=parse_flags)
