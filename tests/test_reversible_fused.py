"""`Reversible`'s fused backward step: `ReversibleAdjoint` makes each of the two base
steps of a step once (a linearisation) and uses it both to reconstruct the step and to
differentiate it. Base steps per backward step, gradients against
`RecursiveCheckpointAdjoint`, and where the fusing is left out."""

import diffrax
import jax
import jax.extend
import jax.numpy as jnp
import jax.random as jr
import pytest

import reversible_adjoint as ra

from .helpers import (
    INPUT_NAMES,
    check_gradient_parity,
    check_parity_constant_or_step_to,
    check_solve_parity,
    count_primitives,
    max_relative_error,
    problem_inputs,
    readout,
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


def _while_bodies(jaxpr):
    """The body of every `while` loop directly in `jaxpr` (not inside another loop)."""
    bodies = []
    for eqn in jaxpr.eqns:
        if eqn.primitive.name == "while":
            bodies.append(eqn.params["body_jaxpr"].jaxpr)
        else:
            for sub in jax.extend.core.jaxprs_in_params(eqn.params):
                bodies += _while_bodies(sub)
    return bodies


def _all_while_bodies(jaxpr):
    bodies = _while_bodies(jaxpr)
    return bodies + [b for body in bodies for b in _all_while_bodies(body)]


def backward_step_base_steps(solver):
    """`(made, pulled back)`: the base steps one backward step of `ReversibleAdjoint`
    makes with `solver` (stage loops that evaluate the vector field, `sinh`, without
    differentiating it, `cosh`), and those it pulls cotangents back through (stage
    loops that differentiate). The backward step is the loop that holds stage loops
    that differentiate; a stage loop holds no loop."""
    y0, args = jnp.array([0.4, -0.3, 0.2]), jnp.array(0.8)
    jaxpr = jax.make_jaxpr(jax.grad(sinh_loss, argnums=(2, 3)), static_argnums=(0, 1))(
        solver, ra.ReversibleAdjoint(), y0, args
    ).jaxpr

    def stage_loops(body):
        return [
            b
            for b in _while_bodies(body)
            if not _while_bodies(b) and count_primitives(b, "sinh") > 0
        ]

    backward = [
        body
        for body in _all_while_bodies(jaxpr)
        if any(count_primitives(b, "cosh") > 0 for b in stage_loops(body))
    ]
    assert len(backward) == 1
    loops = stage_loops(backward[0])
    made = sum(count_primitives(b, "cosh") == 0 for b in loops)
    return made, len(loops) - made


@pytest.mark.parametrize("base", [diffrax.Midpoint(), diffrax.Tsit5()])
def test_backward_step_makes_two_base_steps(base):
    """Fused: the two base steps that reconstruct the step are the ones its pullback
    goes through. Unfused: two to reconstruct, two more inside the step's `jax.vjp`."""
    assert ra.Reversible(base).evaluation_reuse == "same_step"
    assert backward_step_base_steps(ra.Reversible(base)) == (2, 2)
    assert backward_step_base_steps(UnfusedReversible(base)) == (4, 2)


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


@pytest.mark.slow
def test_sde_parity():
    """A Stratonovich SDE with `Reversible(Midpoint())` on a `VirtualBrownianTree`:
    the control over a step is given to both base steps, and its cotangent reaches
    the term's parameters. Gradients for `y0`, `args`, the term and
    `SaveAt(ts=...)`."""
    bm = diffrax.VirtualBrownianTree(0.0, 1.0, tol=1e-6, shape=(2,), key=jr.PRNGKey(1))

    def loss(inputs, adjoint):
        y0, args, scale, ts = inputs
        terms = diffrax.MultiTerm(
            diffrax.ODETerm(lambda t, y, a: -a[0] * y + jnp.sin(t) * y[::-1]),
            diffrax.ControlTerm(
                lambda t, y, a: jnp.diag(scale * a[1] * jnp.tanh(y)), bm
            ),
        )
        sol = diffrax.diffeqsolve(
            terms,
            ra.Reversible(diffrax.Midpoint()),
            0.0,
            1.0,
            0.05,
            y0,
            args=args,
            saveat=diffrax.SaveAt(ts=ts, t1=True),
            adjoint=adjoint,
        )
        return readout(sol.ys)

    inputs = (
        jnp.array([0.8, -0.5]),
        (jnp.array(0.6), jnp.array(0.4)),
        jnp.array(1.3),
        jnp.array([0.11, 0.5, 0.93]),
    )
    check_gradient_parity(loss, inputs, nonzero=range(4))


#
# Where the fusing is left out.
#


@pytest.mark.slow
def test_forward_differentiable_base_is_not_fused():
    """A base method whose stages run in a loop that forward mode can differentiate
    (`scan_kind="bounded"`) is left unfused, so that forward-over-reverse
    (`jax.hessian`) still works: the fused replay of a base step is reverse-mode only.
    """
    solver = ra.Reversible(diffrax.Midpoint(scan_kind="bounded"))
    assert solver.evaluation_reuse is None
    assert ra.Reversible(diffrax.Euler()).evaluation_reuse is None

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

    params = (jnp.array([1.0, -0.6]), jnp.array(0.5))
    want = jax.hessian(loss)(params, diffrax.RecursiveCheckpointAdjoint())
    got = jax.hessian(loss)(params, ra.ReversibleAdjoint())
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
