"""`AsynchronousLeapfrog`: gradients that match `RecursiveCheckpointAdjoint`, an exact
inverse, its orders of convergence, adaptive steps, and its refusals."""

import warnings
from typing import ClassVar

import diffrax
import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
import jax.tree_util as jtu
import pytest

import reversible_adjoint as ra

from .helpers import (
    assert_nonzero,
    backward_loop_evaluations,
    check_inverse_is_step_backwards,
    count_primitives,
    make_problem,
    max_relative_error,
    readout,
    round_trip_error_on_grid,
    sinh_loss,
    sinh_vector_field,
)

RTOL = 1e-8
INPUT_NAMES = ["term", "y0", "args", "t0", "t1", "ts", "dt0"]


def _damped(eta):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return ra.AsynchronousLeapfrog(eta)


# Gradient parity with `RecursiveCheckpointAdjoint`.


def _controller(name):
    if name == "constant":
        return diffrax.ConstantStepSize()
    if name == "pid":
        return diffrax.PIDController(rtol=1e-3, atol=1e-5)
    raise ValueError(name)


def _solve(inputs, adjoint, solver, controller_name, saveat=None):
    term, y0, args, t0, t1, ts, dt0 = inputs
    if saveat is None:
        saveat = diffrax.SaveAt(ts=ts, t1=True)
    return diffrax.diffeqsolve(
        term,
        solver,
        t0,
        t1,
        dt0,
        y0,
        args=args,
        saveat=saveat,
        stepsize_controller=_controller(controller_name),
        adjoint=adjoint,
        max_steps=512,
    )


def _grads(adjoint, solver, controller_name, inputs):
    @eqx.filter_jit
    @eqx.filter_grad
    def grad(inputs):
        sol = _solve(inputs, adjoint, solver, controller_name)
        return readout(sol.ys) + 0.3 * readout(sol.ts)

    return grad(inputs)


def _inputs(t0=0.0, t1=2.0, ts=(0.0, 0.13, 0.5, 0.51, 1.0, 1.77, 2.0), dt0=0.05):
    term, y0, args = make_problem()
    return term, y0, args, jnp.array(t0), jnp.array(t1), jnp.array(ts), jnp.array(dt0)


def parity_errors(solver, controller_name, inputs):
    """Relative error of `ReversibleAdjoint`'s gradient against
    `RecursiveCheckpointAdjoint`'s, per input, and the reference gradient."""
    want = _grads(diffrax.RecursiveCheckpointAdjoint(), solver, controller_name, inputs)
    got = _grads(ra.ReversibleAdjoint(), solver, controller_name, inputs)
    errors = {}
    for name, g, w in zip(INPUT_NAMES, got, want, strict=True):
        if w is None:
            assert g is None, name
            continue
        errors[name] = max_relative_error(g, w)
    return errors, want


@pytest.mark.parametrize("controller_name", ["constant", "pid"])
def test_parity_all_inputs(controller_name):
    dt0 = 0.05 if controller_name == "constant" else 0.3
    inputs = _inputs(dt0=dt0)
    errors, want = parity_errors(ra.AsynchronousLeapfrog(), controller_name, inputs)
    assert max(errors.values()) < RTOL, errors
    # A zero reference would make the comparison vacuous.
    assert_nonzero(want)
    if controller_name == "pid":
        sol = _solve(inputs, ra.ReversibleAdjoint(), ra.AsynchronousLeapfrog(), "pid")
        assert sol.stats["num_rejected_steps"] > 0
        assert sol.stats["num_accepted_steps"] > 10


def test_parity_backwards_in_time():
    """`t1 < t0`: diffrax wraps the term (`WrapTerm`); the step goes through
    `terms.contr`/`terms.prod`, so it works, and so do its gradients."""
    inputs = _inputs(t0=2.0, t1=0.0, ts=(2.0, 1.6, 0.9, 0.2), dt0=-0.05)
    errors, want = parity_errors(ra.AsynchronousLeapfrog(), "constant", inputs)
    assert max(errors.values()) < RTOL, errors
    assert_nonzero(want)


def test_parity_damped():
    """`eta < 1`, on a short solve (the inverse amplifies round-off by 1/|1 − 2η| per
    step, here 1.25^40 ≈ 7e3)."""
    inputs = _inputs(t1=1.0, ts=(0.0, 0.3, 0.77, 1.0), dt0=0.025)
    errors, want = parity_errors(_damped(0.9), "constant", inputs)
    assert max(errors.values()) < RTOL, errors
    assert_nonzero(want)


# The inverse.


def _harmonic_oscillator():
    term = diffrax.ODETerm(lambda t, y, args: jnp.array([y[1], -args * y[0]]))
    return term, jnp.array([1.0, 0.0]), jnp.array(4.0)


@pytest.mark.parametrize("num_steps", [10, 1000])
def test_round_trip(num_steps):
    """Forward N steps, then `backward_step` N times, recovers `y0` and `v0`."""
    for term, y0, args in (make_problem(), _harmonic_oscillator()):
        ts = 0.01 * jnp.arange(num_steps + 1)
        error = round_trip_error_on_grid(ra.AsynchronousLeapfrog(), term, ts, y0, args)
        assert error < 1e-12


def test_round_trip_damped():
    """With `eta < 1` the inverse is still exact, up to round-off amplified by
    `1/|1 − 2η|` per step."""
    term, y0, args = _harmonic_oscillator()
    ts = 0.01 * jnp.arange(21)
    assert round_trip_error_on_grid(_damped(0.9), term, ts, y0, args) < 1e-12


def test_backward_step_is_step_backwards_in_time():
    """At `eta = 1` the inverse is the step itself with time reversed: a step from t1
    to t0 undoes a step from t0 to t1 (to round-off)."""
    check_inverse_is_step_backwards(ra.AsynchronousLeapfrog())


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


# Orders of convergence.

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


def test_second_order():
    orders = _observed_orders(ra.AsynchronousLeapfrog())
    assert all(abs(o - 2) < 0.1 for o in orders), orders
    assert ra.AsynchronousLeapfrog().order(_rotation) == 2


def test_dense_output_second_order():
    """`SaveAt(ts=...)` between the steps (Hermite interpolation on `(z, v)`) converges
    at the method's order."""
    ts = jnp.array([0.123, 0.77, 1.2345, 1.9])
    orders = _observed_orders(ra.AsynchronousLeapfrog(), ts)
    assert all(abs(o - 2) < 0.15 for o in orders), orders
    # Backwards in time (`WrapTerm`), where the Hermite slopes are `terms.prod(v, Δ)`.
    orders = _observed_orders(ra.AsynchronousLeapfrog(), ts[::-1], backwards=True)
    assert all(abs(o - 2) < 0.15 for o in orders), orders


def test_damped_first_order():
    orders = _observed_orders(_damped(0.9))
    assert all(abs(o - 1) < 0.1 for o in orders), orders
    assert _damped(0.9).order(_rotation) == 1


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
    y0, args = jnp.array([0.4, -0.3, 0.2]), jnp.array(0.8)
    grad = jax.jit(jax.grad(sinh_loss, argnums=(2, 3)), static_argnums=(0, 1))
    want = grad(
        ra.AsynchronousLeapfrog(), diffrax.RecursiveCheckpointAdjoint(), y0, args
    )
    assert_nonzero(want)
    for solver in (ra.AsynchronousLeapfrog(), UnfusedLeapfrog()):
        assert (
            max_relative_error(grad(solver, ra.ReversibleAdjoint(), y0, args), want)
            < RTOL
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
