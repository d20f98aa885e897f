"""`Reversible` with every adjoint: forward mode (`diffrax.ForwardMode`, `jax.jvp`),
`diffrax.DirectAdjoint` in both modes, `ReversibleAdjoint`, and `BacksolveAdjoint`
(saving at `t1`), against `RecursiveCheckpointAdjoint`.

diffrax's `ForwardMode` and `DirectAdjoint` switch a Runge–Kutta method's stage loop
(`scan_kind`) to a forward-differentiable kind; the wrapper passes that switch on to its
base method, so these work whatever the base."""

import functools

import diffrax
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.flatten_util import ravel_pytree

import reversible_adjoint as ra

# First-same-as-last (Tsit5), not (Midpoint), a single stage (Euler), and a base
# method's own `scan_kind` (kept).
SOLVERS = {
    "Tsit5": lambda: ra.Reversible(diffrax.Tsit5()),
    "Midpoint": lambda: ra.Reversible(diffrax.Midpoint()),
    "Euler": lambda: ra.Reversible(diffrax.Euler()),
    "Tsit5-bounded": lambda: ra.Reversible(diffrax.Tsit5(scan_kind="bounded")),
    "Midpoint-bounded": lambda: ra.Reversible(diffrax.Midpoint(scan_kind="bounded")),
}
NUM_STEPS = 12


def vector_field(t, y, args):
    # Pytree state, time-dependent, parameters in `args`.
    return {
        "q": args["a"] * y["p"] * jnp.cos(t),
        "p": -(args["w"] ** 2) * jnp.sin(y["q"]) + args["c"] * t * y["p"][::-1],
    }


ARGS = {"a": jnp.array(1.2), "w": jnp.array([0.9, 1.4]), "c": jnp.array(0.3)}
Y0 = {"q": jnp.array([0.4, -0.7]), "p": jnp.array([0.5, 0.2])}


def solve(solver, adjoint, args, y0):
    sol = diffrax.diffeqsolve(
        diffrax.ODETerm(vector_field),
        solver,
        0.0,
        1.5,
        1.5 / NUM_STEPS,
        y0,
        args=args,
        saveat=diffrax.SaveAt(ts=jnp.array([0.5, 1.5])),
        adjoint=adjoint,
        max_steps=NUM_STEPS,
    )
    return sol.ys


def jacobian_and_solution(solver, adjoint, jac):
    """The Jacobian of the saved solution with respect to `(args, y0)`, and the
    solution, in one compiled program."""

    def fn(args, y0):
        ys = solve(solver, adjoint, args, y0)
        return ys, ys

    return jax.jit(jac(fn, (0, 1), has_aux=True))(ARGS, Y0)


@functools.cache
def reference(name):
    """`RecursiveCheckpointAdjoint`'s Jacobian (reverse mode) and solution."""
    solver = SOLVERS[name]()
    return jacobian_and_solution(
        solver, diffrax.RecursiveCheckpointAdjoint(), jax.jacrev
    )


def assert_tree_close(got, want, rtol):
    assert jax.tree.structure(got) == jax.tree.structure(want)
    leaves_got, leaves_want = jax.tree.leaves(got), jax.tree.leaves(want)
    scale = max(float(jnp.max(jnp.abs(w))) for w in leaves_want)
    assert scale > 0
    for g, w in zip(leaves_got, leaves_want):
        np.testing.assert_allclose(g, w, rtol=0, atol=rtol * scale)


ADJOINTS = {
    "ForwardMode": (diffrax.ForwardMode, jax.jacfwd),
    "DirectAdjoint-fwd": (diffrax.DirectAdjoint, jax.jacfwd),
    "DirectAdjoint-rev": (diffrax.DirectAdjoint, jax.jacrev),
    "ReversibleAdjoint": (ra.ReversibleAdjoint, jax.jacrev),
}
# `DirectAdjoint` makes the same switch (to `scan_kind="bounded"`) for forward and
# reverse mode. `ReversibleAdjoint` on bases left at the default `scan_kind` is in
# test_reversible_wrapper.py; here, in the slow suite, a base's own
# `scan_kind="bounded"`, which a tableau-stepped base ignores (the backward step is
# fused either way). (The unfused backward step, for a base stepped by its own
# `step`, is in test_reversible_fused.py.)
CASES = [
    ("Midpoint", "ForwardMode"),
    ("Euler", "ForwardMode"),
    pytest.param("Tsit5", "ForwardMode", marks=pytest.mark.slow),
    pytest.param("Tsit5-bounded", "ForwardMode", marks=pytest.mark.slow),
    ("Tsit5", "DirectAdjoint-fwd"),
    ("Euler", "DirectAdjoint-fwd"),
    ("Midpoint", "DirectAdjoint-rev"),
    pytest.param("Midpoint-bounded", "ReversibleAdjoint", marks=pytest.mark.slow),
    pytest.param("Tsit5-bounded", "ReversibleAdjoint", marks=pytest.mark.slow),
]


