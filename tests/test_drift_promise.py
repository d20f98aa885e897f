"""The drift check's promise: with default settings, every gradient is within 1e-8
(float64) or 1e-3 (float32) of `RecursiveCheckpointAdjoint`'s on the same solver and
steps, relative to its largest entry, or `ReversibleAdjoint` warns.

Tested where it is hardest to keep: long periodic and Hamiltonian solves, whose
gradients amplify reconstruction round-off by thousands (diffrax's Hessian example,
Lotka–Volterra over 1,400 steps, was 1e-4 off without a warning), weakly damped ones,
every solver family, both precisions, losses at `t1` and at `SaveAt(ts)`; and with
`checkpoints=0` too, where the drift grows over the whole solve and the check alone
keeps the promise. Healthy solves must stay silent."""

import math
import os
import warnings

import diffrax
import jax
import jax.numpy as jnp
import jax.tree_util as jtu
import pytest

import reversible_adjoint as ra


def _lotka_volterra(t, y, args):
    prey, predator = y
    a, b, c, d = args
    return a * prey - b * prey * predator, -c * predator + d * prey * predator


def _pendulum(t, y, args):
    theta, omega = y
    return omega, -args * jnp.sin(theta)


def _kepler(t, y, args):
    q, v = y["q"], y["v"]
    r = jnp.sqrt(jnp.sum(q**2))
    return {"q": v, "v": -args * q / r**3}


def _damped(t, y, args):
    stiffness, damping = args[0], args[1]
    return jnp.stack([y[1], -stiffness * y[0] - damping * y[1] + 0.1 * jnp.sin(t)])


_E = 0.5  # Kepler's eccentricity.
# name: (vector field, y0, args, t1, dt0): each periodic or nearly so, long.
PROBLEMS = {
    # diffrax's Hessian example: 1,400 steps, about 20 periods.
    "lotka_volterra": (
        _lotka_volterra,
        (10.0, 10.0),
        (0.1, 0.02, 0.4, 0.02),
        140.0,
        0.1,
    ),
    # About 100 periods, 7,000 steps.
    "pendulum": (_pendulum, (1.0, 0.0), 1.0, 700.0, 0.1),
    # 20 orbits, 6,283 steps.
    "kepler": (
        _kepler,
        {"q": [1 - _E, 0.0], "v": [0.0, math.sqrt((1 + _E) / (1 - _E))]},
        1.0,
        40 * math.pi,
        0.02,
    ),
    # Weakly damped and forced: healthy, 5,000 steps.
    "damped": (_damped, [1.0, 0.0], [1.0, 0.01], 500.0, 0.1),
}
SOLVERS = {
    "ReversibleHeun": ra.ReversibleHeun(),
    "ALF": ra.AsynchronousLeapfrog(),
    "Reversible(Tsit5)": ra.Reversible(diffrax.Tsit5()),
    "Reversible(Midpoint)": ra.Reversible(diffrax.Midpoint()),
    "LeapfrogMidpoint": ra.LeapfrogMidpoint(),
}
PROMISE = {jnp.float64: 1e-8, jnp.float32: 1e-3}


def _gradient(problem, solver, dtype, adjoint, at_ts):
    """The gradient of a loss of the solve with respect to `y0` and the parameters in
    `args`, and the `ReconstructionDriftWarning`s it gave."""
    vector_field, y0, args, t1, dt0 = PROBLEMS[problem]
    cast = lambda x: jnp.asarray(x, dtype)
    # (Lists are arrays here.)
    y0, args = jtu.tree_map(cast, (y0, args), is_leaf=lambda x: isinstance(x, list))
    num_steps = round(t1 / dt0)
    saveat = (
        diffrax.SaveAt(ts=cast(jnp.linspace(0.0, t1, 7)[1:-1] + 0.0123))
        if at_ts
        else diffrax.SaveAt(t1=True)
    )

    def loss(y0, args):
        sol = diffrax.diffeqsolve(
            diffrax.ODETerm(vector_field),
            SOLVERS[solver],
            cast(0.0),
            cast(t1),
            cast(dt0),
            y0,
            args=args,
            saveat=saveat,
            adjoint=adjoint(num_steps),
            max_steps=num_steps + 10,
        )
        return sum(jnp.sum(jnp.sin(x)) for x in jtu.tree_leaves(sol.ys))

    with warnings.catch_warnings(record=True) as records:
        warnings.simplefilter("always")
        grads = jax.block_until_ready(jax.jit(jax.grad(loss, argnums=(0, 1)))(y0, args))
    warned = [
        r.message
        for r in records
        if issubclass(r.category, ra.ReconstructionDriftWarning)
    ]
    return jtu.tree_leaves(grads), warned


