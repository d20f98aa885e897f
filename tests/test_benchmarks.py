"""Smoke tests of the benchmark scripts in their quick modes (no timing assertions)."""

import importlib.util
import json
import pathlib
import sys

import pytest

BENCHMARKS = pathlib.Path(__file__).parent.parent / "benchmarks"


def _load(name):
    sys.path.insert(0, str(BENCHMARKS))  # the scripts import each other
    try:
        spec = importlib.util.spec_from_file_location(
            f"{name}_benchmark", BENCHMARKS / f"{name}.py"
        )
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
    finally:
        sys.path.remove(str(BENCHMARKS))
    return module


@pytest.mark.slow
def test_quick_benchmark(tmp_path, capsys):
    _load("adjoints").main(["--quick", "--output", str(tmp_path)])
    printed = capsys.readouterr().out
    assert "| ReversibleHeun | ReversibleAdjoint |" in printed
    rows = json.loads((tmp_path / "results.json").read_text())["rows"]
    ours = [
        r for r in rows if r["method"] == "ReversibleAdjoint" and r["problem"] == "mlp"
    ]
    assert ours and all(r["error"] < 1e-10 for r in ours)
    assert (tmp_path / "adjoints.png").stat().st_size > 0


def test_floor_reference(capsys):
    """The hand-written reference computes the same gradient as `ReversibleAdjoint`
    (the script checks it before timing)."""
    _load("floor").main(["--steps", "20", "--repeats", "1"])
    printed = capsys.readouterr().out
    assert "| hand-written reference |" in printed
