"""The drift check at the end of every backward pass, and `round_trip_error`."""

import warnings

import diffrax
import equinox as eqx
import jax
import jax.numpy as jnp
import pytest

import reversible_adjoint as ra

from .helpers import make_problem, readout


def _lorenz(t, y, args):
    sigma, rho, beta = args
    x, u, z = y[..., 0], y[..., 1], y[..., 2]
    return jnp.stack([sigma * (u - x), x * (rho - z) - u, x * u - beta * z], axis=-1)


LORENZ_ARGS = jnp.array([10.0, 28.0, 8.0 / 3.0])
LORENZ_Y0 = jnp.array([1.0, 1.0, 1.0])


def _lorenz_loss(args, y0, adjoint, solver=ra.Reversible(diffrax.Tsit5())):
    """Chaotic: over `[0, 2]` the backward flow amplifies round-off enough that the
    `Reversible` wrapper's reconstruction drifts in float64 (its gradient with
    respect to `sigma` is then off RCA's)."""
    sol = diffrax.diffeqsolve(
        diffrax.ODETerm(_lorenz),
        solver,
        0.0,
        2.0,
        1e-3,
        y0,
        args=args,
        max_steps=2000,
        adjoint=adjoint,
    )
    return jnp.sum(sol.ys)


def _drifts(records):
    """The drifts reported by `ReconstructionDriftWarning`s, and over how many
    steps."""
    return [
        (record.message.drift, record.message.steps)
        for record in records
        if issubclass(record.category, ra.ReconstructionDriftWarning)
    ]


def _recorded(fn):
    with warnings.catch_warnings(record=True) as records:
        warnings.simplefilter("always")
        out = jax.block_until_ready(fn())
    return out, _drifts(records)


# Without checkpoints: the reconstruction drifts over the whole solve.
WHOLE_SOLVE = ra.ReversibleAdjoint(checkpoints=0)


def test_drift_warns():
    """The case that drifted silently: warned, with the solver and what to do, and
    the size and the step count on the warning."""
    with pytest.warns(ra.ReconstructionDriftWarning) as records:
        jax.block_until_ready(
            jax.grad(_lorenz_loss)(LORENZ_ARGS, LORENZ_Y0, WHOLE_SOLVE)
        )
    warning = records[0].message
    message = str(warning)
    assert warning.steps == 2000
    assert warning.tolerance == WHOLE_SOLVE.rtol_for(LORENZ_Y0)
    assert warning.gradient_error == warning.drift * warning.amplification
    assert warning.amplification >= 1 and not warning.diverged
    assert "Reversible(Tsit5(), coupling=0.999)" in message
    for advice in [
        "checkpoint_every",
        "RecursiveCheckpointAdjoint",
        "round_trip_error",
        "coupling",
    ]:
        assert advice in message
    assert "float64" not in message  # The state is float64 already.
    ((drift, _),) = _drifts(records)
    # The drift reported is the one `round_trip_error` measures on the same solve.
    measured = ra.round_trip_error(
        diffrax.ODETerm(_lorenz),
        ra.Reversible(diffrax.Tsit5()),
        0.0,
        2.0,
        1e-3,
        LORENZ_Y0,
        LORENZ_ARGS,
        max_steps=2000,
    )
    assert drift > WHOLE_SOLVE.rtol_for(LORENZ_Y0)
    assert 0.5 < drift / float(measured) < 2.0


def test_drift_raise_and_ignore():
    raising = ra.ReversibleAdjoint(on_drift="raise", checkpoints=0)
    with pytest.raises(Exception, match=r"drift_rtol=1\.9e-09.*checkpoints"):
        jax.block_until_ready(jax.grad(_lorenz_loss)(LORENZ_ARGS, LORENZ_Y0, raising))
    _, drifts = _recorded(
        lambda: jax.grad(_lorenz_loss)(
            LORENZ_ARGS, LORENZ_Y0, ra.ReversibleAdjoint(on_drift="ignore")
        )
    )
    assert drifts == []


