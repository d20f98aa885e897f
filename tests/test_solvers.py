"""Every reversible solver, ours and diffrax's (run through our inverses), on the same
checks: a round trip (forward, then every step undone with `backward_step`) recovers
`y0` and the solver state; `backward_step` undoes `step`; the forward pass is that of
diffrax's own solver where there is one; and the observed order of convergence is the
solver's order."""

import warnings

import diffrax
import jax.numpy as jnp
import jax.tree_util as jtu
import pytest

import reversible_adjoint as ra

from .helpers import (
    STEP_TO_INTERIOR,
    check_inverse_is_step_backwards,
    make_problem,
    make_split_problem,
    max_relative_error,
    observed_orders,
    round_trip_error_on_grid,
)


def _damped(eta):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the warning about amplified round-off
        return ra.AsynchronousLeapfrog(eta)


# name: (solver, our inverse of it, order)
SOLVERS = {
    "ReversibleHeun": (ra.ReversibleHeun(), ra.ReversibleHeun(), 2),
    "AsynchronousLeapfrog": (ra.AsynchronousLeapfrog(), ra.AsynchronousLeapfrog(), 2),
    "AsynchronousLeapfrog(eta=0.9)": (_damped(0.9), _damped(0.9), 1),
    "Reversible(Midpoint)": (*[ra.Reversible(diffrax.Midpoint())] * 2, 2),
    "Reversible(Tsit5)": (*[ra.Reversible(diffrax.Tsit5())] * 2, 5),
    "LeapfrogMidpoint": (ra.LeapfrogMidpoint(), ra.LeapfrogMidpoint(), 2),
    "SemiImplicitEuler": (ra.SemiImplicitEuler(), ra.SemiImplicitEuler(), 1),
    "diffrax.ReversibleHeun": (diffrax.ReversibleHeun(), ra.ReversibleHeun(), 2),
    "diffrax.LeapfrogMidpoint": (diffrax.LeapfrogMidpoint(), ra.LeapfrogMidpoint(), 2),
    "diffrax.SemiImplicitEuler": (
        diffrax.SemiImplicitEuler(),
        ra.SemiImplicitEuler(),
        1,
    ),
}
# Ours, against diffrax's.
COUNTERPARTS = {
    "ReversibleHeun": ["constant", "stepto", "pid"],
    "LeapfrogMidpoint": ["constant", "stepto"],
    "SemiImplicitEuler": ["constant", "stepto"],
}


def _problem(name):
    return make_split_problem() if "SemiImplicitEuler" in name else make_problem()


# A non-uniform grid over [0, 10] of 1000 steps, between 0.5 and 1.5 times the mean
# step, varying from step to step.
_u = jnp.linspace(0.0, 1.0, 1001)
ROUND_TRIP_GRID = 10.0 * (_u + 0.5 * jnp.sin(40 * jnp.pi * _u) / (40 * jnp.pi))


@pytest.mark.parametrize("name", SOLVERS)
def test_round_trip(name):
    """1000 steps forward on a non-uniform grid, then `backward_step` 1000 times,
    recovers `y0` and the initial solver state (`round_trip_error` measures both).
    With `eta < 1` the inverse amplifies round-off by `1/|1 − 2η|` per step: 20
    steps."""
    solver, _, _ = SOLVERS[name]
    terms, y0, args = _problem(name)
    ts = ROUND_TRIP_GRID[:21] if "eta" in name else ROUND_TRIP_GRID
    assert not jnp.allclose(jnp.diff(ts), ts[1] - ts[0])
    assert round_trip_error_on_grid(solver, terms, ts, y0, args) < 1e-12


@pytest.mark.parametrize("name", SOLVERS)
def test_backward_step_undoes_step(name):
    """Two steps of different sizes forward, then `backward_step` (of our inverse)
    undoes the second: the start of the step and the solver state there, with the
    same structure, to round-off."""
    solver, inverse, _ = SOLVERS[name]
    terms, y0, args = _problem(name)
    state0 = solver.init(terms, 0.0, 0.1, y0, args)
    y1, _, _, state1, _ = solver.step(terms, 0.0, 0.1, y0, args, state0, False)
    y2, _, _, state2, _ = solver.step(terms, 0.1, 0.25, y1, args, state1, False)
    assert max_relative_error(y2, y1) > 1e-3
    y_inv, state_inv = inverse.backward_step(
        terms, 0.1, 0.25, y2, args, state2, False, t_previous=0.0
    )
    assert jtu.tree_structure((y_inv, state_inv)) == jtu.tree_structure((y1, state1))
    assert max_relative_error((y_inv, state_inv), (y1, state1)) < 1e-14
    if isinstance(solver, ra.Reversible):
        assert (
            max_relative_error(state2, y2) > 0
        )  # `z` is not `y`: recovering it counts


