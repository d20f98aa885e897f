"""Second derivatives: forward-over-reverse (`jax.hessian`, Hessian-vector products)
differentiates the backward pass in forward mode; reverse-over-reverse is refused with
a clear message, as it fails for `RecursiveCheckpointAdjoint` too."""

import diffrax
import jax
import jax.numpy as jnp
import pytest

import reversible_adjoint as ra

from .helpers import max_relative_error


def _field(t, y, args):
    return -args * y + jnp.cos(t) * jnp.sin(y[::-1])


def _loss(params, adjoint, solver, saveat):
    y0, args = params
    sol = diffrax.diffeqsolve(
        diffrax.ODETerm(_field),
        solver,
        0.0,
        1.0,
        0.05,
        y0,
        args=args,
        saveat=saveat,
        adjoint=adjoint,
    )
    return jnp.sum(sol.ys**3)


PARAMS = (jnp.array([1.0, -0.6]), jnp.array(0.5))


@pytest.mark.parametrize(
    "solver, saveat",
    [
        (ra.ReversibleHeun(), diffrax.SaveAt(t1=True)),
        (ra.AsynchronousLeapfrog(), diffrax.SaveAt(steps=True)),
        (ra.LeapfrogMidpoint(), diffrax.SaveAt(t1=True)),
        # Fused: each base step is replayed with a custom JVP.
        (ra.Reversible(diffrax.Midpoint()), diffrax.SaveAt(t1=True)),
    ],
    ids=["RH", "ALF", "LM", "Reversible(Midpoint)"],
)
def test_hessian_matches_rca(solver, saveat):
    want = jax.hessian(_loss)(
        PARAMS, diffrax.RecursiveCheckpointAdjoint(), solver, saveat
    )
    got = jax.hessian(_loss)(PARAMS, ra.ReversibleAdjoint(), solver, saveat)
    assert max_relative_error(got, want) < 1e-10


@pytest.mark.slow
def test_hessian_with_checkpoints():
    solver, saveat = ra.ReversibleHeun(), diffrax.SaveAt(steps=3, t1=True)
    rca = diffrax.RecursiveCheckpointAdjoint()
    want = jax.hessian(_loss)(PARAMS, rca, solver, saveat)
    got = jax.hessian(_loss)(
        PARAMS, ra.ReversibleAdjoint(checkpoint_every=4), solver, saveat
    )
    assert max_relative_error(got, want) < 1e-10


@pytest.mark.parametrize(
    "solver",
    [
        ra.ReversibleHeun(),
        ra.AsynchronousLeapfrog(),
        pytest.param(ra.Reversible(diffrax.Bosh3()), marks=pytest.mark.slow),
    ],
    ids=["RH", "ALF", "Reversible(Bosh3)"],
)
def test_hessian_vector_product_with_save_times(solver):
    """`SaveAt(ts=...)`, where RCA's Hessian fails: the Hessian-vector product
    against central differences of RCA's gradient. (With `Reversible(Bosh3())`, the
    save times inside steps go through the base method's dense output.)"""
    saveat = diffrax.SaveAt(ts=jnp.array([0.3, 0.71, 1.0]))
    vector = (jnp.array([0.3, 0.8]), jnp.array(-0.4))

    def grad(params, adjoint):
        return jax.grad(_loss)(params, adjoint, solver, saveat)

    _, got = jax.jvp(lambda p: grad(p, ra.ReversibleAdjoint()), (PARAMS,), (vector,))
    eps = 1e-5
    shifted = [
        grad(
            jax.tree_util.tree_map(lambda p, v: p + s * eps * v, PARAMS, vector),
            diffrax.RecursiveCheckpointAdjoint(),
        )
        for s in (1, -1)
    ]
    want = jax.tree_util.tree_map(lambda a, b: (a - b) / (2 * eps), *shifted)
    assert max_relative_error(got, want) < 1e-7


@pytest.mark.parametrize(
    "solver",
    [
        ra.ReversibleHeun(),
        pytest.param(ra.Reversible(diffrax.Midpoint()), marks=pytest.mark.slow),
    ],
    ids=["RH", "Reversible(Midpoint)"],
)
def test_mixed_second_derivative(solver):
    """Forward mode over a gradient with respect to `y0` only, differentiating `args`:
    the backward pass holds `args` constant (the inner gradient does not perturb it),
    yet forward mode must still see how it depends on them."""
    saveat = diffrax.SaveAt(steps=True)
    y0, args = PARAMS

    def mixed(adjoint):
        grad_y0 = jax.grad(lambda y, a: _loss((y, a), adjoint, solver, saveat))
        return jax.jacfwd(lambda a: grad_y0(y0, a))(args)

    want = mixed(diffrax.RecursiveCheckpointAdjoint())
    assert jnp.max(jnp.abs(want)) > 0
    assert max_relative_error(mixed(ra.ReversibleAdjoint()), want) < 1e-10


def test_grad_of_grad_is_refused():
    def grad_norm(y0):
        g = jax.grad(_loss)(
            (y0, PARAMS[1]),
            ra.ReversibleAdjoint(),
            ra.ReversibleHeun(),
            diffrax.SaveAt(t1=True),
        )
        return jnp.sum(g[0] ** 2)

    with pytest.raises(
        Exception, match=r"reverse mode.*forward-over-reverse.*jax\.hessian"
    ):
        jax.grad(grad_norm)(PARAMS[0])
