import importlib.metadata
import os

import jax
import pytest

jax.config.update("jax_enable_x64", True)

# diffrax 0.7.0's `SaveAt(steps=...)` is a bool: any true value saves every step.
# (Older versions are refused.)
_DIFFRAX_BOOL_STEPS = importlib.metadata.version("diffrax").startswith("0.7.0")


def pytest_configure(config):
    config.addinivalue_line(
        "markers",
        "int_steps: needs `SaveAt(steps=n)` to save every n-th step (diffrax 0.7.1 "
        "and later); skipped on diffrax 0.7.0",
    )


def pytest_runtest_setup(item):
    if _DIFFRAX_BOOL_STEPS and item.get_closest_marker("int_steps"):
        pytest.skip("diffrax 0.7.0: `SaveAt(steps=n)` saves every step, not every n-th")


@pytest.fixture(autouse=True, scope="module")
def _free_compiled_programs():
    """Frees each test module's compiled programs when it ends. Every compiled CPU
    program holds memory mappings, and one process running the whole suite would
    otherwise reach the kernel's limit on them (`vm.max_map_count`, 65530 here) and
    abort inside XLA's compiler."""
    yield
    jax.clear_caches()


def pytest_collection_finish(session):
    if os.environ.get("PYTEST_XDIST_WORKER"):
        return  # Under `pytest -n`, the worker given `test_notebooks.py` runs them.
    # Notebooks run in their own kernels: start them now, in the background, so that
    # they use the core JAX's single-threaded compilation leaves idle.
    paths = [
        item.callspec.params["path"]
        for item in session.items
        if item.originalname == "test_notebook_executes"
    ]
    if paths:
        from . import test_notebooks

        test_notebooks.start(paths)
