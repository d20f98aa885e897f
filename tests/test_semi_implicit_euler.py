"""`SemiImplicitEuler`: same numbers as diffrax's, an exact inverse, first order, and
`ReversibleAdjoint` gradients equal to `RecursiveCheckpointAdjoint`'s for both our
instance and diffrax's."""

import diffrax
import equinox as eqx
import jax
import jax.numpy as jnp
import pytest

import reversible_adjoint as ra

from .helpers import (
    check_parity_constant_or_step_to,
    check_step_to_grid_gradient,
    max_relative_error,
    round_trip_error_on_grid,
    solve_constant_or_step_to,
    solve_on_grid,
)

RTOL = 1e-8
SOLVERS = [ra.SemiImplicitEuler(), diffrax.SemiImplicitEuler()]
SOLVER_IDS = ["ra.SemiImplicitEuler", "diffrax.SemiImplicitEuler"]
NAMES = ["terms", "y0", "args", "t0", "t1", "ts", "dt0"]


class Velocity(eqx.Module):
    """dq/dt = M(t) p: time-dependent, with a parameter (`M`) inside the term."""

    M: jax.Array

    def __call__(self, t, p, args):
        scale = 1 + 0.3 * jnp.sin(t)
        return {"u": scale * (self.M @ p["u"]), "w": scale * p["w"]}


def _force(t, q, args):
    """dp/dt = −a q − b cos(t) tanh(q)."""
    a, b = args
    return jax.tree_util.tree_map(lambda x: -a * x - b * jnp.cos(t) * jnp.tanh(x), q)


def _inputs():
    # diffrax checks each term against its own half of the state, so `q` and `p` must
    # share a structure.
    M = jnp.array([[1.0, 0.2], [0.2, 0.7]])
    terms = (diffrax.ODETerm(Velocity(M)), diffrax.ODETerm(_force))
    q0 = {"u": jnp.array([1.0, 0.5]), "w": jnp.array(-0.4)}
    p0 = {"u": jnp.array([0.3, -0.2]), "w": jnp.array(0.6)}
    args = (jnp.array(0.7), jnp.array(0.4))
    ts = jnp.array([0.0, 0.13, 0.5, 0.51, 1.0, 1.77, 2.0])
    return terms, (q0, p0), args, jnp.array(0.0), jnp.array(2.0), ts, jnp.array(0.05)


# diffrax's instance runs the same forward pass: checked on constant steps (the
# `StepTo` grid test below covers it on a non-uniform grid).
@pytest.mark.parametrize(
    "solver, controller_name",
    [(SOLVERS[0], "constant"), (SOLVERS[0], "stepto"), (SOLVERS[1], "constant")],
    ids=["ours-constant", "ours-stepto", "diffrax-constant"],
)
def test_gradient_parity(solver, controller_name):
    """Every input, `SaveAt(ts=..., t1=True)` and `SaveAt(steps=True)` together."""
    check_parity_constant_or_step_to(_inputs(), solver, controller_name, NAMES, RTOL)


def test_gradient_parity_with_checkpoints():
    """As above, restarting from a checkpoint every 7 of the 40 steps (and so
    recomputing the step times between them)."""
    adjoint = ra.ReversibleAdjoint(checkpoint_every=7)
    check_parity_constant_or_step_to(
        _inputs(), SOLVERS[0], "constant", NAMES, RTOL, adjoint
    )


def test_step_to_grid_gradient():
    """Gradient with respect to the times of a non-uniform `StepTo` grid."""
    check_step_to_grid_gradient(_inputs(), SOLVERS[0], RTOL)


def test_matches_diffrax():
    """Forward: bit-for-bit the numbers of `diffrax.SemiImplicitEuler`."""
    for controller_name in ["constant", "stepto"]:
        sols = [
            solve_constant_or_step_to(_inputs(), solver, controller_name).ys
            for solver in SOLVERS
        ]
        assert max_relative_error(sols[0], sols[1]) == 0


def test_round_trip():
    """1000 steps forward, then `backward_step` 1000 times, recovers `y0`."""
    terms, y0, args, *_ = _inputs()
    solver = ra.SemiImplicitEuler()
    ts = jnp.linspace(0.0, 10.0, 1001)
    # No solver state: `y` is all there is to recover.
    assert solve_on_grid(solver, terms, ts, y0, args).solver_state is None
    assert round_trip_error_on_grid(solver, terms, ts, y0, args) < 1e-12


# The harmonic oscillator q' = p, p' = −q, as two terms.
OSCILLATOR = (
    diffrax.ODETerm(lambda t, p, args: p),
    diffrax.ODETerm(lambda t, q, args: -q),
)


def test_first_order():
    """Global error on the harmonic oscillator halves per halving of the step."""
    terms = OSCILLATOR
    y0 = (jnp.array(1.0), jnp.array(0.0))

    def exact(t):
        return jnp.array([jnp.cos(t), -jnp.sin(t)])

    errors = []
    for n in (200, 400, 800, 1600):
        sol = diffrax.diffeqsolve(
            terms, ra.SemiImplicitEuler(), 0.0, 2.0, 2.0 / n, y0, max_steps=n
        )
        q, p = sol.ys
        errors.append(jnp.max(jnp.abs(jnp.array([q[-1], p[-1]]) - exact(2.0))))
    orders = [float(jnp.log2(a / b)) for a, b in zip(errors[:-1], errors[1:])]
    assert all(abs(o - 1) < 0.1 for o in orders), orders


@pytest.mark.parametrize("solver", SOLVERS, ids=SOLVER_IDS)
def test_adaptive_steps_refused(solver):
    """No error estimate: a `PIDController` is refused, as diffrax refuses it."""
    y0 = (jnp.array(1.0), jnp.array(0.0))
    with pytest.raises(RuntimeError, match="adaptive step sizes.*error estimates"):
        diffrax.diffeqsolve(
            OSCILLATOR,
            solver,
            0.0,
            1.0,
            0.1,
            y0,
            stepsize_controller=diffrax.PIDController(rtol=1e-3, atol=1e-6),
            adjoint=ra.ReversibleAdjoint(),
        )