def test_drift_under_vmap_warns_once_with_the_worst():
    y0s = jnp.stack([LORENZ_Y0, 1.1 * LORENZ_Y0, 0.9 * LORENZ_Y0])
    adjoint = WHOLE_SOLVE
    _, each = zip(
        *[
            _recorded(lambda y0=y0: jax.grad(_lorenz_loss)(LORENZ_ARGS, y0, adjoint))
            for y0 in y0s
        ]
    )
    batched = eqx.filter_jit(jax.vmap(jax.grad(_lorenz_loss), in_axes=(None, 0, None)))
    _, drifts = _recorded(lambda: batched(LORENZ_ARGS, y0s, adjoint))
    assert len(drifts) == 1
    worst = max(d[0][0] for d in each)
    assert 0.5 < drifts[0][0] / worst < 2.0


@pytest.mark.parametrize("dtype", [jnp.float64, jnp.float32])
def test_healthy_solves_do_not_warn(dtype):
    """Reversible Heun over 10,000 steps of an oscillator, in float32 too: far below
    the default tolerance. (Every other gradient test of the suite also runs with
    the check on, and the suite turns the warning into an error.)"""
    term = diffrax.ODETerm(lambda t, y, args: jnp.stack([y[1], -args * y[0]]))

    def loss(args, adjoint):
        sol = diffrax.diffeqsolve(
            term,
            ra.ReversibleHeun(),
            jnp.array(0.0, dtype),
            jnp.array(100.0, dtype),
            jnp.array(0.01, dtype),
            jnp.array([1.0, 0.5], dtype),
            args=args,
            max_steps=10_000,
            adjoint=adjoint,
        )
        return jnp.sum(sol.ys**2)

    args = jnp.array(4.0, dtype)
    for checkpoints, steps in [(0, 10_000), (None, 1024)]:
        got, drifts = _recorded(
            lambda: jax.grad(loss)(
                args, ra.ReversibleAdjoint(drift_rtol=1e-30, checkpoints=checkpoints)
            )
        )
        # The check ran (over the whole solve, or over the default checkpoints'
        # longest stretch: 10,000 steps in 16 states, thinned to every 1024th)...
        assert len(drifts) == 1 and drifts[0][1] <= steps
        # ...and measured well below the tolerance (an eighth of the old one of
        # `sqrt(eps)`, which this drift was ten times below).
        assert drifts[0][0] < ra.ReversibleAdjoint().rtol_for(args) / 4
    want = jax.grad(loss)(args, diffrax.RecursiveCheckpointAdjoint())
    assert abs(got - want) < 100 * jnp.finfo(dtype).eps ** 0.5 * abs(want)


def test_float32_drift_of_the_reversible_wrapper_warns():
    """`Reversible(Midpoint())` amplifies round-off by `1/0.999` a step: over 10,000
    float32 steps its reconstruction drifts past the default tolerance."""
    term = diffrax.ODETerm(lambda t, y, args: jnp.stack([y[1], -args * y[0]]))

    def f32(x):
        return jnp.array(x, jnp.float32)

    def loss(args):
        sol = diffrax.diffeqsolve(
            term,
            ra.Reversible(diffrax.Midpoint()),
            f32(0.0),
            f32(100.0),
            f32(0.01),
            f32([1.0, 0.5]),
            args=args,
            max_steps=10_000,
            adjoint=WHOLE_SOLVE,
        )
        return jnp.sum(sol.ys**2)

    with pytest.warns(ra.ReconstructionDriftWarning, match="use float64") as records:
        jax.block_until_ready(jax.grad(loss)(f32(4.0)))
    assert records[0].message.steps == 10_000


def test_options_are_checked():
    # (Under the test suite's type checking, the first is a `TypeCheckError`.)
    with pytest.raises((ValueError, TypeError), match="on_drift"):
        ra.ReversibleAdjoint(on_drift="error")
    with pytest.raises(ValueError, match="drift_rtol"):
        ra.ReversibleAdjoint(drift_rtol=0.0)
    assert ra.ReversibleAdjoint().rtol_for(jnp.zeros(2, jnp.float32)) == pytest.approx(
        jnp.finfo(jnp.float32).eps ** 0.5 / 8
    )


