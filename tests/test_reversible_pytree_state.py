"""`Reversible` on pytree states (issue 26): the program it compiles to stays in line
with the plain base method's, and its gradients on tuple and dict states match
`RecursiveCheckpointAdjoint`'s.

Stepped with its stages unrolled, `Reversible(Tsit5())` on a tuple of two 8×8 fields
(`jnp.roll` Laplacian) compiled its `ReversibleAdjoint` gradient to 27 times the plain
`Tsit5` gradient's HLO, and ran thousands of times slower: XLA fused the chain of
stages into every output separately. The sizes compared here are counts of program
instructions, not timings."""

import diffrax
import jax
import jax.extend
import jax.numpy as jnp
import pytest

import reversible_adjoint as ra

from .helpers import assert_nonzero, max_relative_error

BASES = [diffrax.Midpoint(), diffrax.Bosh3(), diffrax.Tsit5(), diffrax.Dopri5()]


def _laplacian(u):
    return (
        jnp.roll(u, 1, 0) + jnp.roll(u, -1, 0) + jnp.roll(u, 1, 1) + jnp.roll(u, -1, 1)
    ) - 4 * u


def ring(t, y, a):
    """Reaction–diffusion of the fields of the tuple `y` in a ring, on a periodic
    grid."""
    n = len(y)
    return tuple(
        a[0] * _laplacian(y[i])
        + a[1] * y[i] * (1 - y[i] ** 2)
        - a[2] * y[(i + 1) % n]
        + a[3] * jnp.cos(t) * y[i - 1]
        for i in range(n)
    )


def coupled(t, y, a):
    """Elementwise coupling of the leaves of the dict `y` in a ring."""
    n = len(y)
    x = [y[f"x{i}"] for i in range(n)]
    return {
        f"x{i}": a[0] * x[(i + 1) % n]
        - a[1] * x[i] ** 3
        + a[2] * jnp.sin(t + x[i - 1])
        - a[3] * x[i]
        for i in range(n)
    }


def leafwise(t, y, a):
    """The same vector field on every leaf, independently."""
    return jax.tree_util.tree_map(lambda x: a[0] * jnp.sin(x) - a[1] * x, y)


def tuple_state(n, size=8, dtype=jnp.float64):
    grid = jnp.arange(size * size, dtype=dtype).reshape(size, size)
    return tuple(0.8 * jnp.cos(0.7 * (i + 1) * grid + i) for i in range(n))


def dict_state(n, dtype=jnp.float64):
    entries = jnp.arange(6, dtype=dtype)
    return {f"x{i}": 0.8 * jnp.sin(0.3 * (i + 1) * entries + i) for i in range(n)}


ARGS = jnp.array([0.1, 0.5, 0.3, 0.2])


def loss(vf, solver, adjoint, args, y0, num_steps=8):
    sol = diffrax.diffeqsolve(
        diffrax.ODETerm(vf),
        solver,
        0.0,
        1.0,
        1.0 / num_steps,
        y0,
        args=args,
        adjoint=adjoint,
        max_steps=num_steps,
    )
    leaves = jax.tree_util.tree_leaves(sol.ys)
    return sum(
        jnp.sum(jnp.sin(1.0 + jnp.arange(x.size)) * x.ravel() ** 2) for x in leaves
    )


def jaxpr_equations(jaxpr):
    """Equations of `jaxpr`, those of its sub-jaxprs included."""
    return sum(
        1 + sum(jaxpr_equations(s) for s in jax.extend.core.jaxprs_in_params(e.params))
        for e in jaxpr.eqns
    )


def hlo_instructions(fn, *args):
    """Instructions of the HLO that `jax.jit(fn)` compiles to for `args`."""
    text = jax.jit(fn).lower(*args).compile().as_text()
    return sum(" = " in line for line in text.splitlines())


#
# Program size.
#


@pytest.mark.parametrize(
    "base, vf, y0",
    [
        (diffrax.Tsit5(), ring, tuple_state(2)),
        (diffrax.Dopri5(), coupled, dict_state(8)),
    ],
    ids=["Tsit5-tuple2", "Dopri5-dict8"],
)
def test_compiled_gradient_in_line_with_base(base, vf, y0):
    """The compiled `ReversibleAdjoint` gradient of `Reversible(base)` is at most
    twice the size of the plain base's with `RecursiveCheckpointAdjoint` (it is about
    the same size; with unrolled stages it was 82 times larger on the dict state)."""
    ours = hlo_instructions(
        jax.grad(
            lambda a, y: loss(vf, ra.Reversible(base), ra.ReversibleAdjoint(), a, y)
        ),
        ARGS,
        y0,
    )
    plain = hlo_instructions(
        jax.grad(
            lambda a, y: loss(vf, base, diffrax.RecursiveCheckpointAdjoint(), a, y)
        ),
        ARGS,
        y0,
    )
    assert ours <= 2 * plain, (ours, plain)


@pytest.mark.parametrize("base", [diffrax.Midpoint(), diffrax.Tsit5()])
def test_program_linear_in_leaves(base):
    """The jaxprs of one step, and of the `ReversibleAdjoint` gradient, with a state
    of 8 independent leaves have at most 8 times the equations of those with one leaf:
    nothing in the wrapper combines every leaf with every other or with every stage
    separately."""
    solver = ra.Reversible(base)
    term = diffrax.ODETerm(leafwise)

    def step_equations(y0):
        state = solver.init(term, 0.0, 0.1, y0, ARGS)
        step = lambda y, s: solver.step(term, 0.0, 0.1, y, ARGS, s, False)
        return jaxpr_equations(jax.make_jaxpr(step)(y0, state).jaxpr)

    def gradient_equations(y0):
        grad = jax.grad(
            lambda a, y: loss(leafwise, solver, ra.ReversibleAdjoint(), a, y)
        )
        return jaxpr_equations(jax.make_jaxpr(grad)(ARGS, y0).jaxpr)

    one, eight = dict_state(1), dict_state(8)
    assert step_equations(eight) <= 8 * step_equations(one)
    assert gradient_equations(eight) <= 8 * gradient_equations(one)


#
# Gradients on pytree states against `RecursiveCheckpointAdjoint`.
#


@pytest.mark.parametrize("base", BASES, ids=lambda b: type(b).__name__)
@pytest.mark.parametrize(
    "vf, y0",
    [(ring, tuple_state(2, size=4)), (coupled, dict_state(8))],
    ids=["tuple2", "dict8"],
)
def test_gradient_parity(base, vf, y0):
    """`ReversibleAdjoint`'s gradient with respect to `args` and `y0`, and forward
    mode's (`ForwardMode`) Jacobian of the loss, against
    `RecursiveCheckpointAdjoint`'s, same solver and steps, float64."""
    solver = ra.Reversible(base)
    want = jax.grad(
        lambda a, y: loss(vf, solver, diffrax.RecursiveCheckpointAdjoint(), a, y),
        argnums=(0, 1),
    )(ARGS, y0)
    assert_nonzero(want)
    got = jax.grad(
        lambda a, y: loss(vf, solver, ra.ReversibleAdjoint(), a, y), argnums=(0, 1)
    )(ARGS, y0)
    assert max_relative_error(got, want) < 1e-10
    forward = jax.jacfwd(lambda a: loss(vf, solver, diffrax.ForwardMode(), a, y0))(ARGS)
    assert max_relative_error(forward, want[0]) < 1e-10
