"""The README's main job, `examples/train_neural_ode.py`: a smoke run, and its
multi-device sharding against a single device."""

import importlib.util
import os
import pathlib
import re
import subprocess
import sys
import textwrap

import pytest

EXAMPLE = pathlib.Path(__file__).parent.parent / "examples" / "train_neural_ode.py"


def _load_example():
    spec = importlib.util.spec_from_file_location("train_neural_ode", EXAMPLE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.quick
def test_smoke(tmp_path, capsys):
    """The main job end to end, at tiny sizes, one step count and three adjoints (each
    compiled once): its table, the files it writes, and the gradients it compares."""
    example = _load_example()
    rows = example.main(
        [
            "--iterations",
            "2",
            "--steps",
            "8",
            "--compare-steps",
            "8",
            "--repeats",
            "1",
            "--dataset-size",
            "8",
            "--batch-size",
            "4",
            "--state-size",
            "4",
            "--width",
            "4",
            "--adjoints",
            "reversible",
            "checkpoint",
            "backsolve",
            "--output-dir",
            str(tmp_path / "out"),
        ]
    )
    captured = capsys.readouterr()
    printed = captured.out
    assert "training: loss" in printed
    # Three phases, each numbered out of three; the adjoints compared in the third
    # are numbered apart (not `[1/3] ReversibleAdjoint`, read as a phase).
    bars = captured.err
    for phase in ("[1/3] data", "[2/3] training"):
        assert phase in bars, bars
    assert "[3/3] one gradient" in printed
    assert "adjoint 3 of 3: BacksolveAdjoint" in bars, bars
    assert re.search(r"\[\d/\d\] (Reversible|Recursive|Backsolve)", bars) is None
    # BacksolveAdjoint's refusal of the save times, in our words.
    assert f"refused: {example.BACKSOLVE_REFUSAL}" in printed
    assert "Unexpected tangent" not in printed
    table = [line for line in printed.splitlines() if line.startswith("| 8 |")]
    assert [line.split(" | ")[1] for line in table] == [
        "ReversibleAdjoint",
        "RecursiveCheckpointAdjoint",
        "BacksolveAdjoint",
    ]
    # Ours is RecursiveCheckpointAdjoint's gradient to float32 round-off, save times
    # included; BacksolveAdjoint's is not, and it refuses the save times.
    ours, backsolve = rows["ReversibleAdjoint", 8], rows["BacksolveAdjoint", 8]
    assert ours["error"] < 1e-5 and ours["ts_error"] < 1e-5, ours
    assert backsolve["error"] > 1e-4 and backsolve["ts_error"] is None
    assert table[-1].endswith("| refused |")
    assert (tmp_path / "out" / "train_neural_ode.png").stat().st_size > 0
    assert (
        "| 8 | ReversibleAdjoint |"
        in (tmp_path / "out" / "train_neural_ode.md").read_text()
    )


def test_flags_are_validated(capsys):
    example = _load_example()
    for flags, message in [
        (["--batch-size", "64", "--dataset-size", "16"], "larger than --dataset-size"),
        (["--steps", "0"], "must be positive"),
        (["--solver", "euler"], "invalid choice"),
        (["--adjoints", "backsolve"], "must include reversible"),
    ]:
        with pytest.raises(SystemExit):
            example.main(flags)
        assert message in capsys.readouterr().err


SHARDED = textwrap.dedent(
    """
    import importlib.util, sys
    import jax, jax.numpy as jnp, jax.random as jr, equinox as eqx
    import reversible_adjoint as ra
    assert len(jax.devices()) == 4, jax.devices()
    spec = importlib.util.spec_from_file_location("train_neural_ode", sys.argv[1])
    example = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(example)

    ts = jnp.linspace(0.0, 3.0, 7)
    y0, ys = example.make_dataset(jr.PRNGKey(0), 8, ts)
    params, static = eqx.partition(example.NeuralODE(jr.PRNGKey(1), 8, 16), eqx.is_array)
    grad_fn = example.make_grad_fn(30, ra.ReversibleHeun(), ra.ReversibleAdjoint())

    batch, replicated = example.batch_sharding()
    sharded = example.shard((y0, ys), batch)
    assert len(sharded[0].sharding.device_set) == 4
    loss4, grads4 = grad_fn(example.shard(params, replicated), static, *sharded, ts)

    one = jax.devices()[0]
    loss1, grads1 = grad_fn(jax.device_put(params, one), static, jax.device_put(y0, one), jax.device_put(ys, one), ts)
    assert len(y0.sharding.device_set) == 1
    grads4, grads1 = jax.device_get((grads4, grads1))
    errors = [float(abs(a - b).max() / abs(b).max()) for a, b in zip(jax.tree_util.tree_leaves(grads4), jax.tree_util.tree_leaves(grads1))]
    print("max relative difference", max(errors), "loss", float(loss4), float(loss1))
    assert max(errors) < 1e-12, errors
    assert abs(float(loss4) - float(loss1)) < 1e-12

    # The drift check on several devices: one warning (forced by a tiny tolerance).
    import warnings
    grad_fn = example.make_grad_fn(30, ra.ReversibleHeun(), ra.ReversibleAdjoint(drift_rtol=1e-300, checkpoints=0))
    with warnings.catch_warnings(record=True) as records:
        warnings.simplefilter("always")
        jax.block_until_ready(grad_fn(example.shard(params, replicated), static, *sharded, ts))
    drift = [r.message for r in records if issubclass(r.category, ra.ReconstructionDriftWarning)]
    print("drift warnings on 4 devices:", [(w.drift, w.steps) for w in drift])
    assert len(drift) == 1 and drift[0].steps == 30, drift
    """  # noqa: E501
)


@pytest.mark.slow
def test_sharded_gradients_match_single_device(tmp_path):
    """One training gradient on 4 simulated CPU devices equals the single-device one,
    and the drift check warns once for all devices."""
    script = tmp_path / "sharded.py"
    script.write_text(SHARDED)
    env = dict(
        os.environ,
        XLA_FLAGS="--xla_force_host_platform_device_count=4",
        JAX_ENABLE_X64="1",
        JAX_PLATFORMS="cpu",
    )
    result = subprocess.run(
        [sys.executable, str(script), str(EXAMPLE)],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "max relative difference" in result.stdout
