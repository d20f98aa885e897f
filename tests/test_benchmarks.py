"""Smoke test of the benchmark script in its quick mode (no timing assertions)."""

import importlib.util
import json
import pathlib


SCRIPT = pathlib.Path(__file__).parent.parent / "benchmarks" / "adjoints.py"


def test_quick_benchmark(tmp_path, capsys):
    spec = importlib.util.spec_from_file_location("adjoints_benchmark", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    module.main(["--quick", "--output", str(tmp_path)])
    printed = capsys.readouterr().out
    assert "| ReversibleHeun | ReversibleAdjoint |" in printed
    rows = json.loads((tmp_path / "results.json").read_text())["rows"]
    ours = [r for r in rows if r["method"] == "ReversibleAdjoint" and r["problem"] == "mlp"]
    assert ours and all(r["error"] < 1e-10 for r in ours)
    assert (tmp_path / "adjoints.png").stat().st_size > 0
