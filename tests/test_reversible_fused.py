"""`Reversible`'s fused backward step: `ReversibleAdjoint` makes each of the two base
steps of a step once (a linearisation) and uses it both to reconstruct the step and to
differentiate it. Base steps per backward step, gradients against
`RecursiveCheckpointAdjoint`, and where the fusing is left out."""

import diffrax
import jax
import jax.numpy as jnp
import pytest

import reversible_adjoint as ra

from .helpers import (
    INPUT_NAMES,
    backward_loop_evaluations,
    check_parity_constant_or_step_to,
    check_solve_parity,
    max_relative_error,
    problem_inputs,
    sinh_loss,
)


class UnfusedReversible(ra.Reversible):
    """`Reversible` served by the generic path: invert with `backward_step`, then
    differentiate `step`."""

    @property
    def evaluation_reuse(self):
        return None


#
# Base steps per backward step.
#


# Stages per base step: those the solution uses, and those only the error estimate and
# dense output use (the last of a first-same-as-last method).
@pytest.mark.parametrize(
    "base, solution, others", [(diffrax.Midpoint(), 2, 0), (diffrax.Tsit5(), 6, 1)]
)
def test_backward_step_makes_two_base_steps(base, solution, others):
    """Fused: the two base steps that reconstruct the step are the ones its pullback
    goes through, and the pullback evaluates no stage again. Unfused: two to
    reconstruct, two more inside the step's `jax.vjp`. Either way the stages that only
    the error estimate and dense output need are made in the step, for the forward
    base step only (and compiled away when unused, as here)."""
    assert ra.Reversible(base).evaluation_reuse == "same_step"
    assert backward_loop_evaluations(ra.Reversible(base)) == 2 * solution + others
    assert backward_loop_evaluations(UnfusedReversible(base)) == (4 * solution + others)


#
# Gradients against `RecursiveCheckpointAdjoint`.
#


@pytest.mark.slow
def test_step_to_parity():
    """`Reversible(Midpoint())` on a non-uniform `StepTo` grid, saving `ts`, `t1` and
    every step: every input, the grid included."""
    check_parity_constant_or_step_to(
        problem_inputs(dt0=0.1), ra.Reversible(diffrax.Midpoint()), "stepto"
    )


def test_dense_output_parity():
    """`Reversible(Tsit5())` with adaptive steps, saving `t0`, `ts` and `t1`: the
    dense output inside a step comes from the replayed forward base step. Every input;
    `dt0`, which a fifth-order solve hardly depends on, to round-off."""
    _, _, stats = check_solve_parity(
        problem_inputs(dt0=0.5),
        ra.Reversible(diffrax.Tsit5()),
        diffrax.PIDController(rtol=1e-7, atol=1e-9),
        lambda ts: diffrax.SaveAt(t0=True, ts=ts, t1=True),
        max_steps=128,
        rtol={name: 1e-8 if name == "dt0" else 1e-12 for name in INPUT_NAMES},
        nonzero=INPUT_NAMES,
    )
    assert stats["num_rejected_steps"] > 0


#
# Where the fusing is left out.
#


def _hessian_loss(solver):
    def loss(params, adjoint):
        y0, a = params
        sol = diffrax.diffeqsolve(
            diffrax.ODETerm(lambda t, y, a: -a * y + jnp.cos(t) * jnp.sin(y[::-1])),
            solver,
            0.0,
            1.0,
            0.1,
            y0,
            args=a,
            adjoint=adjoint,
        )
        return jnp.sum(sol.ys**3)

    return loss


_HESSIAN_PARAMS = (jnp.array([1.0, -0.6]), jnp.array(0.5))


class _OwnStepMidpoint(diffrax.Midpoint):
    """`Midpoint` with a `step` of its own: `Reversible` steps it by that `step`, not
    from its tableau."""

    def step(self, terms, t0, t1, y0, args, solver_state, made_jump):
        return super().step(terms, t0, t1, y0, args, solver_state, made_jump)


@pytest.mark.slow
def test_forward_differentiable_base_is_not_fused():
    """A base stepped by its own `step` is replayed with a custom VJP, reverse-mode
    only; with a forward-differentiable `scan_kind` it is left unfused, so that
    forward-over-reverse (`jax.hessian`) still works."""
    fused = ra.Reversible(_OwnStepMidpoint())
    assert fused.evaluation_reuse == "same_step"
    assert not fused.evaluation_transposable
    solver = ra.Reversible(_OwnStepMidpoint(scan_kind="bounded"))
    assert solver.evaluation_reuse is None
    assert ra.Reversible(diffrax.Euler()).evaluation_reuse is None
    # (The fused backward step of a tableau-stepped base is differentiated in
    # `tests/test_higher_order.py`.)
    loss = _hessian_loss(solver)
    want = jax.hessian(loss)(_HESSIAN_PARAMS, diffrax.RecursiveCheckpointAdjoint())
    got = jax.hessian(loss)(_HESSIAN_PARAMS, ra.ReversibleAdjoint())
    assert max_relative_error(got, want) < 1e-10


class _PreviousStepReversible(ra.Reversible):
    @property
    def evaluation_reuse(self):
        return "previous_step"


def test_refuses_previous_step_reuse_of_own_evaluation():
    with pytest.raises(ValueError, match=r"overrides `evaluation`.*same_step"):
        jax.grad(sinh_loss, argnums=2)(
            _PreviousStepReversible(diffrax.Midpoint()),
            ra.ReversibleAdjoint(),
            jnp.array([0.4, -0.3, 0.2]),
            jnp.array(0.8),
        )
