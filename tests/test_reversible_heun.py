"""`ReversibleHeun`: same numbers as diffrax's, an exact inverse, second order."""

import diffrax
import jax.numpy as jnp
import pytest

import reversible_adjoint as ra

from .helpers import (
    check_inverse_is_step_backwards,
    make_problem,
    max_relative_error,
    observed_orders,
    round_trip_error_on_grid,
)


@pytest.mark.parametrize("num_steps", [10, 1000])
def test_round_trip(num_steps):
    """Forward N steps, then `backward_step` N times, recovers the start."""
    term, y0, args = make_problem()
    ts = 0.01 * jnp.arange(num_steps + 1)
    assert round_trip_error_on_grid(ra.ReversibleHeun(), term, ts, y0, args) < 1e-12


def test_matches_diffrax_reversible_heun():
    term, y0, args = make_problem()
    ts = jnp.linspace(0.0, 2.0, 9)
    for controller, dt0 in [
        (diffrax.ConstantStepSize(), 0.05),
        (diffrax.PIDController(rtol=1e-4, atol=1e-6), 0.3),
    ]:
        sols = [
            diffrax.diffeqsolve(
                term,
                solver,
                0.0,
                2.0,
                dt0,
                y0,
                args=args,
                saveat=diffrax.SaveAt(ts=ts),
                stepsize_controller=controller,
            )
            for solver in (ra.ReversibleHeun(), diffrax.ReversibleHeun())
        ]
        assert max_relative_error(sols[0].ys, sols[1].ys) == 0
        assert sols[0].stats["num_steps"] == sols[1].stats["num_steps"]


def test_second_order():
    """Global error on a problem with a known solution shrinks 4x per halving."""
    orders = observed_orders(ra.ReversibleHeun(), (100, 200, 400, 800))
    assert all(abs(o - 2) < 0.1 for o in orders), orders


def test_backward_step_is_step_with_negated_increment():
    """The inverse is the same scheme run backwards: a step from t1 to t0 undoes a
    step from t0 to t1 (checked on the state, to round-off)."""
    check_inverse_is_step_backwards(ra.ReversibleHeun())
