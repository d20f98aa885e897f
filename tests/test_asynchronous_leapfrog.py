"""`AsynchronousLeapfrog`: gradients that match `RecursiveCheckpointAdjoint`, jumps,
dense output, adaptive steps, the fused backward step, and its refusals. (Its round
trip, inverse and order are in test_solvers.py.)"""

import warnings
from typing import ClassVar

import diffrax
import jax
import jax.numpy as jnp
import jax.random as jr
import jax.tree_util as jtu
import pytest

import reversible_adjoint as ra

from .helpers import (
    INPUT_NAMES,
    backward_loop_evaluations,
    check_gradient_parity,
    check_solve_parity,
    count_primitives,
    make_problem,
    max_relative_error,
    problem_inputs,
    sinh_loss,
    sinh_vector_field,
)


def _damped(eta):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return ra.AsynchronousLeapfrog(eta)


# Gradient parity with `RecursiveCheckpointAdjoint`.

PID = diffrax.PIDController(rtol=1e-3, atol=1e-5)


@pytest.mark.parametrize("controller_name", ["constant", "pid"])
def test_parity_all_inputs(controller_name):
    if controller_name == "constant":
        inputs, controller = problem_inputs(dt0=0.05), diffrax.ConstantStepSize()
    else:
        inputs, controller = problem_inputs(dt0=0.3), PID
    # A zero reference would make the comparison vacuous.
    _, _, stats = check_solve_parity(
        inputs, ra.AsynchronousLeapfrog(), controller, nonzero=INPUT_NAMES
    )
    if controller_name == "pid":
        assert stats["num_rejected_steps"] > 0
        assert stats["num_accepted_steps"] > 10


# Backwards in time (`t1 < t0`: diffrax wraps the term in `WrapTerm`, and the step
# goes through `terms.contr`/`terms.prod`), every input: test_checkpoints.py.


def test_parity_damped():
    """`eta < 1`, on a short solve (the inverse amplifies round-off by 1/|1 − 2η| per
    step, here 1.25^40 ≈ 7e3)."""
    inputs = problem_inputs(t1=1.0, ts=(0.0, 0.3, 0.77, 1.0), dt0=0.025)
    check_solve_parity(inputs, _damped(0.9), nonzero=INPUT_NAMES)


# Jumps.


def test_made_jump_reevaluates_v():
    term, y0, args = make_problem()
    solver = ra.AsynchronousLeapfrog()
    state0 = solver.init(term, 0.0, 0.1, y0, args)
    stale = jtu.tree_map(lambda x: x + 1.0, state0)
    want = solver.step(term, 0.0, 0.1, y0, args, state0, False)
    for made_jump in (True, jnp.array(True)):
        got = solver.step(term, 0.0, 0.1, y0, args, stale, made_jump)
        assert max_relative_error(got[:4], want[:4]) == 0
    got = solver.step(term, 0.0, 0.1, y0, args, stale, jnp.array(False))
    assert max_relative_error(got[3], want[3]) > 0


# Dense output.

# y = (cos(t²/2), sin(t²/2)) solves y' = t [[0, −1], [1, 0]] y.
_rotation = diffrax.ODETerm(lambda t, y, args: t * jnp.array([-y[1], y[0]]))


def _exact(t):
    return jnp.stack([jnp.cos(t**2 / 2), jnp.sin(t**2 / 2)], axis=-1)


def _observed_orders(solver, saveat_ts=None, backwards=False):
    """log2 of the ratio of successive global errors as the step halves."""
    t0, t1 = (2.0, 0.0) if backwards else (0.0, 2.0)
    errors = []
    for n in (100, 200, 400, 800):
        saveat = (
            diffrax.SaveAt(t1=True)
            if saveat_ts is None
            else diffrax.SaveAt(ts=saveat_ts)
        )
        # Array `dt0` and a fixed `max_steps`: one compilation for every `n`.
        dt0 = jnp.asarray((t1 - t0) / n)
        sol = diffrax.diffeqsolve(
            _rotation, solver, t0, t1, dt0, _exact(t0), saveat=saveat, max_steps=800
        )
        want = _exact(t1) if saveat_ts is None else _exact(saveat_ts)
        errors.append(jnp.max(jnp.abs(sol.ys - want)))
    return [float(jnp.log2(a / b)) for a, b in zip(errors[:-1], errors[1:])]


def test_dense_output_second_order():
    """`SaveAt(ts=...)` between the steps (Hermite interpolation on `(z, v)`) converges
    at the method's order."""
    ts = jnp.array([0.123, 0.77, 1.2345, 1.9])
    orders = _observed_orders(ra.AsynchronousLeapfrog(), ts)
    assert all(abs(o - 2) < 0.15 for o in orders), orders
    # Backwards in time (`WrapTerm`), where the Hermite slopes are `terms.prod(v, Δ)`.
    orders = _observed_orders(ra.AsynchronousLeapfrog(), ts[::-1], backwards=True)
    assert all(abs(o - 2) < 0.15 for o in orders), orders


