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

  # One from another host is respected; an empty one nobody locks (its writer died) is not.
  path.write_text(json.dumps({"pid": 1, "host": "elsewhere"}))
  assert fileio.claim_holder(path) == "pid 1 on elsewhere"
  with fileio.claim(path) as owner:
    assert owner == "pid 1 on elsewhere"
  path.write_text("")
  assert fileio.claim_holder(path) is None
  with fileio.claim(path) as owner:
    assert owner is None
  assert not path.exists()


_HOLD = """
import os, sys, time
from pkd_jax import fileio
path, go, release = sys.argv[1:4]
while not os.path.exists(go):  # start together
  time.sleep(0.001)
with fileio.claim(path) as owner:
  print("won" if owner is None else "lost", flush=True)
  while owner is None and not os.path.exists(release):  # the winner holds until released
    time.sleep(0.01)
"""


def test_a_killed_holder_frees_its_claim_and_racers_for_a_stale_one_get_one_winner(tmp_path):
  """The claim is an flock: a holder killed outright (no clean-up) leaves its file but not its
  lock, and of several processes racing for a stale claim exactly one takes it."""
  path, go, release = tmp_path / "unit.lock", tmp_path / "go", tmp_path / "release"
  go.touch()
  holder = subprocess.Popen([sys.executable, "-c", _HOLD, str(path), str(go), str(release)],
                            text=True, stdout=subprocess.PIPE)
  assert holder.stdout.readline().strip() == "won"
  assert fileio.claim_holder(path) == f"pid {holder.pid} on {socket.gethostname()}"
  with fileio.claim(path) as owner:
    assert owner == f"pid {holder.pid} on {socket.gethostname()}"
  holder.kill()
  holder.wait()
  assert path.exists() and fileio.claim_holder(path) is None  # stale: file left, lock gone

  go.unlink()
  racers = [subprocess.Popen([sys.executable, "-c", _HOLD, str(path), str(go), str(release)],
                             text=True, stdout=subprocess.PIPE) for _ in range(4)]
  go.touch()
  results = sorted(r.stdout.readline().strip() for r in racers)
  release.touch()
  for r in racers:
    r.wait()
  assert results == ["lost"] * 3 + ["won"], results
  assert not path.exists()
