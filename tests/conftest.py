import jax


jax.config.update("jax_enable_x64", True)


def pytest_collection_finish(session):
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
