"""Compiled memory of the gradient is flat in the number of steps, apart from the
step grid: with a constant step (as here) the backward pass recomputes it in stretches
of about `sqrt(max_steps)` steps, and keeps a few scalars per stretch."""

import math

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


def _grid_bound(num_directions, small, large):
    """Bytes the grid may add from `small` to `large` steps: per stretch, its first
    two times and the controller's state (four scalars for `ConstantStepSize`) with
    their tangents, and the times of one stretch; float64. Allow twice that. (A record
    of every time would add `(1 + D)` scalars per step.)"""

    def grid(steps):
        length = math.isqrt(steps - 1) + 1
        per_stretch = (2 + 1 + 4) * (1 + num_directions)
        return 8 * (per_stretch * (steps // length + 2) + length * (1 + num_directions))

    return 2 * (grid(large) - grid(small))


def test_memory_flat_in_steps():
    small, state_bytes = _temp_bytes(ra.ReversibleAdjoint(), 1_000)
    large, _ = _temp_bytes(ra.ReversibleAdjoint(), 20_000)
    assert large - small <= _grid_bound(0, 1_000, 20_000), (small, large)
    assert _grid_bound(0, 1_000, 20_000) < 8 * 19_000 / 2

    # For contrast (and to show this test can fail): storing every step grows by at
    # least one state per step.
    store_all = diffrax.RecursiveCheckpointAdjoint(checkpoints=10_000)
    store_all_large, _ = _temp_bytes(store_all, 10_000)
    assert store_all_large > state_bytes * 10_000
    small, _ = _temp_bytes(ra.ReversibleAdjoint(), 10_000)
    assert small * 20 < store_all_large


def test_memory_flat_in_steps_with_time_gradients():
    """Differentiating with respect to `t1` adds tangents to the grid: here `D = 2`
    directions (`ConstantStepSize` keeps its own copy of `t1`, and the loop clips to
    `t1`)."""
    small, _ = _temp_bytes(ra.ReversibleAdjoint(), 1_000, differentiate_times=True)
    large, _ = _temp_bytes(ra.ReversibleAdjoint(), 20_000, differentiate_times=True)
    assert large - small <= _grid_bound(2, 1_000, 20_000), (small, large)
    assert _grid_bound(2, 1_000, 20_000) < 3 * 8 * 19_000 / 2