@pytest.mark.parametrize("name", ["ReversibleHeun", "AsynchronousLeapfrog"])
def test_inverse_is_step_backwards(name):
    """For these the inverse is the scheme itself run from `t1` to `t0`."""
    check_inverse_is_step_backwards(SOLVERS[name][0])


def _solve(name, solver, controller_name):
    terms, y0, args = _problem(name)
    controller, dt0 = {
        "constant": (diffrax.ConstantStepSize(), 0.05),
        "pid": (diffrax.PIDController(rtol=1e-4, atol=1e-6), 0.3),
        "stepto": (
            diffrax.StepTo(
                jnp.concatenate([jnp.zeros(1), STEP_TO_INTERIOR, jnp.full(1, 2.0)])
            ),
            None,
        ),
    }[controller_name]
    return diffrax.diffeqsolve(
        terms,
        solver,
        0.0,
        2.0,
        dt0,
        y0,
        args=args,
        saveat=diffrax.SaveAt(steps=True, solver_state=True),
        stepsize_controller=controller,
        max_steps=256,
    )


@pytest.mark.parametrize(
    "name, controller_name",
    [(name, c) for name, controllers in COUNTERPARTS.items() for c in controllers],
)
def test_matches_diffrax(name, controller_name):
    """Forward: bit for bit the numbers of diffrax's solver, at every step, the steps
    themselves and the final solver state included."""
    ours, _, _ = SOLVERS[name]
    theirs, _, _ = SOLVERS[f"diffrax.{name}"]
    got, want = (_solve(name, s, controller_name) for s in (ours, theirs))
    assert got.stats["num_steps"] == want.stats["num_steps"] >= 10
    # Past the last step the buffers hold `inf`.
    got, want = (jtu.tree_leaves((s.ts, s.ys, s.solver_state)) for s in (got, want))
    assert len(got) == len(want)
    assert all(jnp.array_equal(g, w) for g, w in zip(got, want))


# Steps per solve for the observed order: in the asymptotic regime, short of
# round-off.
STEPS = (100, 200, 400, 800)
FINER_STEPS = (200, 400, 800, 1600)  # leapfrog–midpoint, semi-implicit Euler
# At most 80 steps for the `Reversible` wrapper: see `test_order`.
WRAPPER_STEPS = (10, 20, 40, 80)
# `Reversible` of further bases, for the order only.
WRAPPED_BASES = {
    "Euler": (diffrax.Euler(), 1),
    "Heun": (diffrax.Heun(), 2),
    "Ralston": (diffrax.Ralston(), 2),
    "Bosh3": (diffrax.Bosh3(), 3),
    "Dopri5": (diffrax.Dopri5(), 5),
}
ORDER_CASES = {
    **{name: (solver, order) for name, (solver, _, order) in SOLVERS.items()},
    **{
        f"Reversible({b})": (ra.Reversible(s), o) for b, (s, o) in WRAPPED_BASES.items()
    },
}


@pytest.mark.parametrize("name", ORDER_CASES)
def test_order(name):
    """The global error, on a problem with a known solution, shrinks by 2^order per
    halving of the step, and `order` says so.

    For the `Reversible` wrapper the problem is a rotation (inside the stability
    strip), and the grids have at most 80 steps, so `N·(1 − λ) ≤ 0.08`: for odd-order
    bases the wrapper's leading error term changes sign as `N·(1 − λ)` grows to O(1)
    (z lags y by the base method's local error, and the coupling feeds that back),
    which bends measured ratios. Each ratio must be within 0.2 of the order, or, for
    bases still short of their asymptotic regime on these grids (Tsit5, whose tuned
    error coefficients make the bare method measure ~5.5 here), within 0.2 of the bare
    base method's own measurement."""
    solver, order = ORDER_CASES[name]
    split = "SemiImplicitEuler" in name
    assert solver.order(_problem(name)[0]) == order
    if not isinstance(solver, ra.Reversible):
        finer = split or "LeapfrogMidpoint" in name
        orders = observed_orders(solver, FINER_STEPS if finer else STEPS, split)
        assert all(abs(o - order) < 0.1 for o in orders), orders
        return
    orders = observed_orders(solver, WRAPPER_STEPS)
    bare_orders = observed_orders(solver.solver, WRAPPER_STEPS)
    for o, bare in zip(orders, bare_orders, strict=True):
        assert abs(bare - order) < 0.6, bare_orders
        assert abs(o - order) < 0.2 or abs(o - bare) < 0.2, (orders, bare_orders)
