"""Every notebook in notebooks/ runs top to bottom in a real kernel (nbclient); then the
checks particular to some of them.

A new notebook is picked up by itself. Conventions it can use:
- a cell tagged ``shows-job-error`` may show an error output (a failed job's traceback, shown by
  ``receive``), and one tagged ``shows-stderr`` may show stderr; anywhere else an error output, a
  traceback, stderr or an ``Error in callback`` fails the test (tests/user_sees.py); a cell that itself raises fails
  nbclient unless tagged ``raises-exception``;
- notebook metadata ``"rjobs": {"needs": ["ssh"]}`` runs it only with the real-sshd lab
  (the ``ssh`` marker); its hosts then come from the lab's ssh_config (``JUPYTER_RJOBS_SSH_CONFIG``).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Callable

import nbformat
import pytest
from nbclient import NotebookClient
from user_sees import assert_user_sees_no_noise, from_notebook

NOTEBOOK_DIR = Path(__file__).parent.parent / "notebooks"
NOTEBOOKS = sorted(NOTEBOOK_DIR.glob("*.ipynb"))
ERROR_TAG = "shows-job-error"
WIDGET_VIEW = "application/vnd.jupyter.widget-view+json"


def _param(path: Path) -> Any:
    needs = json.loads(path.read_text()).get("metadata", {}).get("rjobs", {}).get("needs", [])
    marks = [pytest.mark.ssh] if "ssh" in needs else []
    return pytest.param(path, marks=marks, id=path.name)


@pytest.fixture(scope="module")
def executed(tmp_path_factory: pytest.TempPathFactory, request: pytest.FixtureRequest) -> Callable[[Path], Any]:
    """Run a notebook once per test module (the generic test and the specific ones share the run)."""
    done: dict[Path, Any] = {}

    def run(path: Path) -> Any:
        if path not in done:
            work = tmp_path_factory.mktemp(path.stem)
            with pytest.MonkeyPatch.context() as patch:
                patch.setenv("IPYTHONDIR", str(work / "ipython"))
                if "ssh" in json.loads(path.read_text()).get("metadata", {}).get("rjobs", {}).get("needs", []):
                    lab = request.getfixturevalue("ssh_lab")
                    patch.setenv("JUPYTER_RJOBS_SSH_CONFIG", str(lab.ssh_config))
                    patch.setenv("RJOBS_DEMO_HOST", "server01")
                    patch.setenv("RJOBS_DEMO_HOSTS", "server01,nshost1")
                notebook = nbformat.read(path, as_version=4)
                NotebookClient(notebook, timeout=120, kernel_name="python3", resources={"metadata": {"path": str(work)}}).execute()
            done[path] = notebook
        return done[path]

    return run


def outputs_of(notebook: Any) -> list[Any]:
    return [output for cell in notebook.cells if cell.cell_type == "code" for output in cell.get("outputs", [])]


@pytest.mark.kernel
@pytest.mark.parametrize("path", [_param(p) for p in NOTEBOOKS])
def test_every_notebook_runs_top_to_bottom(path: Path, executed: Callable[[Path], Any]) -> None:
    notebook = executed(path)
    stray_errors = [
        (index, output.get("ename"))
        for index, cell in enumerate(notebook.cells)
        if cell.cell_type == "code" and ERROR_TAG not in cell.metadata.get("tags", [])
        for output in cell.get("outputs", [])
        if output.output_type == "error"
    ]
    assert stray_errors == []
    assert_user_sees_no_noise(from_notebook(notebook, path.name))
    assert notebook.metadata.get("kernelspec", {}).get("name") == "python3"  # JupyterLab opens it without asking


@pytest.mark.kernel
def test_the_quickstart_shows_what_it_says(executed: Callable[[Path], Any]) -> None:
    outputs = outputs_of(executed(NOTEBOOK_DIR / "01-quickstart.ipynb"))
    errors = [o for o in outputs if o.output_type == "error"]
    assert [e.ename for e in errors] == ["ZeroDivisionError"]  # the one failing job, shown by receive
    text = "".join(o.get("text", "") for o in outputs if o.output_type == "stream")
    assert "step 0\nstep 1\nstep 2\n" in text
    values = [o["data"].get("text/plain") for o in outputs if o.output_type == "execute_result"]
    assert "499999500000" in values and "998500500" in values and "42" in text
    html = [o["data"].get("text/html", "") for o in outputs if o.output_type in ("display_data", "execute_result")]
    assert any("<b>bold, from a job</b>" in h for h in html)


@pytest.mark.kernel
def test_the_panel_notebook_shows_a_panel_and_progress(executed: Callable[[Path], Any]) -> None:
    notebook = executed(NOTEBOOK_DIR / "04-panel.ipynb")
    panel_cell = next(cell for cell in notebook.cells if cell.cell_type == "code" and "%rjob panel" in cell.source)
    views = [o["data"].get(WIDGET_VIEW) for o in panel_cell.outputs if o.output_type == "execute_result"]
    assert len(views) == 1 and views[0]["model_id"]  # the panel (each %%rjob start cell shows its job's card)
    tables = [o["data"]["text/plain"] for o in outputs_of(notebook) if o.output_type == "execute_result" and "Progress" in o["data"]["text/plain"]]
    rows = {line.split()[1]: line for line in tables[-1].splitlines()[2:]}
    assert "100%" in rows["counting"] and "100%" in rows["with-tqdm"] and "Running" in rows["long-runner"]


@pytest.mark.kernel
@pytest.mark.ssh
def test_the_remote_notebook_shows_each_cache_and_the_fan_out(executed: Callable[[Path], Any]) -> None:
    outputs = outputs_of(executed(NOTEBOOK_DIR / "02-remote-jobs.ipynb"))
    text = "".join(o.get("text", "") for o in outputs if o.output_type == "stream")
    assert "4 16\n" in text and "computed on the host" in text
    values = [o["data"].get("text/plain", "") for o in outputs if o.output_type == "execute_result"]
    assert any("'a big result, fetched only when asked'" in v for v in values)
    assert any("'server01'" in v and "'nshost1'" in v for v in values)  # {host: value}


@pytest.mark.kernel
@pytest.mark.ssh
def test_the_sessions_notebook_keeps_variables_and_re_attaches(executed: Callable[[Path], Any]) -> None:
    outputs = outputs_of(executed(NOTEBOOK_DIR / "03-sessions-and-detached-jobs.ipynb"))
    values = [o["data"].get("text/plain", "") for o in outputs if o.output_type == "execute_result"]
    assert "45" in values and "90" in values and "False" in values and "91" in values
    text = "".join(o.get("text", "") for o in outputs if o.output_type == "stream")
    assert all(f"tick {i}" in text for i in range(10))
    assert "[s1@server01]" in text


@pytest.mark.kernel
def test_the_local_sessions_notebook_keeps_the_table_and_receives_the_rest(executed: Callable[[Path], Any]) -> None:
    outputs = outputs_of(executed(NOTEBOOK_DIR / "06-local-sessions-survive-the-kernel.ipynb"))
    values = [o["data"].get("text/plain", "") for o in outputs if o.output_type == "execute_result"]
    assert any("1,000,000 rows, table[1234] = 1522756" in v for v in values), values  # the session's table, after connect
    assert "285" in values  # a cell run in the entered session
    text = "".join(o.get("text", "") for o in outputs if o.output_type == "stream")
    assert [line for line in text.splitlines() if line.startswith("step")] == [f"step {i}" for i in range(5)]  # each once
    assert "'finished while nobody watched'" in values
    assert "[data@localhost]" in text and "Closed session data on localhost" in text


@pytest.mark.kernel
def test_the_card_notebook_shows_cards_and_receive_still_gets_everything(executed: Callable[[Path], Any]) -> None:
    notebook = executed(NOTEBOOK_DIR / "05-job-card.ipynb")
    starts = [cell for cell in notebook.cells if cell.cell_type == "code" and cell.source.startswith("%%rjob start")]
    shown = [[o["data"] for o in cell.outputs if o.output_type == "execute_result"] for cell in starts]
    assert [WIDGET_VIEW in data[0] for data in shown] == [True, True, False]  # two cards, then --no-card's table
    assert all("PSJobTypeName" in data[0]["text/plain"] and "<table" in data[0]["text/html"] for data in shown)
    state = notebook.metadata["widgets"]["application/vnd.jupyter.widget-state+json"]["state"]  # as nbclient saved it
    values = " ".join(str(model["state"].get("value", "")) for model in state.values())
    assert "data-state='Completed'" in values and "step 10" in values and "value: 499999500000" in values
    assert "FileNotFoundError: [Errno 2] No such file or directory: &#x27;no-such-data.csv&#x27;" in values
    receive = next(cell for cell in notebook.cells if cell.source.startswith("%rjob receive crunch"))
    text = "".join(o.get("text", "") for o in receive.outputs if o.output_type == "stream")
    assert text.startswith("".join(f"step {i}\n" for i in range(1, 11)))  # the card only looked (then: the progress line)
    free = next(cell for cell in notebook.cells if "this cell runs while" in cell.source)
    assert [o.get("text") for o in free.outputs] == ["this cell runs while crunch runs\n"]


@pytest.mark.kernel
def test_nbconvert_shows_a_card_without_widget_state_as_the_table(tmp_path: Path) -> None:
    from nbconvert import HTMLExporter

    notebook = nbformat.v4.new_notebook(cells=[
        nbformat.v4.new_code_cell("%load_ext jupyter_rjobs"),
        nbformat.v4.new_code_cell("%%rjob start --thread --name exported\n6 * 7"),
    ], metadata={"kernelspec": {"name": "python3", "display_name": "Python 3", "language": "python"}})
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("IPYTHONDIR", str(tmp_path / "ipython"))
        NotebookClient(notebook, timeout=120, kernel_name="python3", store_widget_state=False,
                       resources={"metadata": {"path": str(tmp_path)}}).execute()
    assert WIDGET_VIEW in notebook.cells[1].outputs[0]["data"]  # a card in the notebook ...
    html, _ = HTMLExporter().from_notebook_node(notebook)
    assert "rjob-table" in html and "exported" in html and "ThreadJob" in html  # ... the table in the HTML
