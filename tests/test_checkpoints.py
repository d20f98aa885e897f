"""`ReversibleAdjoint(checkpoint_every=K)`: the backward pass restarts its
reconstruction from a stored state every `K` steps. Gradients stay equal to RCA's, the
drift check runs at each checkpoint, and memory grows by one state per `K` steps."""

import warnings

import diffrax
import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
import pytest

import reversible_adjoint as ra

from .helpers import (
    RTOL,
    assert_nonzero,
    check_gradient_parity,
    check_parity_of_every_input,
    make_problem,
    max_relative_error,
    readout,
)

TS = jnp.array([0.0, 0.13, 0.5, 0.51, 1.0, 1.77, 2.0])


def _controller(name):
    if name == "constant":
        return diffrax.ConstantStepSize(), 0.05
    if name == "pid":
        return diffrax.PIDController(rtol=1e-4, atol=1e-6, step_ts=[0.4, 1.1]), 0.3
    grid = jnp.concatenate(
        [jnp.array([0.0]), jnp.linspace(0.3, 1.7, 9) ** 1.2, jnp.array([2.0])]
    )
    return diffrax.StepTo(grid), None


def _check(solver, controller_name, adjoint, backwards=False):
    controller, dt0 = _controller(controller_name)
    t0, t1, ts = 0.0, 2.0, TS
    if backwards:
        t0, t1, ts, dt0 = t1, t0, ts[::-1], -dt0
    check_parity_of_every_input(
        solver,
        controller,
        adjoint,
        t0,
        t1,
        dt0,
        ts,
        steps=2,
        max_steps=256,
        nonzero=["terms", "y0", "args"],
    )


@pytest.mark.parametrize(
    "solver, controller_name, backwards",
    [
        (ra.ReversibleHeun(), "pid", False),
        (ra.AsynchronousLeapfrog(), "pid", True),
        (ra.LeapfrogMidpoint(), "stepto", False),
    ],
    ids=[
        "RH-pid",
        "ALF-pid-backwards",
        "LM-stepto",
    ],
)
def test_parity(solver, controller_name, backwards):
    """Every input (`y0`, `args`, the term's parameter, `t0`, `t1`, `SaveAt(ts)`,
    `dt0`), `SaveAt(ts, steps, t1)` together, a checkpoint every 3 steps. (The
    `Reversible` wrapper, whose solver state a checkpoint also stores, is in
    test_replayed_grid.py, with a first-same-as-last base.)"""
    _check(solver, controller_name, ra.ReversibleAdjoint(checkpoint_every=3), backwards)


def test_sde_parity():
    key = jr.PRNGKey(0)
    bm = diffrax.VirtualBrownianTree(0.0, 2.0, 1e-3, (2,), key=key)

    def loss(inputs, adjoint):
        y0, args = inputs
        terms = diffrax.MultiTerm(
            diffrax.ODETerm(lambda t, y, a: -a[0] * y + jnp.sin(t)),
            diffrax.ControlTerm(lambda t, y, a: a[1] * jnp.diag(jnp.cos(y)), bm),
        )
        sol = diffrax.diffeqsolve(
            terms,
            ra.ReversibleHeun(),
            0.0,
            2.0,
            0.05,
            y0,
            args=args,
            saveat=diffrax.SaveAt(ts=jnp.array([0.3, 1.1, 2.0])),
            adjoint=adjoint,
        )
        return readout(sol.ys)

    inputs = (jnp.array([1.0, -0.5]), (jnp.array(0.7), jnp.array(0.3)))
    adjoint = ra.ReversibleAdjoint(checkpoint_every=4)
    check_gradient_parity(loss, inputs, adjoint=adjoint, nonzero=[0, 1])


def test_truncated_and_vmapped():
    """A solve that stops early (`max_steps`, `throw=False`), under `vmap` over `t1`
    so that each element takes a different number of steps."""
    term, y0, args = make_problem()
    controller = diffrax.PIDController(rtol=1e-3, atol=1e-5)

    def loss(args, t1, adjoint):
        sol = diffrax.diffeqsolve(
            term,
            ra.ReversibleHeun(),
            0.0,
            t1,
            0.1,
            y0,
            args=args,
            saveat=diffrax.SaveAt(ts=TS * t1 / 2, t1=True),
            stepsize_controller=controller,
            adjoint=adjoint,
            max_steps=24,
            throw=False,
        )
        ys = jax.tree_util.tree_map(
            lambda x: jnp.where(jnp.isfinite(x), x, 0.0), sol.ys
        )
        return readout(ys), (sol.stats["num_accepted_steps"], sol.result._value)

    t1s = jnp.array([0.3, 0.5, 2.0])

    def grads(adjoint):
        fn = jax.vmap(jax.grad(loss, has_aux=True), in_axes=(None, 0, None))
        return eqx.filter_jit(fn)(args, t1s, adjoint)

    want, (steps, results) = grads(diffrax.RecursiveCheckpointAdjoint())
    got, _ = grads(ra.ReversibleAdjoint(checkpoint_every=5))
    assert len(set(steps.tolist())) == 3
    stopped_early = results == diffrax.RESULTS.max_steps_reached._value
    assert stopped_early.tolist() == [False, False, True]
    assert_nonzero(want)
    assert max_relative_error(got, want) < RTOL