@pytest.mark.parametrize("name, adjoint", CASES)
def test_jacobian_matches_recursive_checkpoint(name, adjoint):
    adjoint_cls, jac = ADJOINTS[adjoint]
    got_jac, got_ys = jacobian_and_solution(SOLVERS[name](), adjoint_cls(), jac)
    want_jac, want_ys = reference(name)
    # The same arithmetic as the reference, up to the order of sums in the
    # derivatives. (`ReversibleAdjoint` reconstructs the forward pass: its round-off
    # is amplified by coupling^(-N), here 1.01.)
    assert_tree_close(got_jac, want_jac, rtol=1e-12)
    if adjoint == "ForwardMode":
        # `ForwardMode` steps the base method with `scan_kind="lax"`: the same loop
        # as the default's, undifferentiated, so the same output to the bit.
        for g, w in zip(jax.tree.leaves(got_ys), jax.tree.leaves(want_ys)):
            assert np.array_equal(g, w)
    else:
        assert_tree_close(got_ys, want_ys, rtol=1e-14)


def test_jvp_with_forward_mode():
    # `jax.jvp` through a `ForwardMode` solve, against the reverse-mode Jacobian of
    # `RecursiveCheckpointAdjoint` applied to the tangent.
    inputs = (ARGS, Y0)
    flat_inputs, unravel = ravel_pytree(inputs)
    tangent = jnp.linspace(-1.0, 1.0, flat_inputs.size)

    def flat_solve(adjoint, x):
        return ravel_pytree(solve(SOLVERS["Tsit5"](), adjoint, *unravel(x)))[0]

    ys_flat, ys_dot = jax.jit(
        lambda x, v: jax.jvp(
            functools.partial(flat_solve, diffrax.ForwardMode()), (x,), (v,)
        )
    )(flat_inputs, tangent)
    want_jac, want_ys = reference("Tsit5")
    # The Jacobian as a matrix, in the order of `ravel_pytree`: a block per (output
    # leaf, input leaf).
    matrix = jnp.concatenate(
        [
            jnp.concatenate(
                [x.reshape(y.size, -1) for x in jax.tree.leaves(blocks)], axis=1
            )
            for y, blocks in zip(
                jax.tree.leaves(want_ys),
                jax.tree.leaves(want_jac, is_leaf=lambda x: isinstance(x, tuple)),
                strict=True,
            )
        ]
    )
    want_dot = matrix @ tangent
    assert np.array_equal(ys_flat, ravel_pytree(want_ys)[0])
    np.testing.assert_allclose(
        ys_dot, want_dot, rtol=0, atol=1e-12 * float(jnp.max(jnp.abs(want_dot)))
    )


def test_backsolve_adjoint():
    # Saving at `t1` only: see the `Reversible` docstring for `SaveAt(ts=...)`.
    # `BacksolveAdjoint` solves the adjoint equation numerically, so it agrees with
    # the discrete gradient to the solver's accuracy only.
    def loss(adjoint, args, y0):
        sol = diffrax.diffeqsolve(
            diffrax.ODETerm(vector_field),
            ra.Reversible(diffrax.Tsit5()),
            0.0,
            1.5,
            1.5 / NUM_STEPS,
            y0,
            args=args,
            adjoint=adjoint,
            max_steps=NUM_STEPS,
        )
        return sum(jnp.sum(leaf[-1] ** 2) for leaf in jax.tree.leaves(sol.ys))

    def grad(adjoint):
        return jax.jit(jax.grad(functools.partial(loss, adjoint), (0, 1)))(ARGS, Y0)

    got = grad(diffrax.BacksolveAdjoint())
    want = grad(diffrax.RecursiveCheckpointAdjoint())
    assert_tree_close(got, want, rtol=1e-5)


def test_scan_kind_field():
    solver = ra.Reversible(diffrax.Tsit5())
    assert solver.scan_kind is None
    assert solver._base_for_stepping() is solver.solver
    assert ra.Reversible(diffrax.Tsit5(), scan_kind="lax")._base_for_stepping() == (
        diffrax.Tsit5(scan_kind="lax")
    )
    # A base method's own choice is kept.
    explicit = ra.Reversible(diffrax.Tsit5(scan_kind="bounded"), scan_kind="lax")
    assert explicit._base_for_stepping().scan_kind == "bounded"
    with pytest.raises(ValueError, match="scan_kind"):
        ra.Reversible(diffrax.Tsit5(), scan_kind="unrolled")
