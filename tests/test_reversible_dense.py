"""`Reversible`'s dense output (`SaveAt(ts=...)` inside a step): exact at the ends of
a step, and of the base method's order. (Its gradients, save times included, are
checked against `RecursiveCheckpointAdjoint` in test_reversible_fused.py, adaptive ODE
and SDE, and test_reversible_wrapper.py.)"""

import diffrax
import equinox as eqx
import jax
import jax.numpy as jnp
import jax.tree_util as jtu
import pytest

import reversible_adjoint as ra

from .helpers import make_problem


@pytest.mark.parametrize("base", [diffrax.Euler(), diffrax.Heun(), diffrax.Tsit5()])
def test_step_ends_exact(base):
    """The interpolation of a step is `y0` at `t0` and `y1` at `t1`, bitwise (a step
    after the first, where `z0 ≠ y0`), whether the base method's dense output is linear
    (`Euler`), cubic Hermite (`Heun`) or its own (`Tsit5`)."""
    solver = ra.Reversible(base)
    term, y0, args = make_problem()
    t0, t1, t2 = jnp.array(0.0), jnp.array(0.3), jnp.array(0.55)
    state = solver.init(term, t0, t1, y0, args)
    y1, _, _, state, _ = solver.step(term, t0, t1, y0, args, state, False)
    y2, _, dense_info, _, _ = jax.jit(solver.step, static_argnums=6)(
        term, t1, t2, y1, args, state, False
    )
    evaluate = jax.jit(
        lambda t: solver.interpolation_cls(t0=t1, t1=t2, **dense_info).evaluate(t)
    )
    assert jtu.tree_all(jtu.tree_map(jnp.array_equal, evaluate(t1), y1))
    assert jtu.tree_all(jtu.tree_map(jnp.array_equal, evaluate(t2), y2))
    assert not jtu.tree_all(jtu.tree_map(jnp.array_equal, state, y1))  # z1 ≠ y1


# y' = t·[[0, −1], [1, 0]]·y, y(t) = (cos(t²/2), sin(t²/2)); save times off every grid.
_TERM = diffrax.ODETerm(lambda t, y, args: t * jnp.stack([-y[1], y[0]]))
_TS = jnp.array([0.1234, 0.4567, 0.789, 1.1111, 1.4321, 1.9013])


def _exact(t):
    return jnp.stack([jnp.cos(t**2 / 2), jnp.sin(t**2 / 2)], axis=-1)


@eqx.filter_jit
def _interior_error(solver, dt0):
    sol = diffrax.diffeqsolve(
        _TERM,
        solver,
        0.0,
        2.0,
        dt0,
        _exact(0.0),
        saveat=diffrax.SaveAt(ts=_TS, dense=True),
    )
    # `SaveAt(dense=True)` evaluates the same interpolation as `SaveAt(ts=...)`.
    same = jnp.array_equal(jax.vmap(sol.evaluate)(_TS), sol.ys)
    return jnp.max(jnp.abs(sol.ys - _exact(_TS))), same


def test_interior_order():
    """At save times inside steps, `Reversible(Tsit5())` converges at fifth order (not
    the second order of linear interpolation), with about the error of `Tsit5` with its
    own dense output."""
    base = diffrax.Tsit5()
    errors = {}
    for name, solver in [("base", base), ("wrapped", ra.Reversible(base))]:
        errors[name] = []
        for n in (16, 32):
            error, same = _interior_error(solver, jnp.asarray(2.0 / n))
            assert same
            errors[name].append(float(error))
    coarse, fine = errors["wrapped"]
    assert coarse / fine > 2**4.5
    for wrapped, own in zip(errors["wrapped"], errors["base"], strict=True):
        assert wrapped < 2 * own
