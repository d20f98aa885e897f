"""The backward step: the generic `AdjointTerm` (any `AbstractReversibleSolver`) and
the fused one (one vector-field linearisation per step)."""

from typing import ClassVar

import diffrax
import jax.numpy as jnp

import reversible_adjoint as ra

from .helpers import backward_loop_evaluations, check_gradient_parity, sinh_loss


class UnfusedHeun(ra.ReversibleHeun):
    """Reversible Heun without the fusing declaration: served by the generic path
    (invert with `backward_step`, then differentiate `step`)."""

    evaluation_reuse: ClassVar = None


def test_generic_adjoint_term_parity():
    check_gradient_parity(
        lambda inputs, adjoint: sinh_loss(UnfusedHeun(), adjoint, *inputs),
        (jnp.array([0.4, -0.3, 0.2]), jnp.array(0.8)),
        rtol=1e-10,
        nonzero=[0, 1],
    )


def test_fused_backward_step_evaluates_once():
    assert backward_loop_evaluations(ra.ReversibleHeun()) == 1
    assert backward_loop_evaluations(diffrax.ReversibleHeun()) == 1
    # The generic path: one evaluation to invert, one inside the step's vjp.
    assert backward_loop_evaluations(UnfusedHeun()) == 2