# (diffrax's instances, undone by ours: test_solvers.py's `test_round_trip`.)
@pytest.mark.parametrize(
    "solver",
    [
        ra.ReversibleHeun(),
        ra.AsynchronousLeapfrog(),
        ra.Reversible(diffrax.Bosh3()),
        ra.LeapfrogMidpoint(),
    ],
    ids=["RH", "ALF", "Reversible", "LM"],
)
def test_round_trip_error(solver):
    """`round_trip_error` measures what the backward pass reconstructs: the same
    drift as the adjoint reports (forced with a tiny tolerance), backwards in time
    and with adaptive steps too."""
    term, y0, args = make_problem()
    adaptive = not isinstance(solver, ra.LeapfrogMidpoint)
    controller = (
        diffrax.PIDController(rtol=1e-6, atol=1e-8)
        if adaptive
        else diffrax.ConstantStepSize()
    )
    measured = ra.round_trip_error(
        term, solver, 3.0, 0.0, -0.05, y0, args, stepsize_controller=controller
    )
    assert 0 < measured < 1e-12

    def loss(y0):
        sol = diffrax.diffeqsolve(
            term,
            solver,
            3.0,
            0.0,
            -0.05,
            y0,
            args=args,
            stepsize_controller=controller,
            adjoint=ra.ReversibleAdjoint(drift_rtol=1e-300, checkpoints=0),
            max_steps=4096,
        )
        return readout(sol.ys)

    _, drifts = _recorded(lambda: jax.grad(loss)(y0))
    assert len(drifts) == 1
    # Round-off of the fused and the plain inverse may differ at this level: compare
    # orders of magnitude.
    assert 0.1 < drifts[0][0] / float(measured) < 10


def test_round_trip_error_flags_a_blow_up():
    """A forward solve that blows up (reversible Heun on Lorenz at this step) gives
    `inf`, and the adjoint warns that the forward solve diverged, not the
    reconstruction."""
    lorenz = diffrax.ODETerm(_lorenz)
    assert (
        ra.round_trip_error(
            lorenz, ra.ReversibleHeun(), 0.0, 2.0, 1e-3, LORENZ_Y0, LORENZ_ARGS
        )
        == jnp.inf
    )
    _, drifts = _recorded(
        lambda: jax.grad(_lorenz_loss)(
            LORENZ_ARGS, LORENZ_Y0, WHOLE_SOLVE, ra.ReversibleHeun()
        )
    )
    assert drifts == [(jnp.inf, 2000)]
    with pytest.warns(ra.ReconstructionDriftWarning) as records:
        jax.block_until_ready(
            jax.grad(_lorenz_loss)(
                LORENZ_ARGS, LORENZ_Y0, ra.ReversibleAdjoint(), ra.ReversibleHeun()
            )
        )
    (warning,) = [r.message for r in records]
    assert warning.diverged
    message = str(warning)
    assert "forward solve diverged" in message and "not the cause" in message
    assert "checkpoints" not in message  # Advice for drift would not help here.


def test_empty_and_mixed_precision_leaves():
    """An empty leaf is ignored; the tolerance follows the least precise leaf."""
    term = diffrax.ODETerm(lambda t, y, args: {"a": -args * y["a"], "b": y["b"]})
    y0 = {"a": jnp.array([1.0, 2.0]), "b": jnp.zeros((0,))}

    def loss(args, adjoint):
        sol = diffrax.diffeqsolve(
            term, ra.ReversibleHeun(), 0.0, 1.0, 0.1, y0, args=args, adjoint=adjoint
        )
        return jnp.sum(sol.ys["a"] ** 2)

    want = jax.grad(loss)(0.5, diffrax.RecursiveCheckpointAdjoint())
    got = jax.grad(loss)(0.5, ra.ReversibleAdjoint())
    assert abs(got - want) < 1e-12 * abs(want)
    mixed = {"a": jnp.zeros(2, jnp.float32), "b": jnp.zeros(2, jnp.float64)}
    assert ra.ReversibleAdjoint().rtol_for(mixed) == pytest.approx(
        float(jnp.finfo(jnp.float32).eps) ** 0.5 / 8
    )
