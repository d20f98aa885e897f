"""Every tutorial in `notebooks/` executes from top to bottom without error.

The committed notebooks hold their outputs; here they are run again in a scratch copy
(the committed files are not modified), each cell within a time limit. Each notebook
runs in its own kernel process, so they are started in the background as soon as the
test session has collected them (`conftest.py`), and run while the other tests do:
JAX compiles on one core, and this uses the other.
"""

import concurrent.futures
import pathlib
import tempfile

import nbformat
import pytest
from nbclient import NotebookClient

pytestmark = pytest.mark.notebooks

NOTEBOOKS = sorted((pathlib.Path(__file__).parent.parent / "notebooks").glob("*.ipynb"))
_runs: dict[pathlib.Path, concurrent.futures.Future] = {}
_executor = concurrent.futures.ThreadPoolExecutor(max_workers=1)


def _execute(path):
    """Runs the notebook at `path`; returns the error outputs, and the outputs that
    show a drift warning nobody caught (a tutorial that expects one records it and
    says so)."""
    notebook = nbformat.read(path, as_version=4)
    with tempfile.TemporaryDirectory() as scratch:
        client = NotebookClient(
            notebook,
            timeout=300,
            kernel_name="python3",
            resources={"metadata": {"path": scratch}},
        )
        client.execute()
    return [
        output
        for cell in notebook.cells
        if cell.cell_type == "code"
        for output in cell.get("outputs", [])
        if output.get("output_type") == "error"
        or (
            output.get("name") == "stderr"
            and "ReconstructionDriftWarning" in output.get("text", "")
        )
    ]


def start(paths):
    """Starts running the notebooks at `paths` in the background, one at a time."""
    for path in paths:
        if path not in _runs:
            _runs[path] = _executor.submit(_execute, path)


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_executes(path):
    start([path])
    errors = _runs[path].result()
    assert not errors, errors


def test_committed_notebooks_are_executed():
    """The committed notebooks show their outputs (plots included)."""
    assert NOTEBOOKS, "no notebooks found"
    for path in NOTEBOOKS:
        notebook = nbformat.read(path, as_version=4)
        code = [c for c in notebook.cells if c.cell_type == "code"]
        assert all(c.get("execution_count") for c in code), (
            f"{path.name} has unexecuted cells"
        )
        images = [
            o
            for c in code
            for o in c.get("outputs", [])
            if "image/png" in o.get("data", {})
        ]
        assert images, f"{path.name} has no plot"
