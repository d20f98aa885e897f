"""`ReversibleAdjoint` under `jax.vmap`, `eqx.filter_grad` with a neural vector field,
and `max_steps` overflow, against `RecursiveCheckpointAdjoint`."""

import diffrax
import jax
import jax.numpy as jnp
import jax.random as jr
import pytest

import reversible_adjoint as ra

from .helpers import (
    RTOL,
    assert_nonzero,
    check_gradient_parity,
    make_problem,
    max_relative_error,
    mlp_term,
    readout,
)


def test_vmap_over_y0_and_ts():
    term, y0, args = make_problem()
    y0s = jax.tree_util.tree_map(lambda x: x * jnp.linspace(0.5, 1.5, 3)[:, None], y0)
    ts = jnp.stack([jnp.linspace(0.1, 1.9, 4) + 0.03 * i for i in range(3)])

    def grad(adjoint):
        def loss(y0, ts, args):
            sol = diffrax.diffeqsolve(
                term,
                ra.ReversibleHeun(),
                0.0,
                2.0,
                0.05,
                y0,
                args=args,
                saveat=diffrax.SaveAt(ts=ts),
                adjoint=adjoint,
                stepsize_controller=diffrax.PIDController(rtol=1e-4, atol=1e-6),
            )
            return readout(sol.ys)

        return jax.jit(
            jax.vmap(jax.grad(loss, argnums=(0, 1, 2)), in_axes=(0, 0, None))
        )(y0s, ts, args)

    want = grad(diffrax.RecursiveCheckpointAdjoint())
    got = grad(ra.ReversibleAdjoint())
    assert_nonzero(want)
    assert max_relative_error(got, want) < RTOL


def test_grad_of_vmapped_loss():
    """Batch inside the loss (as in training), gradient outside."""
    term, y0, args = make_problem()
    y0s = jax.tree_util.tree_map(lambda x: x * jnp.linspace(0.5, 1.5, 4)[:, None], y0)

    def loss(inputs, adjoint):
        term, args = inputs

        def solve(y0):
            sol = diffrax.diffeqsolve(
                term,
                ra.ReversibleHeun(),
                0.0,
                1.5,
                0.02,
                y0,
                args=args,
                saveat=diffrax.SaveAt(t1=True),
                adjoint=adjoint,
            )
            return readout(sol.ys)

        return jnp.sum(jax.vmap(solve)(y0s))

    check_gradient_parity(loss, (term, args), nonzero=[0, 1])


def test_mlp_vector_field():
    """An `eqx.nn.MLP` inside `ODETerm`, time-dependent, differentiated with
    `eqx.filter_grad` together with `y0`, `args` and the save times."""
    term = mlp_term(jr.PRNGKey(0))
    y0 = jnp.array([0.5, -0.3, 0.8])
    ts = jnp.linspace(0.2, 2.8, 6)

    def loss(inputs, adjoint):
        term, y0, args, ts = inputs
        sol = diffrax.diffeqsolve(
            term,
            diffrax.ReversibleHeun(),
            0.0,
            3.0,
            0.05,
            y0,
            args=args,
            saveat=diffrax.SaveAt(ts=ts),
            adjoint=adjoint,
            stepsize_controller=diffrax.PIDController(rtol=1e-5, atol=1e-7),
        )
        return readout(sol.ys)

    inputs = (term, y0, jnp.array(1.3), ts)
    check_gradient_parity(loss, inputs, nonzero=range(4))


def test_max_steps_overflow():
    """`throw=True` raises as diffrax does; with `throw=False` the truncated solve is
    differentiated like `RecursiveCheckpointAdjoint` does."""
    term, y0, args = make_problem()

    def solve(adjoint, throw, y0=y0):
        return diffrax.diffeqsolve(
            term,
            ra.ReversibleHeun(),
            0.0,
            2.0,
            0.05,
            y0,
            args=args,
            adjoint=adjoint,
            max_steps=10,
            throw=throw,
        )

    with pytest.raises(Exception, match="maximum number of solver steps"):
        solve(ra.ReversibleAdjoint(), True)
    sol = solve(ra.ReversibleAdjoint(), False)
    assert sol.result == diffrax.RESULTS.max_steps_reached

    check_gradient_parity(
        lambda inputs, adjoint: readout(solve(adjoint, False, *inputs).ys),
        (y0,),
        nonzero=[0],
    )


def test_forward_values_unchanged():
    """The forward pass is diffrax's own: identical outputs with or without the
    adjoint, for both reversible Heun instances."""
    term, y0, args = make_problem()
    ts = jnp.linspace(0.1, 1.9, 7)
    outs = []
    for solver in (ra.ReversibleHeun(), diffrax.ReversibleHeun()):
        for adjoint in (ra.ReversibleAdjoint(), diffrax.RecursiveCheckpointAdjoint()):
            sol = diffrax.diffeqsolve(
                term,
                solver,
                0.0,
                2.0,
                0.05,
                y0,
                args=args,
                saveat=diffrax.SaveAt(ts=ts, t1=True),
                adjoint=adjoint,
            )
            outs.append(sol.ys)
    for out in outs[1:]:
        assert max_relative_error(out, outs[0]) == 0


def test_closed_over_parameters():
    """Parameters closed over by the vector field and by `SaveAt(fn=...)` (rather than
    passed in `args` or held in an `eqx.Module`) are differentiated too."""
    y0 = jnp.array([1.0, -0.5])

    def loss(inputs, adjoint):
        a, w = inputs
        term = diffrax.ODETerm(lambda t, y, args: -a * y + jnp.sin(t) * y[::-1])
        saveat = diffrax.SaveAt(
            ts=jnp.linspace(0.1, 1.0, 4), fn=lambda t, y, args: w * y
        )
        sol = diffrax.diffeqsolve(
            term,
            ra.ReversibleHeun(),
            0.0,
            1.0,
            0.05,
            y0,
            saveat=saveat,
            adjoint=adjoint,
        )
        return readout(sol.ys)

    inputs = (jnp.array(0.5), jnp.array([2.0, -1.0]))
    check_gradient_parity(loss, inputs, nonzero=[0, 1])
