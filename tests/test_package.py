"""What the installed package declares about itself: its version, and that it ships
type information (`py.typed`, PEP 561)."""

import importlib.resources
import pathlib
import re

import pytest

import reversible_adjoint as ra

pytestmark = pytest.mark.quick

ROOT = pathlib.Path(__file__).parent.parent


def test_version_is_the_project_version():
    """`reversible_adjoint.__version__` is the version in pyproject.toml, the one
    source of it."""
    project = (ROOT / "pyproject.toml").read_text()
    table = project.split("[project]", 1)[1].split("\n[", 1)[0]
    declared = re.search(r'^version = "([^"]+)"$', table, re.M).group(1)
    assert ra.__version__ == declared


def test_ships_py_typed():
    """The marker that tells type checkers to read the package's own annotations; the
    wheel takes every file of the package (`[tool.hatch.build.targets.wheel]`)."""
    marker = importlib.resources.files("reversible_adjoint") / "py.typed"
    assert marker.is_file()
    assert marker.read_text() == ""
