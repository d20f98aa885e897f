"""Compiled memory of the gradient: flat in the number of steps, apart from the
record of accepted step times (`max_steps` scalars); nothing for what is not
differentiated."""

import diffrax
import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
import pytest

import reversible_adjoint as ra

from .helpers import assert_nonzero, max_relative_error


def _temp_bytes(adjoint, num_steps, differentiate_times=False):
    mlp = eqx.nn.MLP(16, 16, 32, 2, activation=jnp.tanh, key=jr.PRNGKey(0))
    params, static = eqx.partition(mlp, eqx.is_array)
    term = diffrax.ODETerm(lambda t, y, m: jax.vmap(m)(y))
    y0 = jnp.ones((8, 16))

    def loss(params, y0, t1):
        sol = diffrax.diffeqsolve(
            term,
            ra.ReversibleHeun(),
            0.0,
            t1,
            1.0 / num_steps,
            y0,
            args=eqx.combine(params, static),
            saveat=diffrax.SaveAt(ts=jnp.linspace(0.1, 0.9, 5), t1=True),
            adjoint=adjoint,
            max_steps=num_steps,
        )
        return jnp.sum(sol.ys**2)

    argnums = (0, 1, 2) if differentiate_times else (0, 1)
    compiled = jax.jit(jax.grad(loss, argnums=argnums)).lower(params, y0, 1.0).compile()
    return compiled.memory_analysis().temp_size_in_bytes, y0.size * y0.dtype.itemsize


def test_memory_flat_in_steps():
    small, state_bytes = _temp_bytes(ra.ReversibleAdjoint(), 100)
    large, _ = _temp_bytes(ra.ReversibleAdjoint(), 10_000)
    # The step-time record: one float64 per step. Allow two.
    assert large - small <= 2 * 8 * (10_000 - 100), (small, large)

    # For contrast (and to show this test can fail): storing every step grows by at
    # least one state per step.
    store_all = diffrax.RecursiveCheckpointAdjoint(checkpoints=10_000)
    store_all_large, _ = _temp_bytes(store_all, 10_000)
    assert store_all_large > state_bytes * 10_000
    assert large * 20 < store_all_large


def test_memory_flat_in_steps_with_time_gradients():
    """Differentiating with respect to `t1` adds tangents to the record: here `D = 2`
    directions (`ConstantStepSize` keeps its own copy of `t1`, and the loop clips to
    `t1`), so `1 + D` scalars per step. Allow twice that."""
    small, _ = _temp_bytes(ra.ReversibleAdjoint(), 100, differentiate_times=True)
    large, _ = _temp_bytes(ra.ReversibleAdjoint(), 10_000, differentiate_times=True)
    assert large - small <= 2 * 3 * 8 * (10_000 - 100), (small, large)


def _constant_matrix_problem(solver, saveat):
    """A solve whose `args` hold a large matrix `W` and a scalar `s`, and whose term
    holds a parameter `c`; the loss is differentiated with respect to `y0` and `s`
    only (`W` and `c` are inputs of the jitted function, but not differentiated)."""
    size = 512
    W = jr.normal(jr.PRNGKey(0), (size, size)) / size**0.5

    class Field(eqx.Module):
        c: jax.Array

        def __call__(self, t, y, args):
            return self.c * jnp.tanh(args["W"] @ y) * args["s"] * jnp.cos(t)

    def loss(y0, s, W, c, adjoint):
        sol = diffrax.diffeqsolve(
            diffrax.ODETerm(Field(c)),
            solver,
            0.0,
            1.0,
            0.05,
            y0,
            args={"W": W, "s": s},
            saveat=saveat,
            adjoint=adjoint,
            max_steps=64,
        )
        return jnp.sum(sol.ys**2)

    inputs = (jnp.linspace(-1.0, 1.0, size), jnp.array(0.7), W, jnp.array(1.3))
    return loss, inputs, W.size * W.dtype.itemsize


@pytest.mark.parametrize(
    "solver, saveat",
    [
        (ra.ReversibleHeun(), diffrax.SaveAt(t1=True)),
        pytest.param(
            ra.ReversibleHeun(),
            diffrax.SaveAt(ts=jnp.array([0.33, 1.0])),
            marks=pytest.mark.slow,
        ),
        pytest.param(
            ra.AsynchronousLeapfrog(), diffrax.SaveAt(t1=True), marks=pytest.mark.slow
        ),
        (ra.Reversible(diffrax.Midpoint()), diffrax.SaveAt(t1=True)),
    ],
    ids=["settled", "carried", "alf", "wrapper"],
)
def test_arrays_not_differentiated_cost_nothing(solver, saveat):
    """Arrays in `args` and in the term that the caller does not differentiate get no
    cotangent in the backward pass: the gradient needs no more memory than the
    forward solve (a cotangent of `W` would add its size), and matches
    `RecursiveCheckpointAdjoint`'s."""
    loss, inputs, matrix_bytes = _constant_matrix_problem(solver, saveat)

    def grad(adjoint):
        return jax.jit(jax.grad(lambda y0, s, W, c: loss(y0, s, W, c, adjoint), (0, 1)))

    ours = grad(ra.ReversibleAdjoint())
    forward = jax.jit(lambda *x: loss(*x, ra.ReversibleAdjoint()))
    grad_bytes = ours.lower(*inputs).compile().memory_analysis().temp_size_in_bytes
    forward_bytes = (
        forward.lower(*inputs).compile().memory_analysis().temp_size_in_bytes
    )
    assert grad_bytes < forward_bytes + matrix_bytes / 2, (grad_bytes, forward_bytes)

    want = grad(diffrax.RecursiveCheckpointAdjoint())(*inputs)
    got = ours(*inputs)
    assert_nonzero(want)
    assert max_relative_error(got, want) < 1e-12
