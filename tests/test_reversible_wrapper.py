"""`Reversible`: the McCallum–Foster wrapper of an explicit Runge–Kutta method. Exact
gradients with `ReversibleAdjoint`, an exact inverse, the base method's order, SDEs,
and refusals."""

import functools as ft
import warnings

import diffrax
import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
import pytest

import reversible_adjoint as ra

from .helpers import (
    assert_nonzero,
    make_problem,
    max_relative_error,
    observed_orders,
    readout,
    round_trip_error_on_grid,
    solve_on_grid,
)

RTOL = 1e-8
BASES = {
    "Heun": diffrax.Heun(),
    "Midpoint": diffrax.Midpoint(),
    "Bosh3": diffrax.Bosh3(),
    "Tsit5": diffrax.Tsit5(),
    "Dopri5": diffrax.Dopri5(),
}
NAMES = ["term", "y0", "args", "t0", "t1", "ts", "dt0"]
MAX_STEPS = 256


#
# Gradients against `RecursiveCheckpointAdjoint`, same solver, same steps.
#


# PID tolerances per base, so that each solve takes tens of steps and rejects some.
PID_TOLERANCES = {
    "Heun": 1e-3,
    "Midpoint": 1e-3,
    "Bosh3": 1e-5,
    "Tsit5": 1e-7,
    "Dopri5": 1e-7,
}


def _controller(name, base):
    if name == "constant":
        return diffrax.ConstantStepSize()
    rtol = PID_TOLERANCES[base]
    return diffrax.PIDController(rtol=rtol, atol=0.01 * rtol)


def _grads(adjoint, base, controller_name, inputs):
    @eqx.filter_jit
    @ft.partial(eqx.filter_value_and_grad, has_aux=True)
    def grad(inputs):
        term, y0, args, t0, t1, ts, dt0 = inputs
        sol = diffrax.diffeqsolve(
            term,
            ra.Reversible(BASES[base]),
            t0,
            t1,
            dt0,
            y0,
            args=args,
            saveat=diffrax.SaveAt(ts=ts, t1=True),
            stepsize_controller=_controller(controller_name, base),
            adjoint=adjoint,
            max_steps=MAX_STEPS,
        )
        return readout(sol.ys) + 0.3 * readout(sol.ts), sol.stats

    (_, stats), grads = grad(inputs)
    return grads, stats


def _inputs(t0=0.0, t1=2.0, ts=(0.0, 0.13, 0.5, 0.51, 1.0, 1.77, 2.0), dt0=0.1):
    term, y0, args = make_problem()
    return term, y0, args, jnp.array(t0), jnp.array(t1), jnp.array(ts), jnp.array(dt0)


def _check(base, controller_name, inputs):
    # `checkpoints=MAX_STEPS` stores every step: the same gradient, compiled faster.
    reference = diffrax.RecursiveCheckpointAdjoint(checkpoints=MAX_STEPS)
    want, stats = _grads(reference, base, controller_name, inputs)
    got, _ = _grads(ra.ReversibleAdjoint(), base, controller_name, inputs)
    # Every input matters here; a zero reference would make the comparison vacuous.
    assert_nonzero(want)
    errors = {name: max_relative_error(g, w) for name, g, w in zip(NAMES, got, want)}
    assert max(errors.values()) < RTOL, errors
    return stats


# Compiling two gradients of a solve takes ~10 s of CPU per case, so the suite runs a
# cross-section: both controllers, both time directions, first-same-as-last bases
# (Bosh3, Tsit5) and not.
CASES = [
    ("Heun", "constant", "forwards"),
    ("Bosh3", "pid", "forwards"),
    ("Tsit5", "pid", "backwards"),
]


@pytest.mark.parametrize("base, controller_name, direction", CASES)
def test_all_inputs(base, controller_name, direction):
    """Pytree state, a parameter inside the term, a time-dependent field, gradients
    for `y0`, `args`, the term, `t0`, `t1`, `SaveAt(ts=...)` and `dt0`. Backwards in
    time (`t1 < t0`), diffrax wraps the terms in `WrapTerm`, and the base method steps
    both ways in the wrapped time."""
    dt0 = 0.1 if controller_name == "constant" else 0.5
    if direction == "forwards":
        inputs = _inputs(dt0=dt0)
    else:
        # The forward problem's save times, mirrored. (With some save times a
        # fifth-order solve hardly depends on `dt0`: its gradient is then ~1e-9, and
        # its relative error between adjoints is set by round-off in O(1) terms.)
        inputs = _inputs(
            t0=2.0, t1=0.0, ts=(2.0, 1.87, 1.5, 1.49, 1.0, 0.23, 0.0), dt0=-dt0
        )
    stats = _check(base, controller_name, inputs)
    if controller_name == "pid":
        assert stats["num_rejected_steps"] > 0
        assert stats["num_accepted_steps"] > 5


