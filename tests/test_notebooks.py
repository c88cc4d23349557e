"""Every notebook runs top to bottom at tiny sizes (its parameters cell with QUICK = True), as a user's kernel would."""
from __future__ import annotations

import json
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

NOTEBOOKS = sorted((Path(__file__).resolve().parents[1] / "notebooks").glob("*.ipynb"))


def test_the_five_notebooks_are_there():
    assert [p.stem for p in NOTEBOOKS] == ["01_quickstart", "02_write_an_algorithm", "03_topologies",
                                           "04_compression", "05_scaling"]


def test_every_cell_has_an_id():
    # nbformat 4.5 requires cell ids; a cell without one warns on every read, and will fail in later nbformat
    for path in NOTEBOOKS:
        cells = json.loads(path.read_text())["cells"]
        assert all("id" in c for c in cells), f"{path.name}: cells without an id: " + \
            str([i for i, c in enumerate(cells) if "id" not in c])


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_notebook_runs_at_tiny_size(path, tmp_path):
    nb = nbformat.read(path, as_version=4)
    cells = [c for c in nb.cells if "parameters" in c.metadata.get("tags", [])]
    assert len(cells) == 1 and "QUICK = False" in cells[0].source, "one parameters cell, full size by default"
    cells[0].source = cells[0].source.replace("QUICK = False", "QUICK = True")
    # the kernel starts in tmp_path: whatever a notebook writes lands there; errors raise CellExecutionError
    NotebookClient(nb, timeout=300, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}},
                   extra_arguments=["--HistoryManager.enabled=False"]).execute()
    outputs = "".join(o.get("text", "") for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", []))
    assert "Traceback" not in outputs
