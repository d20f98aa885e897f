"""Compiled memory of the gradient is flat in the number of steps, apart from the
record of accepted step times (`max_steps` scalars)."""

import diffrax
import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr

import reversible_adjoint as ra


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
