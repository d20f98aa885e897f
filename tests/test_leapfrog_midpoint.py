"""`LeapfrogMidpoint`: same numbers as diffrax's, an exact inverse on any grid, second
order, and `ReversibleAdjoint` gradients equal to `RecursiveCheckpointAdjoint`'s for
both our instance and diffrax's."""

import diffrax
import jax.numpy as jnp
import pytest

import reversible_adjoint as ra

from .helpers import (
    check_parity_constant_or_step_to,
    check_step_to_grid_gradient,
    make_problem,
    max_relative_error,
    observed_orders,
    round_trip_error_on_grid,
    solve_constant_or_step_to,
)

RTOL = 1e-8
SOLVERS = [ra.LeapfrogMidpoint(), diffrax.LeapfrogMidpoint()]
SOLVER_IDS = ["ra.LeapfrogMidpoint", "diffrax.LeapfrogMidpoint"]
NAMES = ["term", "y0", "args", "t0", "t1", "ts", "dt0"]


def _inputs():
    term, y0, args = make_problem()
    ts = jnp.array([0.0, 0.13, 0.5, 0.51, 1.0, 1.77, 2.0])
    return term, y0, args, jnp.array(0.0), jnp.array(2.0), ts, jnp.array(0.05)


# diffrax's instance runs the same forward pass: checked on constant steps (the
# `StepTo` grid test below covers it on a non-uniform grid).
@pytest.mark.parametrize(
    "solver, controller_name",
    [(SOLVERS[0], "constant"), (SOLVERS[0], "stepto"), (SOLVERS[1], "constant")],
    ids=["ours-constant", "ours-stepto", "diffrax-constant"],
)
def test_gradient_parity(solver, controller_name):
    """Every input, `SaveAt(ts=..., t1=True)` and `SaveAt(steps=True)` together. On the
    `StepTo` grid (and, by round-off, on the `ConstantStepSize` one) consecutive steps
    differ, so the inverse must use the recorded previous time."""
    check_parity_constant_or_step_to(_inputs(), solver, controller_name, NAMES, RTOL)


@pytest.mark.parametrize("solver", SOLVERS, ids=SOLVER_IDS)
def test_step_to_grid_gradient(solver):
    """Gradient with respect to the times of a non-uniform `StepTo` grid."""
    check_step_to_grid_gradient(_inputs(), solver, RTOL)


def test_matches_diffrax():
    """Forward: bit-for-bit the numbers of `diffrax.LeapfrogMidpoint`, state
    included."""
    for controller_name in ["constant", "stepto"]:
        inputs = _inputs()
        sols = [
            solve_constant_or_step_to(inputs, solver, controller_name).ys
            for solver in SOLVERS
        ]
        assert max_relative_error(sols[0], sols[1]) == 0


@pytest.mark.parametrize("grid", ["uniform", "non-uniform"])
def test_round_trip(grid):
    """1000 steps forward then back recovers `y0` and the state `(t0, y0)`."""
    term, y0, args = make_problem()
    u = jnp.linspace(0.0, 1.0, 1001)
    # Steps between 0.5 and 1.5 times the mean, varying from step to step.
    ts = (
        10.0 * u
        if grid == "uniform"
        else 10.0 * (u + 0.5 * jnp.sin(40 * jnp.pi * u) / (40 * jnp.pi))
    )
    assert (grid == "uniform") == bool(jnp.allclose(jnp.diff(ts), 0.01))
    assert round_trip_error_on_grid(ra.LeapfrogMidpoint(), term, ts, y0, args) < 1e-12


def test_backward_step_needs_previous_time():
    """The inverse needs the previous time: a wrong one gives a wrong `y₋₁`."""
    term, y0, args = make_problem()
    solver = ra.LeapfrogMidpoint()
    assert solver.needs_previous_time
    state = (0.0, y0)
    y1, _, _, state1, _ = solver.step(term, 0.1, 0.3, y0, args, (0.0, y0), False)
    y_inv, state_inv = solver.backward_step(
        term, 0.1, 0.3, y1, args, state1, False, t_previous=0.0
    )
    assert max_relative_error((y_inv, state_inv), (y0, state)) < 1e-15
    _, (_, ym1_wrong) = solver.backward_step(
        term, 0.1, 0.3, y1, args, state1, False, t_previous=-0.1
    )
    assert max_relative_error(ym1_wrong, y0) > 1e-3


def test_second_order():
    """Global error on a problem with a known solution shrinks 4x per halving."""
    orders = observed_orders(ra.LeapfrogMidpoint(), (200, 400, 800, 1600))
    assert all(abs(o - 2) < 0.1 for o in orders), orders


@pytest.mark.parametrize("solver", SOLVERS, ids=SOLVER_IDS)
def test_adaptive_steps_refused(solver):
    """No error estimate: a `PIDController` is refused, as diffrax refuses it."""
    term, y0, args = make_problem()
    with pytest.raises(RuntimeError, match="adaptive step sizes.*error estimates"):
        diffrax.diffeqsolve(
            term,
            solver,
            0.0,
            1.0,
            0.1,
            y0,
            args=args,
            stepsize_controller=diffrax.PIDController(rtol=1e-3, atol=1e-6),
            adjoint=ra.ReversibleAdjoint(),
        )
