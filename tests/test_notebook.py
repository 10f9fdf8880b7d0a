"""notebooks/quickstart.ipynb, executed at the "test" scale so that it cannot rot, and stored clean."""

import json
import pathlib

import nbformat
import nibabel as nib
import numpy as np
import pytest
from nbclient import NotebookClient

REPO = pathlib.Path(__file__).resolve().parents[1]
NOTEBOOK = REPO / "notebooks" / "quickstart.ipynb"
CELL_TIMEOUT_S = 900  # the training cell; at the test scale it takes a few minutes at most
PREDICTION_RUNS = ("student_pkd", "x1")  # the notebook predicts with the student and teacher x1
MAP_FILES = ("tmax.nii.gz", "cbv.nii.gz", "cbf.nii.gz")


def _outputs(notebook, output_type=None):
  return [out for cell in notebook.cells if cell.cell_type == "code" for out in cell.outputs
          if output_type is None or out.output_type == output_type]


def test_notebook_is_stored_without_outputs():
  notebook = nbformat.read(NOTEBOOK, as_version=4)
  nbformat.validate(notebook)
  code = [cell for cell in notebook.cells if cell.cell_type == "code"]
  assert len(code) >= 7
  assert not _outputs(notebook), "clear the notebook's outputs before committing it"
  assert all(cell.execution_count is None for cell in code)


@pytest.mark.slow
def test_notebook_runs_at_test_scale(tmp_path, monkeypatch):
  workdir = tmp_path / "notebook"
  monkeypatch.setenv("PKD_NOTEBOOK_SCALE", "test")  # the kernel inherits this process's environment
  monkeypatch.setenv("PKD_NOTEBOOK_WORKDIR", str(workdir))
  notebook = nbformat.read(NOTEBOOK, as_version=4)
  client = NotebookClient(notebook, kernel_name="python3", timeout=CELL_TIMEOUT_S,
                          resources={"metadata": {"path": str(REPO)}})
  client.execute()  # raises CellExecutionError, with the cell and its traceback, if a cell fails

  text = "".join(out.get("text", "") for out in _outputs(notebook, "stream"))
  assert "scale 'test'" in text
  # The student's job: results, and a teacher schedule that went through all four teachers (the
  # test scale's cap switches every epoch).
  for name in ("results_pkd.md", "results_pkd.png", "results_pkd.json"):
    assert (workdir / name).is_file(), name
  assert "student (pkd)" in (workdir / "results_pkd.md").read_text()
  schedule = json.loads((workdir / "student_pkd" / "schedule.json").read_text())
  assert [entry["teacher"] for entry in schedule] == ["x8", "x4", "x2", "x1"]
  assert all(f"teacher {name} (" in text for name in ("x8", "x4", "x2", "x1"))
  # The prediction: three maps per run on the written scan's grid, finite, not all zero.
  scans = list((workdir / "scans").glob("case_1/*CT_4DPWI*/*.nii*"))
  assert len(scans) == 1
  grid = nib.load(scans[0]).shape[:3]
  for run in PREDICTION_RUNS:
    for name in MAP_FILES:
      data = np.asarray(nib.load(workdir / "predicted" / run / name).dataobj)
      assert data.shape == grid, (run, name)
      assert np.isfinite(data).all() and np.any(data != 0), (run, name)
  # The figures were shown inline: phantom, learning curves, results, overview, comparison.
  images = [out for out in _outputs(notebook) if "image/png" in out.get("data", {})]
  assert len(images) == 5
  assert (workdir / "predicted" / "comparison.png").is_file()
  rmse_rows = [line for line in text.splitlines() if "Tmax" in line and "CBF" in line
               and line.startswith("  ")]
  assert len(rmse_rows) == len(PREDICTION_RUNS) + 1  # the two runs and the constant
