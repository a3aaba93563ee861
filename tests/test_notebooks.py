"""The tutorials are executed, top to bottom, by the test suite: their cells assert."""

from pathlib import Path

import nbformat
import pytest

pytestmark = pytest.mark.notebooks

NOTEBOOKS = sorted((Path(__file__).parent.parent / "notebooks").glob("*.ipynb"))
SERIES = ["00_overview", "01_feature_fusion", "02_draft_head", "03_training_time_test", "04_dynamic_tree",
          "05_verification", "06_end_to_end", "07_batching",
          "08_what_each_idea_buys"]


def test_the_series_is_complete():
    assert [p.stem for p in NOTEBOOKS] == SERIES


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_notebook_is_committed_without_outputs(path):
    notebook = nbformat.read(path, as_version=4)
    for cell in notebook.cells:
        if cell.cell_type == "code":
            assert not cell.outputs and cell.execution_count is None, "strip outputs before committing"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_notebook_runs_top_to_bottom(path, executed_notebooks):
    # A failing assert in any cell raises CellExecutionError naming the cell.
    notebook = nbformat.read(executed_notebooks(path), as_version=4)
    code = [cell for cell in notebook.cells if cell.cell_type == "code"]
    assert len(code) >= 3
    assert all(cell.execution_count is not None for cell in code)
    # A notebook that prints but checks nothing proves nothing.
    assert sum("assert" in cell.source for cell in code) >= 2
