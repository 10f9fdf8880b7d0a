"""benchmarks/profile_summary.py: a jax.profiler trace summarised by event name and kind."""

import json

import jax
import jax.numpy as jnp
import pytest

from benchmarks import profile_summary


def test_event_kinds_drop_the_numbers_only():
  assert profile_summary.kind("input_reduce_fusion.3") == "input_reduce_fusion"
  assert profile_summary.kind("loop_pad_fusion_12") == "loop_pad_fusion"
  assert profile_summary.kind("cudnn-conv-bias-activation.290") == "cudnn-conv-bias-activation"
  assert profile_summary.kind("copy") == "copy"


def test_a_traced_program_is_summarised_by_its_busiest_events(tmp_path):
  f = jax.jit(lambda x: jnp.tanh(x @ x).sum())
  x = jnp.ones((128, 128))
  f(x).block_until_ready()
  with jax.profiler.trace(str(tmp_path)):
    for _ in range(3):
      f(x).block_until_ready()
  xplane = profile_summary.find_xplane(str(tmp_path))
  assert xplane.endswith(".xplane.pb")
  summary = profile_summary.summarise(xplane, top=5)
  assert summary["lines"], "no line of the trace was summarised"
  for line in summary["lines"].values():
    assert line["total_ms"] > 0
    for ranking in (line["top"], line["top_kinds"]):
      assert 1 <= len(ranking) <= 5
      times = [event["ms"] for event in ranking]
      assert times == sorted(times, reverse=True)
      assert all(0 <= event["share"] <= 1 and event["count"] >= 1 for event in ranking)
      assert sum(event["share"] for event in ranking) <= 1 + 1e-3
  out = tmp_path / "summary.json"  # the command line: the folder, --top, --out
  profile_summary.main([str(tmp_path), "--top", "3", "--out", str(out)])
  written = json.loads(out.read_text())
  assert written["xplane"] == xplane and set(written["lines"]) == set(summary["lines"])
  assert all(len(line["top"]) <= 3 for line in written["lines"].values())


def test_a_folder_without_a_trace_is_a_clear_error(tmp_path):
  with pytest.raises(SystemExit, match=f"{tmp_path}: no .xplane.pb trace"):
    profile_summary.find_xplane(str(tmp_path))
