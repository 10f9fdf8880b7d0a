"""pkd_jax.fileio: claims on work shared by several processes."""

import json
import os
import socket
import subprocess
import sys

from pkd_jax import fileio


def test_a_claim_is_exclusive_stale_ones_are_taken_over_foreign_ones_respected(tmp_path):
  path = tmp_path / "claims" / "unit.lock"
  with fileio.claim(path) as owner:
    assert owner is None and path.exists()
    assert fileio.claim_holder(path) == f"pid {os.getpid()} on {socket.gethostname()}"
    with fileio.claim(path) as second:  # a second claimant is told who holds it
      assert second == f"pid {os.getpid()} on {socket.gethostname()}"
    assert path.exists()  # the refused claimant does not remove the holder's file
  assert not path.exists() and fileio.claim_holder(path) is None

  # A claim left by a process of this host that has exited is stale: taken over.
  gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                        capture_output=True, text=True, check=True)
  path.write_text(json.dumps({"pid": int(gone.stdout), "host": socket.gethostname()}))
  assert fileio.claim_holder(path) is None
  with fileio.claim(path) as owner:
    assert owner is None and json.loads(path.read_text())["pid"] == os.getpid()
  assert not path.exists()

  # One from another host, or a file being written (not JSON yet), is respected.
  path.write_text(json.dumps({"pid": 1, "host": "elsewhere"}))
  with fileio.claim(path) as owner:
    assert owner == "pid 1 on elsewhere"
  path.write_text("")
  with fileio.claim(path) as owner:
    assert owner is not None and str(path) in owner
  assert path.exists()


def test_the_claim_is_released_when_the_work_fails(tmp_path):
  path = tmp_path / "unit.lock"
  try:
    with fileio.claim(path):
      raise KeyboardInterrupt
  except KeyboardInterrupt:
    pass
  assert not path.exists()