def _lorenz(t, y, args):
    sigma, rho, beta = args
    x, u, z = y
    return jnp.stack([sigma * (u - x), x * (rho - z) - u, x * u - beta * z])


def _lorenz_loss(args, adjoint):
    sol = diffrax.diffeqsolve(
        diffrax.ODETerm(_lorenz),
        ra.Reversible(diffrax.Tsit5()),
        0.0,
        2.0,
        1e-3,
        jnp.array([1.0, 1.0, 1.0]),
        args=args,
        max_steps=2000,
        adjoint=adjoint,
    )
    return jnp.sum(sol.ys)


def test_checkpoints_bound_drift():
    """The solve whose drift the check flags without checkpoints: with a checkpoint
    every 100 steps the worst drift of any stretch is far smaller, under the default
    tolerance, and it is measured at the checkpoints (a warning forced by a tiny
    tolerance says over how many steps). (That a drift under the tolerance does not
    warn is in test_drift.py.)"""
    args = jnp.array([10.0, 28.0, 8.0 / 3.0])

    def worst(adjoint):
        with warnings.catch_warnings(record=True) as records:
            warnings.simplefilter("always")
            jax.block_until_ready(jax.grad(_lorenz_loss)(args, adjoint))
        (record,) = [
            r for r in records if issubclass(r.category, ra.ReconstructionDriftWarning)
        ]
        return record.message.drift, record.message.steps

    none, steps_none = worst(ra.ReversibleAdjoint(drift_rtol=1e-300, checkpoints=0))
    hundred, steps_hundred = worst(
        ra.ReversibleAdjoint(drift_rtol=1e-300, checkpoint_every=100)
    )
    assert steps_none == 2000 and steps_hundred == 100
    assert none > ra.ReversibleAdjoint().rtol_for(args) > 1e3 * hundred
    # `round_trip_error` measures the same stretches.
    stretches = ra.round_trip_error(
        diffrax.ODETerm(_lorenz),
        ra.Reversible(diffrax.Tsit5()),
        0.0,
        2.0,
        1e-3,
        jnp.array([1.0, 1.0, 1.0]),
        args,
        max_steps=2000,
        checkpoint_every=100,
    )
    assert stretches.shape == (20,) and jnp.all(stretches > 0)
    assert 0.1 < hundred / float(jnp.max(stretches)) < 10


def test_memory_grows_by_one_state_per_checkpoint():
    term, y0, args = make_problem()
    state_bytes = 2 * sum(
        x.nbytes for x in jax.tree_util.tree_leaves(y0)
    )  # y, and ŷ...
    state_bytes += sum(
        x.nbytes for x in jax.tree_util.tree_leaves(y0)
    )  # ...and the field.

    def memory(adjoint):
        def loss(y0):
            sol = diffrax.diffeqsolve(
                term,
                ra.ReversibleHeun(),
                0.0,
                2.0,
                1e-3,
                y0,
                args=args,
                adjoint=adjoint,
                max_steps=2000,
            )
            return readout(sol.ys)

        compiled = jax.jit(jax.grad(loss)).lower(y0).compile()
        return compiled.memory_analysis().temp_size_in_bytes

    # 200 checkpoints against 100, each a state (and a few scalars of the step grid,
    # which is recomputed between checkpoints rather than recorded).
    ten = memory(ra.ReversibleAdjoint(checkpoint_every=10))
    twenty = memory(ra.ReversibleAdjoint(checkpoint_every=20))
    assert ten - twenty >= 100 * state_bytes
    assert ten - twenty < 4 * 100 * state_bytes


def test_option_is_checked():
    with pytest.raises((ValueError, TypeError), match="checkpoint_every"):
        ra.ReversibleAdjoint(checkpoint_every=0)