#
# The inverse.
#


def _oscillator():
    # y'' = −ω²y, written first-order; energy is conserved, nothing decays.
    omega = 2.0
    term = diffrax.ODETerm(lambda t, y, args: jnp.stack([y[1], -(omega**2) * y[0]]))
    return term, jnp.array([1.0, 0.0]), None


@pytest.mark.parametrize("base", ["Midpoint", "Tsit5"])
def test_round_trip(base):
    """Forward 1000 steps, then `backward_step` 1000 times, recovers `y0` and `z0`."""
    term, y0, args = _oscillator()
    solver = ra.Reversible(BASES[base], coupling=0.999)
    ts = 0.01 * jnp.arange(1001)
    state1 = solve_on_grid(solver, term, ts, y0, args).solver_state
    # The solve really went somewhere (ten radians of phase), and `z` differs from `y`.
    assert jnp.max(jnp.abs(state1 - y0)) > 0.1
    assert round_trip_error_on_grid(solver, term, ts, y0, args) < 1e-12


def test_backward_step_on_pytree_state():
    term, y0, args = make_problem()
    solver = ra.Reversible(diffrax.Dopri8())
    state0 = solver.init(term, 0.0, 0.1, y0, args)
    y1, _, _, state1, _ = solver.step(term, 0.0, 0.1, y0, args, state0, False)
    y_inv, state_inv = solver.backward_step(term, 0.0, 0.1, y1, args, state1, False)
    assert jax.tree_util.tree_structure(state_inv) == jax.tree_util.tree_structure(
        state0
    )
    assert max_relative_error((y_inv, state_inv), (y0, state0)) < 1e-14


#
# Order.
#


ORDERS = {
    "Euler": (diffrax.Euler(), 1),
    "Heun": (diffrax.Heun(), 2),
    "Midpoint": (diffrax.Midpoint(), 2),
    "Ralston": (diffrax.Ralston(), 2),
    "Bosh3": (diffrax.Bosh3(), 3),
    "Tsit5": (diffrax.Tsit5(), 5),
    "Dopri5": (diffrax.Dopri5(), 5),
}


# At most 80 steps: see `test_order`.
WRAPPER_STEPS = (10, 20, 40, 80)


@pytest.mark.parametrize("base", list(ORDERS))
def test_order(base):
    """The wrapper has the base method's order.

    The problem is a rotation (inside the stability strip), and the grids have at most
    80 steps, so `N·(1 − λ) ≤ 0.08`: for odd-order bases the wrapper's leading error
    term changes sign as `N·(1 − λ)` grows to O(1) (z lags y by the base method's
    local error, and the coupling feeds that back), which bends measured ratios. Each
    ratio must be within 0.2 of the order, or, for bases still short of their
    asymptotic regime on these grids (Tsit5, whose tuned error coefficients make the
    bare method measure ~5.5 here), within 0.2 of the bare base method's own
    measurement."""
    solver, order = ORDERS[base]
    wrapped = ra.Reversible(solver)
    assert wrapped.order(None) == order
    orders = observed_orders(wrapped, WRAPPER_STEPS)
    bare_orders = observed_orders(solver, WRAPPER_STEPS)
    for o, bare in zip(orders, bare_orders):
        assert abs(bare - order) < 0.6, bare_orders
        assert abs(o - order) < 0.2 or abs(o - bare) < 0.2, (orders, bare_orders)


#
# SDEs.
#


