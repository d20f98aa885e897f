"""`LeapfrogMidpoint`: `ReversibleAdjoint` gradients equal to
`RecursiveCheckpointAdjoint`'s for both our instance and diffrax's, an inverse that
needs the previous time, and adaptive steps refused. (Its round trip, inverse,
agreement with diffrax and order are in test_solvers.py.)"""

import diffrax
import pytest

import reversible_adjoint as ra

from .helpers import (
    check_parity_constant_or_step_to,
    make_problem,
    max_relative_error,
    problem_inputs,
)

SOLVERS = [ra.LeapfrogMidpoint(), diffrax.LeapfrogMidpoint()]
SOLVER_IDS = ["ra.LeapfrogMidpoint", "diffrax.LeapfrogMidpoint"]


# diffrax's instance runs the same forward pass (and is served by the same backward
# pass): checked on constant steps.
@pytest.mark.parametrize(
    "solver, controller_name",
    [(SOLVERS[0], "constant"), (SOLVERS[0], "stepto"), (SOLVERS[1], "constant")],
    ids=["ours-constant", "ours-stepto", "diffrax-constant"],
)
def test_gradient_parity(solver, controller_name):
    """Every input, `SaveAt(ts=..., t1=True)` and `SaveAt(steps=True)` together, and
    on a `StepTo` grid the grid's times. On the non-uniform `StepTo` grid (and, by
    round-off, on the `ConstantStepSize` one) consecutive steps differ, so the inverse
    must use the recorded previous time."""
    check_parity_constant_or_step_to(problem_inputs(), solver, controller_name)


def test_backward_step_needs_previous_time():
    """The inverse needs the previous time: a wrong one gives a wrong `y₋₁`."""
    term, y0, args = make_problem()
    solver = ra.LeapfrogMidpoint()
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