def _relative_error(grads, reference):
    scale = max(float(jnp.max(jnp.abs(r))) for r in reference)
    return (
        max(
            float(jnp.max(jnp.abs(g.astype(jnp.float64) - r.astype(jnp.float64))))
            for g, r in zip(grads, reference, strict=True)
        )
        / scale
    )


def _rca(num_steps):
    return diffrax.RecursiveCheckpointAdjoint(checkpoints=num_steps + 10)


def _check_promise(problem, solver, dtype, at_ts, checkpoints):
    """Asserts the promise for one case; returns the error, and whether it warned."""
    reference, _ = _gradient(problem, solver, dtype, _rca, at_ts)
    assert all(jnp.all(jnp.isfinite(r)) for r in reference)
    adjoint = lambda _: ra.ReversibleAdjoint(checkpoints=checkpoints)
    grads, warned = _gradient(problem, solver, dtype, adjoint, at_ts)
    error = _relative_error(grads, reference)
    assert len(warned) <= 1
    if not warned:
        assert error <= PROMISE[dtype], error
    if dtype == jnp.float32 and not warned:
        # Against float64 too: no worse than RCA's own float32 gradient, or within the
        # promise of it.
        exact, _ = _gradient(problem, solver, jnp.float64, _rca, at_ts)
        own = _relative_error(reference, exact)
        assert _relative_error(grads, exact) <= max(PROMISE[dtype], 2 * own)
    return error, bool(warned)


# (problem, solver, dtype, at_ts): in the suite, the cases that broke the promise
# before (Lotka–Volterra in float64) and one of each other kind; the rest are slow.
SUITE = [
    ("lotka_volterra", "Reversible(Tsit5)", jnp.float64, False),
    ("lotka_volterra", "ALF", jnp.float64, True),
    ("lotka_volterra", "Reversible(Midpoint)", jnp.float32, False),
    ("pendulum", "ReversibleHeun", jnp.float64, True),
    ("kepler", "LeapfrogMidpoint", jnp.float64, False),
    ("damped", "ReversibleHeun", jnp.float32, True),
]
ALL = [
    (problem, solver, dtype, at_ts)
    for problem in PROBLEMS
    for solver in SOLVERS
    for dtype in (jnp.float64, jnp.float32)
    for at_ts in (False, True)
    # Reversible Heun and leapfrog-midpoint diverge on Lotka–Volterra at this step
    # (`test_drift.py` checks that a diverged solve says so).
    if not (
        problem == "lotka_volterra" and solver in ("ReversibleHeun", "LeapfrogMidpoint")
    )
]
# The slow step: every solver family on every problem in float64, and on
# Lotka–Volterra in float32 (and one case of the pendulum in float32). All 72
# cases take about half an hour on 2 cores: set
# `REVERSIBLE_ADJOINT_ALL_PROMISE_CASES=1` to run them.
if os.environ.get("REVERSIBLE_ADJOINT_ALL_PROMISE_CASES"):
    SLOW = [case for case in ALL if case not in SUITE]
else:
    SLOW = [
        case
        for case in ALL
        if case not in SUITE
        and (
            (case[2] == jnp.float64 and case[0] != "kepler")
            or (case[0] == "lotka_volterra")
            or (case[0] == "kepler" and not case[3] and case[2] == jnp.float64)
        )
    ]
# Broke the promise silently before the estimate had its growth factor: over 100
# periods of the pendulum in float32, 3.5e-3 off RCA's float32 gradient with no
# warning (the cancellation is 1 there; the growth, about 40, is what warns).
if ("pendulum", "LeapfrogMidpoint", jnp.float32, True) not in SLOW:
    SLOW.append(("pendulum", "LeapfrogMidpoint", jnp.float32, True))


def _id(case):
    problem, solver, dtype, at_ts = case
    return f"{problem}-{solver}-{jnp.dtype(dtype).name}-{'ts' if at_ts else 't1'}"


@pytest.mark.parametrize("case", SUITE, ids=_id)
def test_promise(case):
    _check_promise(*case, checkpoints=None)


@pytest.mark.slow
@pytest.mark.parametrize("case", SLOW, ids=_id)
def test_promise_slow(case):
    _check_promise(*case, checkpoints=None)