# Adaptive steps.


def test_pid_controller():
    """The error estimate drives `PIDController`: it rejects some steps, and a tighter
    tolerance gives a smaller error."""
    errors = []
    for rtol in (1e-3, 1e-4, 1e-5):
        tol = jnp.asarray(rtol)  # an array: one compilation for every tolerance
        controller = diffrax.PIDController(rtol=tol, atol=tol)
        sol = diffrax.diffeqsolve(
            _rotation,
            ra.AsynchronousLeapfrog(),
            0.0,
            4.0,
            0.5,
            _exact(0.0),
            stepsize_controller=controller,
            max_steps=100_000,
        )
        assert sol.stats["num_rejected_steps"] > 0
        errors.append(float(jnp.max(jnp.abs(sol.ys[-1] - _exact(4.0)))))
    assert errors[0] > errors[1] > errors[2], errors


def test_error_estimate_order():
    """The local error estimate is O(h²) (error order 2) for every `eta`."""
    for solver in (ra.AsynchronousLeapfrog(), _damped(0.9)):
        y0 = _exact(1.0)
        estimates = []
        for h in (0.1, 0.05, 0.025):
            state = solver.init(_rotation, 1.0, 1.0 + h, y0, None)
            _, y_error, _, _, _ = solver.step(
                _rotation, 1.0, 1.0 + h, y0, None, state, False
            )
            estimates.append(jnp.max(jnp.abs(y_error)))
        orders = [float(jnp.log2(a / b)) for a, b in zip(estimates[:-1], estimates[1:])]
        assert all(abs(o - solver.error_order(_rotation)) < 0.1 for o in orders), orders


# The fused backward step: one vector-field evaluation per backward step.


class UnfusedLeapfrog(ra.AsynchronousLeapfrog):
    """Asynchronous leapfrog served by the generic path (invert with `backward_step`,
    then differentiate `step`)."""

    evaluation_reuse: ClassVar = None


def test_step_evaluates_once():
    y0, args = jnp.array([0.4, -0.3, 0.2]), jnp.array(0.8)
    term, solver = diffrax.ODETerm(sinh_vector_field), ra.AsynchronousLeapfrog()
    state = solver.init(term, 0.0, 0.1, y0, args)

    def step(y, state):
        return solver.step(term, 0.0, 0.1, y, args, state, False)

    assert count_primitives(jax.make_jaxpr(step)(y0, state).jaxpr, "sinh") == 1


def test_fused_backward_step_evaluates_once():
    assert backward_loop_evaluations(ra.AsynchronousLeapfrog()) == 1
    # The generic path: one evaluation to invert, one inside the step's vjp.
    assert backward_loop_evaluations(UnfusedLeapfrog()) == 2


def test_unfused_parity():
    """The generic path agrees too (it shares `step` and `backward_step`)."""
    inputs = (jnp.array([0.4, -0.3, 0.2]), jnp.array(0.8))
    for solver in (ra.AsynchronousLeapfrog(), UnfusedLeapfrog()):
        check_gradient_parity(
            lambda inputs, adjoint: sinh_loss(solver, adjoint, *inputs),
            inputs,
            nonzero=[0, 1],
        )


# Refusals.


# diffrax warns first that the solver is neither Itô nor Stratonovich.
@pytest.mark.filterwarnings("ignore:`AsynchronousLeapfrog` is not marked")
@pytest.mark.parametrize(
    "adjoint", [diffrax.RecursiveCheckpointAdjoint(), ra.ReversibleAdjoint()]
)
def test_refuses_sde(adjoint):
    bm = diffrax.VirtualBrownianTree(0.0, 1.0, tol=1e-3, shape=(2,), key=jr.PRNGKey(0))
    terms = diffrax.MultiTerm(
        diffrax.ODETerm(lambda t, y, args: -y),
        diffrax.ControlTerm(lambda t, y, args: 0.1 * y, bm),
    )
    with pytest.raises(ValueError, match=r"AsynchronousLeapfrog.*ODEs.*ReversibleHeun"):
        diffrax.diffeqsolve(
            terms,
            ra.AsynchronousLeapfrog(),
            0.0,
            1.0,
            0.1,
            jnp.ones(2),
            adjoint=adjoint,
        )


@pytest.mark.parametrize("eta", [0.5, 0.0, -0.3, 1.5])
def test_refuses_bad_eta(eta):
    with pytest.raises(ValueError, match=r"eta"):
        ra.AsynchronousLeapfrog(eta)


def test_warns_for_damping():
    with pytest.warns(UserWarning, match=r"\|1 - 2 \* eta\| \*\* \(-N\)"):
        ra.AsynchronousLeapfrog(eta=0.9)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        ra.AsynchronousLeapfrog()
        ra.AsynchronousLeapfrog(eta=1)
