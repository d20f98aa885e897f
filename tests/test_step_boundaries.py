"""Save times that fall exactly on a step boundary.

The derivative of a value saved at `ts[i]` with respect to `ts[i]` is the slope of the
dense output of the step the loop saved it in: on a boundary `t_k`, the earlier step if
`ts[i] <= t_k`, else the later one. That can be decided by the last bit of `t_k`:
`dt0 = 0.01` in float32 accumulates to `t_20 = 0.19999999` or `0.2` depending on how
XLA compiles the step size controller's arithmetic (it folds `t0` and `t1` when they
are constants, differently in different programs), and the two one-sided slopes differ
by 11% here. diffrax's own adjoints are subject to this: `RecursiveCheckpointAdjoint`
gives one slope under `jax.jit` and the other without.

`ReversibleAdjoint` computes the step times behind an optimisation barrier, so they do
not depend on the program around the solve: the same one-sided derivative under
`jax.jit` or not, and with or without checkpoints (whose backward pass recomputes the
times).
"""

import diffrax
import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import reversible_adjoint as ra

f32 = jnp.float32


def _loss(solver, adjoint, ts, p):
    sol = diffrax.diffeqsolve(
        diffrax.ODETerm(lambda t, y, p: -p * y + jnp.sin(3 * t)),
        solver,
        t0=f32(0.0),
        t1=f32(1.0),
        dt0=f32(0.01),
        y0=jnp.array([1.0, 2.0], dtype=f32),
        args=p,
        saveat=diffrax.SaveAt(ts=ts),
        adjoint=adjoint,
        max_steps=256,
    )
    return jnp.sum(sol.ys**2)


# The step times are the adjoint's, whatever the solver: two solvers whose dense
# output differs (reversible Heun's linear, asynchronous leapfrog's Hermite).
@pytest.mark.parametrize(
    "solver",
    [ra.ReversibleHeun(), ra.AsynchronousLeapfrog()],
    ids=["reversible_heun", "alf"],
)
def test_boundary_save_time_derivative_is_deterministic(solver):
    ts = jnp.array([0.2, 0.5, 0.7], dtype=f32)
    p = f32(0.5)

    def grads(adjoint):
        loss = lambda ts, p: _loss(solver, adjoint, ts, p)
        return jax.grad(loss, argnums=(0, 1))(ts, p)

    plain = grads(ra.ReversibleAdjoint())
    jitted = eqx.filter_jit(grads)(ra.ReversibleAdjoint())
    replayed = eqx.filter_jit(grads)(ra.ReversibleAdjoint(checkpoint_every=7))
    for a, b, c in zip(plain, jitted, replayed, strict=True):
        np.testing.assert_array_equal(a, b)
        np.testing.assert_allclose(c, a, rtol=1e-5, atol=0)
    # The derivative is that of a step's dense output: finite, and of the size of the
    # solution's slope there (not, e.g., a sum of both sides).
    assert np.all(np.isfinite(plain[0])) and np.all(np.abs(plain[0]) < 5)
