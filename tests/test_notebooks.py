"""Every notebook in notebooks/ runs top to bottom in a real kernel (nbclient), without errors
except where a cell is meant to show one."""

from __future__ import annotations

from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

NOTEBOOKS = sorted((Path(__file__).parent.parent / "notebooks").glob("*.ipynb"))


@pytest.mark.kernel
@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.name for p in NOTEBOOKS])
def test_the_notebook_runs_top_to_bottom(path, tmp_path, monkeypatch):
    monkeypatch.setenv("IPYTHONDIR", str(tmp_path / "ipython"))
    notebook = nbformat.read(path, as_version=4)
    NotebookClient(notebook, timeout=120, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}).execute()
    outputs = [output for cell in notebook.cells if cell.cell_type == "code" for output in cell.get("outputs", [])]
    errors = [o for o in outputs if o.output_type == "error"]
    assert [e.ename for e in errors] == ["ZeroDivisionError"]  # the one failing job, shown by receive
    text = "".join(o.get("text", "") for o in outputs if o.output_type == "stream")
    assert "step 0\nstep 1\nstep 2\n" in text
    values = [o["data"].get("text/plain") for o in outputs if o.output_type == "execute_result"]
    assert "499999500000" in values and "998500500" in values and "42" in text
    html = [o["data"].get("text/html", "") for o in outputs if o.output_type in ("display_data", "execute_result")]
    assert any("<b>bold, from a job</b>" in h for h in html)
