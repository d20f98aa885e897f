"""`SemiImplicitEuler`: `ReversibleAdjoint` gradients equal to
`RecursiveCheckpointAdjoint`'s for both our instance and diffrax's, and adaptive steps
refused. (Its round trip, inverse, agreement with diffrax and order are in
test_solvers.py.)"""

import diffrax
import jax.numpy as jnp
import pytest

import reversible_adjoint as ra

from .helpers import (
    check_parity_constant_or_step_to,
    make_split_problem,
    problem_inputs,
)

SOLVERS = [ra.SemiImplicitEuler(), diffrax.SemiImplicitEuler()]
SOLVER_IDS = ["ra.SemiImplicitEuler", "diffrax.SemiImplicitEuler"]


# diffrax's instance runs the same forward pass (and is served by the same backward
# pass): checked on constant steps, ours on the `StepTo` grid, and on constant steps
# with checkpoints below.
@pytest.mark.parametrize(
    "solver, controller_name",
    [(SOLVERS[0], "stepto"), (SOLVERS[1], "constant")],
    ids=["ours-stepto", "diffrax-constant"],
)
def test_gradient_parity(solver, controller_name):
    """Every input, `SaveAt(ts=..., t1=True)` and `SaveAt(steps=True)` together, and
    on a non-uniform `StepTo` grid the grid's times."""
    check_parity_constant_or_step_to(
        problem_inputs(problem=make_split_problem()), solver, controller_name
    )


def test_gradient_parity_with_checkpoints():
    """As above, restarting from a checkpoint every 7 of the 40 steps (and so
    recomputing the step times between them)."""
    adjoint = ra.ReversibleAdjoint(checkpoint_every=7)
    check_parity_constant_or_step_to(
        problem_inputs(problem=make_split_problem()),
        SOLVERS[0],
        "constant",
        adjoint=adjoint,
    )


# The harmonic oscillator q' = p, p' = −q, as two terms.
OSCILLATOR = (
    diffrax.ODETerm(lambda t, p, args: p),
    diffrax.ODETerm(lambda t, q, args: -q),
)


@pytest.mark.parametrize("solver", SOLVERS, ids=SOLVER_IDS)
def test_adaptive_steps_refused(solver):
    """No error estimate: a `PIDController` is refused, as diffrax refuses it."""
    y0 = (jnp.array(1.0), jnp.array(0.0))
    with pytest.raises(RuntimeError, match="adaptive step sizes.*error estimates"):
        diffrax.diffeqsolve(
            OSCILLATOR,
            solver,
            0.0,
            1.0,
            0.1,
            y0,
            stepsize_controller=diffrax.PIDController(rtol=1e-3, atol=1e-6),
            adjoint=ra.ReversibleAdjoint(),
        )