def test_sde_parity():
    """Stratonovich SDE with `Reversible(Heun())`: gradients for `y0`, `args` and
    `SaveAt(ts=...)`. (`VirtualBrownianTree` cannot be differentiated with respect to
    time, so `t0`/`t1` gradients do not exist for either adjoint.)"""
    t0, t1 = 0.0, 1.0
    bm = diffrax.VirtualBrownianTree(t0, t1, tol=1e-6, shape=(2,), key=jr.PRNGKey(0))

    def drift(t, y, args):
        a, _ = args
        return -a * y + jnp.sin(t) * y[::-1]

    def diffusion(t, y, args):
        _, b = args
        return b * jnp.diag(jnp.tanh(y))

    terms = diffrax.MultiTerm(
        diffrax.ODETerm(drift), diffrax.ControlTerm(diffusion, bm)
    )

    def grad(adjoint):
        @eqx.filter_jit
        @eqx.filter_grad
        def _grad(inputs):
            y0, args, ts = inputs
            sol = diffrax.diffeqsolve(
                terms,
                ra.Reversible(diffrax.Heun()),
                t0,
                t1,
                0.02,
                y0,
                args=args,
                saveat=diffrax.SaveAt(ts=ts, t1=True),
                adjoint=adjoint,
            )
            return readout(sol.ys)

        inputs = (
            jnp.array([0.8, -0.5]),
            (jnp.array(0.6), jnp.array(0.4)),
            jnp.array([0.11, 0.5, 0.93]),
        )
        return _grad(inputs)

    want = grad(diffrax.RecursiveCheckpointAdjoint())
    assert_nonzero(want)
    assert max_relative_error(grad(ra.ReversibleAdjoint()), want) < RTOL


#
# Refusals.
#


@pytest.mark.parametrize(
    "base", [diffrax.Kvaerno5(), diffrax.ImplicitEuler(), diffrax.KenCarp4()]
)
def test_refuses_implicit(base):
    with pytest.raises(
        ValueError,
        match=r"explicit Runge–Kutta.*implicit.*Tsit5.*RecursiveCheckpointAdjoint",
    ):
        ra.Reversible(base)


@pytest.mark.parametrize(
    "base",
    [
        diffrax.SEA(),
        diffrax.EulerHeun(),
        diffrax.LeapfrogMidpoint(),
        diffrax.SemiImplicitEuler(),
    ],
)
def test_refuses_non_runge_kutta(base):
    with pytest.raises(
        ValueError, match=r"explicit Runge–Kutta.*Tsit5.*Reversible\(diffrax.Heun\(\)\)"
    ):
        ra.Reversible(base)


@pytest.mark.parametrize("base", [diffrax.ReversibleHeun(), ra.ReversibleHeun()])
def test_refuses_reversible(base):
    with pytest.raises(
        ValueError, match=r"already algebraically reversible.*ReversibleAdjoint"
    ):
        ra.Reversible(base)


@pytest.mark.parametrize("coupling", [0.0, -0.5, 1.5])
def test_refuses_bad_coupling(coupling):
    with pytest.raises(ValueError, match=r"coupling.*\(0, 1\]"):
        ra.Reversible(diffrax.Tsit5(), coupling=coupling)


def test_warns_for_small_coupling():
    with pytest.warns(UserWarning, match=r"coupling\^\(-N\)") as record:
        ra.Reversible(diffrax.Tsit5(), coupling=0.9)
    # Attributed to the line above, not to equinox's or jaxtyping's wrappers.
    assert record[0].filename == __file__
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        ra.Reversible(diffrax.Tsit5())
        ra.Reversible(diffrax.Tsit5(), coupling=1)
        ra.Reversible(diffrax.Tsit5(), coupling=0.99)


@pytest.mark.parametrize("base", [diffrax.Euler(), diffrax.Tsit5()])
@pytest.mark.parametrize(
    "adjoint", [diffrax.RecursiveCheckpointAdjoint(), ra.ReversibleAdjoint()]
)
def test_refuses_non_stratonovich_base_for_sde(base, adjoint):
    bm = diffrax.VirtualBrownianTree(0.0, 1.0, tol=1e-3, shape=(2,), key=jr.PRNGKey(0))
    terms = diffrax.MultiTerm(
        diffrax.ODETerm(lambda t, y, args: -y),
        diffrax.ControlTerm(lambda t, y, args: 0.1 * y, bm),
    )
    name = type(base).__name__
    with pytest.raises(
        ValueError,
        match=rf"Reversible\({name}\(\)\).*SDE.*Stratonovich.*Heun.*Midpoint",
    ):
        diffrax.diffeqsolve(
            terms, ra.Reversible(base), 0.0, 1.0, 0.1, jnp.ones(2), adjoint=adjoint
        )