@pytest.mark.parametrize(
    "solver", ["Reversible(Tsit5)", "ALF"], ids=lambda s: s.replace("(", "-")[:12]
)
def test_promise_without_checkpoints(solver):
    """Without checkpoints the reconstruction of diffrax's Hessian example drifts
    over all 1,400 steps, and the gradient is off by more than the promise (1e-4 and
    9e-8): only the estimate of the gradient's error, not the drift itself (1e-8 and
    2e-11, under the old tolerance of 1.5e-8), can catch it."""
    error, warned = _check_promise(
        "lotka_volterra", solver, jnp.float64, False, checkpoints=0
    )
    assert error > PROMISE[jnp.float64] and warned


@pytest.mark.slow
@pytest.mark.parametrize(
    "case", [c for c in SLOW if c[0] in ("lotka_volterra", "kepler")], ids=_id
)
def test_promise_without_checkpoints_slow(case):
    _check_promise(*case, checkpoints=0)


@pytest.mark.parametrize("dtype", [jnp.float64, jnp.float32])
def test_healthy_solves_are_silent(dtype):
    """A decaying linear system with time-dependent forcing, and the weakly damped
    oscillator: no warning, and the gradient within the promise."""
    error, warned = _check_promise("damped", "ALF", dtype, False, checkpoints=None)
    assert not warned

    def loss(p, adjoint):
        sol = diffrax.diffeqsolve(
            diffrax.ODETerm(
                lambda t, y, p: jtu.tree_map(lambda x: -p * x + jnp.cos(t), y)
            ),
            ra.ReversibleHeun(),
            jnp.asarray(0.0, dtype),
            jnp.asarray(10.0, dtype),
            jnp.asarray(0.01, dtype),
            (jnp.ones(3, dtype), jnp.arange(2, dtype=dtype)),
            args=p,
            adjoint=adjoint,
            max_steps=1000,
        )
        return sum(jnp.sum(x**2) for x in jtu.tree_leaves(sol.ys))

    p = jnp.asarray(0.7, dtype)
    with warnings.catch_warnings(record=True) as records:
        warnings.simplefilter("always")
        got = jax.grad(loss)(p, ra.ReversibleAdjoint())
    assert not [r for r in records if r.category is ra.ReconstructionDriftWarning]
    want = jax.grad(loss)(p, diffrax.RecursiveCheckpointAdjoint())
    assert abs(got - want) <= PROMISE[dtype] * abs(want)


def test_warns_once_in_a_training_loop():
    """Under Python's default filters, a drifting configuration warns once, not at
    every step of a training loop (the message is the same at every call; the numbers
    are attributes)."""
    vector_field, y0, args, t1, dt0 = PROBLEMS["lotka_volterra"]
    y0 = jnp.array(y0)

    @jax.jit
    def grad(y0):
        def loss(y0):
            sol = diffrax.diffeqsolve(
                diffrax.ODETerm(
                    lambda t, y, a: jnp.stack(vector_field(t, tuple(y), a))
                ),
                ra.Reversible(diffrax.Midpoint()),
                0.0,
                t1,
                dt0,
                y0,
                args=args,
                adjoint=ra.ReversibleAdjoint(checkpoints=0),
                max_steps=1500,
            )
            return sol.ys[-1, 0]

        return jax.grad(loss)(y0)

    with warnings.catch_warnings(record=True) as records:
        warnings.simplefilter("default")
        for i in range(5):
            y0 = y0 + 1e-3 * grad(y0)
            jax.block_until_ready(y0)
    drift = [r for r in records if r.category is ra.ReconstructionDriftWarning]
    assert len(drift) == 1
    warning = drift[0].message
    assert warning.gradient_error > warning.tolerance
    assert warning.steps == 1400 and not warning.diverged


def test_advice_fits_the_solver():
    """Each suggestion is one that would help that solver, in that precision."""
    from reversible_adjoint._drift import drift_message

    def advice(solver, adjoint=ra.ReversibleAdjoint(), dtype=jnp.float64):
        return drift_message(solver, adjoint, 1e-9, dtype).split("To fix it:")[1]

    heun = advice(ra.ReversibleHeun())
    assert "ReversibleHeun" not in heun and "coupling" not in heun
    assert "checkpoints" in heun and "RecursiveCheckpointAdjoint" in heun
    assert "float64" not in heun and "float64" in advice(
        ra.ReversibleHeun(), dtype=jnp.float32
    )
    wrapper = advice(ra.Reversible(diffrax.Tsit5(), coupling=0.99))
    assert "coupling closer to 1" in wrapper and "ReversibleHeun" in wrapper
    assert "eta=1" in advice(ra.AsynchronousLeapfrog(eta=0.9))
    assert "eta" not in advice(ra.AsynchronousLeapfrog())
    every = advice(ra.ReversibleHeun(), ra.ReversibleAdjoint(checkpoint_every=100))
    assert "smaller than 100" in every
