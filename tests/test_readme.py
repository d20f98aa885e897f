"""The README's first example, which the documentation's home page includes from it:
it runs, and the two adjoints it prints agree, save-time derivatives included."""

import contextlib
import io
import pathlib
import re

import numpy as np
import pytest

ROOT = pathlib.Path(__file__).parent.parent

pytestmark = pytest.mark.quick


def _region(text, name):
    """The text between `--8<-- [start:NAME]` and `--8<-- [end:NAME]` (the markers of
    pymdownx.snippets, which the documentation includes by name)."""
    start = re.search(rf"--8<-- \[start:{name}\].*\n", text)
    end = re.search(rf".*--8<-- \[end:{name}\]", text)
    assert start and end, name
    return text[start.end() : end.start()]


def test_first_example_agrees_with_recursive_checkpoint_adjoint():
    example = _region((ROOT / "README.md").read_text(), "first-example")
    code = re.search(r"```python\n(.*?)```", example, re.S).group(1)
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        exec(compile(code, "README.md", "exec"), {})
    lines = printed.getvalue().splitlines()
    assert [line.split()[0] for line in lines] == [
        "ReversibleAdjoint",
        "RecursiveCheckpointAdjoint",
    ]
    ours, theirs = (
        np.array([float(x) for x in re.findall(r"-?\d+\.\d+(?:e-?\d+)?", line)])
        for line in lines
    )
    assert ours.shape == theirs.shape == (4,)  # d/dparams, and one per save time
    np.testing.assert_allclose(ours, theirs, rtol=1e-5)


@pytest.mark.parametrize(
    "page, region",
    [
        ("index.md", "first-example"),
        ("index.md", "requirements"),
        ("which_adjoint.md", "forward-mode"),
    ],
)
def test_docs_include_the_readme(page, region):
    """One source for the example, the supported versions and the forward-mode
    advice: the pages include the README's text rather than a copy of it."""
    _region((ROOT / "README.md").read_text(), region)
    assert f'--8<-- "README.md:{region}"' in (ROOT / "docs" / page).read_text()
