"""The backward step: the generic `AdjointTerm` (any `AbstractReversibleSolver`) and
the fused one (one vector-field linearisation per step)."""

from typing import ClassVar

import diffrax
import jax
import jax.extend
import jax.numpy as jnp

import reversible_adjoint as ra

from .helpers import assert_nonzero, max_relative_error, readout


class UnfusedHeun(ra.ReversibleHeun):
    """Reversible Heun without the fusing declaration: served by the generic path
    (invert with `backward_step`, then differentiate `step`)."""

    evaluation_reuse: ClassVar = None


def _vector_field(t, y, args):
    # `sinh` marks vector-field evaluations in the jaxpr; its derivative is `cosh`.
    return jnp.sinh(args * y[::-1]) * jnp.cos(t) - 0.1 * y


def _loss(solver, adjoint, y0, args):
    sol = diffrax.diffeqsolve(
        diffrax.ODETerm(_vector_field), solver, 0.0, 2.0, 0.05, y0, args=args,
        saveat=diffrax.SaveAt(t1=True), adjoint=adjoint,
    )
    return readout(sol.ys)


def test_generic_adjoint_term_parity():
    y0, args = jnp.array([0.4, -0.3, 0.2]), jnp.array(0.8)
    want = jax.grad(_loss, argnums=(2, 3))(UnfusedHeun(), diffrax.RecursiveCheckpointAdjoint(), y0, args)
    got = jax.grad(_loss, argnums=(2, 3))(UnfusedHeun(), ra.ReversibleAdjoint(), y0, args)
    assert_nonzero(want)
    assert max_relative_error(got, want) < 1e-10


def _count(jaxpr, name):
    count = 0
    for eqn in jaxpr.eqns:
        count += eqn.primitive.name == name
        for sub in jax.extend.core.jaxprs_in_params(eqn.params):
            count += _count(sub, name)
    return count


def _backward_loop_evaluations(solver):
    """Number of vector-field evaluations (`sinh`) in the body of the while loop that
    also differentiates the vector field (`cosh`): the backward loop."""
    y0, args = jnp.array([0.4, -0.3, 0.2]), jnp.array(0.8)
    jaxpr = jax.make_jaxpr(jax.grad(_loss, argnums=(2, 3)), static_argnums=(0, 1))(
        solver, ra.ReversibleAdjoint(), y0, args
    ).jaxpr

    bodies = []

    def find(jaxpr):
        for eqn in jaxpr.eqns:
            if eqn.primitive.name == "while":
                bodies.append(eqn.params["body_jaxpr"].jaxpr)
            for sub in jax.extend.core.jaxprs_in_params(eqn.params):
                find(sub)

    find(jaxpr)
    backward = [b for b in bodies if _count(b, "cosh") > 0]
    assert len(backward) == 1
    return _count(backward[0], "sinh")


def test_fused_backward_step_evaluates_once():
    assert _backward_loop_evaluations(ra.ReversibleHeun()) == 1
    assert _backward_loop_evaluations(diffrax.ReversibleHeun()) == 1
    # The generic path: one evaluation to invert, one inside the step's vjp.
    assert _backward_loop_evaluations(UnfusedHeun()) == 2
