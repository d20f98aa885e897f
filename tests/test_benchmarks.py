"""Smoke tests of the benchmark scripts in their quick modes (no timing assertions),
each run as a script in its own process, as a user runs it."""

import json
import pathlib
import subprocess
import sys

import pytest

BENCHMARKS = pathlib.Path(__file__).parent.parent / "benchmarks"


def _run(name, *argv):
    """Runs `benchmarks/<name>.py` with `argv`; its standard output."""
    result = subprocess.run(
        [sys.executable, str(BENCHMARKS / f"{name}.py"), *argv],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stderr[-4000:]
    return result.stdout


@pytest.mark.slow
def test_quick_benchmark(tmp_path):
    printed = _run("adjoints", "--quick", "--output", str(tmp_path))
    assert "| ReversibleHeun | ReversibleAdjoint |" in printed
    rows = json.loads((tmp_path / "results.json").read_text())["rows"]
    ours = [
        r for r in rows if r["method"] == "ReversibleAdjoint" and r["problem"] == "mlp"
    ]
    assert ours and all(r["error"] < 1e-10 for r in ours)
    assert (tmp_path / "adjoints.png").stat().st_size > 0


@pytest.mark.slow
def test_gpu_script_on_cpu(tmp_path):
    """`benchmarks/gpu.sh --cpu` runs its pipeline on the CPU, with the Python already
    there (no install), and writes its results in a folder named after the device."""
    result = subprocess.run(
        ["bash", str(BENCHMARKS / "gpu.sh"), "--cpu", "--python", sys.executable]
        + ["--venv", str(tmp_path / "venv"), "--results", str(tmp_path)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    results = json.loads((tmp_path / "cpu" / "results.json").read_text())
    assert results["device"] == "cpu"
    ours = [r for r in results["rows"] if r["method"] == "ReversibleAdjoint"]
    assert ours and all(r["error"] < 1e-10 for r in ours)
    assert (tmp_path / "cpu" / "adjoints.png").stat().st_size > 0
    assert (
        "| ReversibleHeun | ReversibleAdjoint |"
        in (tmp_path / "cpu" / "log.txt").read_text()
    )
    assert not (tmp_path / "venv").exists()


@pytest.mark.slow
def test_floor_reference():
    """The hand-written reference computes the same gradient as `ReversibleAdjoint`
    (the script checks it before timing)."""
    printed = _run("floor", "--steps", "20", "--repeats", "1")
    assert "| hand-written reference |" in printed


@pytest.mark.slow
def test_parity_sweep_quick():
    """The first random configurations of the parity sweep (seed 0) all match
    `RecursiveCheckpointAdjoint`: the script exits with 1 if one does not."""
    printed = _run("parity_sweep", "--quick")
    lines = [line for line in printed.splitlines() if line.startswith("ok ")]
    assert len(lines) == 4, printed


@pytest.mark.slow
def test_quick_pytree_state_benchmark(tmp_path):
    printed = _run("pytree_state", "--quick", "--output", str(tmp_path))
    assert "| tuple2 | Tsit5 | Reversible + ReversibleAdjoint |" in printed
    rows = json.loads((tmp_path / "pytree_state.json").read_text())
    ours = [r for r in rows if r["method"] == "Reversible + ReversibleAdjoint"]
    assert {(r["state"], r["base"]) for r in ours} == {
        (state, base) for state in ("tuple2", "dict2") for base in ("Midpoint", "Tsit5")
    }
    # float32 gradients of the same solver: `ReversibleAdjoint` against RCA.
    assert all(r["error"] < 1e-4 for r in ours)
