"""Stratonovich SDEs with `ReversibleAdjoint`: `MultiTerm(ODETerm, ControlTerm)` with a
Brownian path that can be re-queried, against `RecursiveCheckpointAdjoint` on the same
Brownian sample."""

import diffrax
import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
import lineax as lx
import numpy as np
import optax
import pytest
from jaxtyping import PyTree

import reversible_adjoint as ra

from .helpers import (
    INPUT_NAMES,
    check_gradient_parity,
    problem_inputs,
    readout,
    solve,
)

T0, T1 = 0.0, 2.0


class GridBrownianPath(diffrax.AbstractBrownianPath):
    """A Brownian sample on a fine grid, linearly interpolated: it can be queried again
    with the same answer and, unlike `VirtualBrownianTree`, differentiated with respect
    to time, so that `t0`/`t1` gradients of an SDE solve exist. `shape` is a tuple,
    or a pytree of `jax.ShapeDtypeStruct`s as for `VirtualBrownianTree`."""

    grid: jax.Array
    values: PyTree[jax.Array]
    levy_area: type = eqx.field(static=True, default=diffrax.BrownianIncrement)

    def __init__(self, key, shape, t0, t1, num=4097):
        self.grid = jnp.linspace(t0, t1, num)

        def sample(key, shape):
            increments = jr.normal(key, (num - 1, *shape)) * jnp.sqrt(
                self.grid[1] - self.grid[0]
            )
            return jnp.concatenate(
                [jnp.zeros((1, *shape)), jnp.cumsum(increments, axis=0)]
            )

        if isinstance(shape, tuple):
            self.values = sample(key, shape)
        else:
            leaves, treedef = jax.tree_util.tree_flatten(shape)
            keys = jr.split(key, len(leaves))
            self.values = jax.tree_util.tree_unflatten(
                treedef, [sample(k, leaf.shape) for k, leaf in zip(keys, leaves)]
            )

    @property
    def t0(self):
        return self.grid[0]

    @property
    def t1(self):
        return self.grid[-1]

    def _at(self, t):
        def at(values):
            flat = values.reshape(len(self.grid), -1)
            interp = jax.vmap(lambda v: jnp.interp(t, self.grid, v), in_axes=1)
            return interp(flat).reshape(values.shape[1:])

        return jax.tree_util.tree_map(at, self.values)

    def evaluate(self, t0, t1=None, left=True, use_levy=False):
        del left
        assert not use_levy
        if t1 is None:
            return self._at(t0)
        return jax.tree_util.tree_map(jnp.subtract, self._at(t1), self._at(t0))


class Drift(eqx.Module):
    W: jax.Array

    def __call__(self, t, y, args):
        return jnp.tanh(self.W @ y) * jnp.cos(t) - args[0] * y


class DiagonalDiffusion(eqx.Module):
    b: jax.Array

    def __call__(self, t, y, args):
        return lx.DiagonalLinearOperator(args[1] * jnp.sin(self.b * y + t))


class GeneralDiffusion(eqx.Module):
    B: jax.Array

    def __call__(self, t, y, args):
        # (3, 2): non-commutative, state-dependent noise.
        return args[1] * jnp.tanh(self.B * y[:, None] + jnp.array([0.0, 0.5]) * t)


class PytreeDrift(eqx.Module):
    W: jax.Array

    def __call__(self, t, y, args):
        return {
            "a": y["b"] - args[0] * y["a"],
            "b": -jnp.tanh(self.W @ y["a"]) * jnp.cos(t),
        }


class PytreeDiffusion(eqx.Module):
    B: jax.Array

    def __call__(self, t, y, args):
        return {
            "a": args[1] * jnp.diag(jnp.cos(y["a"])),
            "b": self.B * jnp.sin(y["b"])[:, None],
        }


def _problem(noise, path="tree", key=jr.PRNGKey(0)):
    k1, k2, k3 = jr.split(key, 3)
    args = (jnp.array(0.4), jnp.array(0.3))
    if noise == "pytree":
        y0 = {"a": jnp.array([0.5, -0.4]), "b": jnp.array([0.2, 0.3])}
        leaf = jax.ShapeDtypeStruct((2,), jnp.float64)
        shape = {"a": leaf, "b": leaf}
        drift, diffusion = (
            PytreeDrift(jr.normal(k1, (2, 2))),
            PytreeDiffusion(jr.normal(k2, (2, 2))),
        )
    else:
        y0 = jnp.array([0.5, -0.4, 0.3])
        drift = Drift(jr.normal(k1, (3, 3)))
        if noise == "diagonal":
            shape, diffusion = (3,), DiagonalDiffusion(jr.normal(k2, (3,)))
        else:
            shape, diffusion = (2,), GeneralDiffusion(jr.normal(k2, (3, 2)))
    if path == "tree":
        bm = diffrax.VirtualBrownianTree(T0, T1, tol=1e-4, shape=shape, key=k3)
    else:
        bm = GridBrownianPath(k3, shape, T0, T1)
    terms = diffrax.MultiTerm(
        diffrax.ODETerm(drift), diffrax.ControlTerm(diffusion, bm)
    )
    return terms, y0, args


def _check(
    solver,
    controller,
    terms,
    y0,
    args,
    ts,
    t0=T0 + 0.1,
    t1=T1 - 0.1,
    dt0=0.02,
    wrt_times=False,
    **kwargs,
):
    """`check_gradient_parity` of a solve saving `ts` and `t1`, with respect to the
    terms, `y0`, `args`, `ts` and, with `wrt_times`, `t0`, `t1` and `dt0`."""

    def loss(inputs, adjoint):
        terms, y0, args, t0, t1, ts, dt0 = inputs
        if not wrt_times:
            t0, t1, dt0 = jax.lax.stop_gradient((t0, t1, dt0))
        inputs = (terms, y0, args, t0, t1, ts, dt0)
        return readout(solve(inputs, solver, adjoint, controller, max_steps=1024).ys)

    inputs = problem_inputs(t0, t1, ts, dt0, problem=(terms, y0, args))
    return check_gradient_parity(loss, inputs, names=INPUT_NAMES, **kwargs)


CONTROLLERS = {
    "constant": diffrax.ConstantStepSize(),
    "pid": diffrax.PIDController(rtol=1e-2, atol=1e-3),
}


def _nonzero(want, wrt_times=False):
    """The parts of the reference gradient that must not be zero: the drift's and the
    diffusion's parameters, `y0`, `args`, `ts` and, with `wrt_times`, `t0`, `t1` and
    `dt0`."""
    want_terms, want_y0, want_args, want_t0, want_t1, want_ts, want_dt0 = want
    times = (want_t0, want_t1, want_dt0) if wrt_times else ()
    return (
        want_terms.terms[0].vector_field,
        want_terms.terms[1].vector_field,
        want_y0,
        want_args,
        want_ts,
        *times,
    )


# Diagonal noise (`lineax.DiagonalLinearOperator`) with diffrax's instance, served by
# the same backward pass as ours. Constant steps: pytree noise in
# `test_time_gradients`, and test_checkpoints.py's `test_sde_parity` on a
# `VirtualBrownianTree`.
@pytest.mark.parametrize(
    "solver, noise",
    [(ra.ReversibleHeun(), "general"), (diffrax.ReversibleHeun(), "diagonal")],
)
def test_parity(solver, noise):
    """Gradients with respect to `y0`, `args`, drift and diffusion parameters and
    `SaveAt(ts)`, on a `VirtualBrownianTree`, with adaptive steps."""
    terms, y0, args = _problem(noise)
    ts = jnp.array([0.3, 0.75, 1.2, 1.7])
    _check(solver, CONTROLLERS["pid"], terms, y0, args, ts, nonzero=_nonzero)


@pytest.mark.parametrize(
    "noise, controller_name", [("general", "pid"), ("pytree", "constant")]
)
def test_time_gradients(noise, controller_name):
    """`t0`, `t1`, `dt0` and `ts` gradients, with those of `y0`, `args` and the
    parameters, on a Brownian path that is differentiable in time; noise on a pytree
    state with constant steps."""
    terms, y0, args = _problem(noise, path="grid")
    ts = jnp.array([0.3, 0.75, 1.2, 1.7])
    controller = CONTROLLERS[controller_name]
    _check(
        ra.ReversibleHeun(),
        controller,
        terms,
        y0,
        args,
        ts,
        wrt_times=True,
        nonzero=lambda want: _nonzero(want, wrt_times=True),
    )


def test_time_gradients_through_virtual_brownian_tree_raise():
    """`VirtualBrownianTree` is not differentiable in time: both adjoints raise rather
    than return a gradient (ours saying why)."""
    terms, y0, args = _problem("general")
    ts = jnp.array([0.5, 1.5])
    solver, controller = ra.ReversibleHeun(), CONTROLLERS["constant"]
    # `check_gradient_parity` computes the reference gradient first.
    with pytest.raises(Exception, match="cannot be autodifferentiated"):
        _check(solver, controller, terms, y0, args, ts, wrt_times=True)
    with pytest.raises(
        ValueError, match="VirtualBrownianTree.*not differentiable with respect to time"
    ):
        _check(
            solver,
            controller,
            terms,
            y0,
            args,
            ts,
            wrt_times=True,
            reference=ra.ReversibleAdjoint(),
        )


def _strong_order(noise, num_samples=128):
    """Slope of log E|y_h(T) - y_ref(T)| against log h, on shared Brownian samples."""
    if noise == "additive":
        diffusion = lambda t, y, args: jnp.array([[0.5, 0.2], [0.0, 0.4]])
    else:
        # dy = g1 dW1 + g2 dW2 with g1 = (1, 0), g2 = (0, y1): the Lie bracket [g1, g2]
        # is nonzero, so no scheme using only increments beats strong order 0.5.
        diffusion = lambda t, y, args: jnp.array([[1.0, 0.0], [0.0, y[0]]])
    drift = lambda t, y, args: jnp.array([y[1], -jnp.sin(y[0])]) - 0.1 * y
    y0 = jnp.array([0.8, 0.1])
    steps = [2**k for k in range(3, 8)]
    reference_steps = 2**11

    # `dt0` an array and a fixed `max_steps`: one compilation for every step size.
    @jax.jit
    @jax.vmap
    def solve(key, dt0):
        bm = diffrax.VirtualBrownianTree(0.0, 1.0, tol=2**-14, shape=(2,), key=key)
        terms = diffrax.MultiTerm(
            diffrax.ODETerm(drift), diffrax.ControlTerm(diffusion, bm)
        )
        sol = diffrax.diffeqsolve(
            terms, ra.ReversibleHeun(), 0.0, 1.0, dt0, y0, max_steps=reference_steps
        )
        return sol.ys[-1]

    keys = jr.split(jr.PRNGKey(1), num_samples)

    def solve_all(num_steps):
        return solve(keys, jnp.full(num_samples, 1.0 / num_steps))

    reference = solve_all(reference_steps)
    errors = [
        float(jnp.mean(jnp.linalg.norm(solve_all(n) - reference, axis=-1)))
        for n in steps
    ]
    return -np.polyfit(np.log(steps), np.log(errors), 1)[0]


@pytest.mark.parametrize("noise, order", [("additive", 1.0), ("general", 0.5)])
def test_strong_order(noise, order):
    assert abs(_strong_order(noise) - order) < 0.15


@pytest.mark.slow
def test_neural_sde_trains():
    """A small neural SDE (MLP drift and diagonal diffusion) trained with
    `ReversibleAdjoint`: the loss falls under a few optimiser steps."""
    key = jr.PRNGKey(0)
    k1, k2, k3 = jr.split(key, 3)
    drift = eqx.nn.MLP(2, 2, 16, 1, activation=jnp.tanh, key=k1)
    diffusion = eqx.nn.MLP(
        2, 2, 16, 1, activation=jnp.tanh, final_activation=jax.nn.softplus, key=k2
    )
    model = (drift, diffusion)
    y0 = jnp.array([0.0, 0.0])
    target = jnp.array([1.0, -0.5])
    keys = jr.split(k3, 16)

    def loss(model):
        drift, diffusion = model

        def sample(key):
            bm = diffrax.VirtualBrownianTree(0.0, 1.0, tol=1e-3, shape=(2,), key=key)
            terms = diffrax.MultiTerm(
                diffrax.ODETerm(lambda t, y, args: drift(y)),
                diffrax.ControlTerm(
                    lambda t, y, args: lx.DiagonalLinearOperator(0.2 * diffusion(y)), bm
                ),
            )
            sol = diffrax.diffeqsolve(
                terms,
                ra.ReversibleHeun(),
                0.0,
                1.0,
                0.05,
                y0,
                adjoint=ra.ReversibleAdjoint(),
            )
            return sol.ys[-1]

        return jnp.mean(jnp.sum((jax.vmap(sample)(keys) - target) ** 2, axis=-1))

    optimiser = optax.adam(3e-2)
    opt_state = optimiser.init(eqx.filter(model, eqx.is_array))

    @eqx.filter_jit
    def step(model, opt_state):
        value, grads = eqx.filter_value_and_grad(loss)(model)
        updates, opt_state = optimiser.update(grads, opt_state)
        return eqx.apply_updates(model, updates), opt_state, value

    losses = []
    for _ in range(25):
        model, opt_state, value = step(model, opt_state)
        losses.append(float(value))
    assert losses[-1] < 0.3 * losses[0], losses


def _sde_temp_bytes(adjoint, num_steps):
    terms, y0, args = _problem("general")
    y0 = jnp.tile(y0, (2, 1))

    def loss(y0, args):
        solve = lambda y: (
            diffrax.diffeqsolve(
                terms,
                ra.ReversibleHeun(),
                T0,
                T1,
                (T1 - T0) / num_steps,
                y,
                args=args,
                adjoint=adjoint,
                max_steps=num_steps,
            ).ys
        )
        return jnp.sum(jax.vmap(solve)(y0) ** 2)

    compiled = jax.jit(jax.grad(loss, argnums=(0, 1))).lower(y0, args).compile()
    return compiled.memory_analysis().temp_size_in_bytes


@pytest.mark.slow
def test_memory_flat_in_steps():
    small = _sde_temp_bytes(ra.ReversibleAdjoint(), 100)
    large = _sde_temp_bytes(ra.ReversibleAdjoint(), 5000)
    assert large - small <= 2 * 8 * (5000 - 100), (small, large)
    store_all = _sde_temp_bytes(
        diffrax.RecursiveCheckpointAdjoint(checkpoints=5000), 5000
    )
    assert large * 10 < store_all


def test_ito_solver_refused():
    class ItoReversibleHeun(ra.ReversibleHeun, diffrax.AbstractItoSolver):
        pass

    terms, y0, args = _problem("general")
    with pytest.raises(
        NotImplementedError, match=r"Itô.*Stratonovich.*RecursiveCheckpointAdjoint"
    ):
        diffrax.diffeqsolve(
            terms,
            ItoReversibleHeun(),
            T0,
            T1,
            0.1,
            y0,
            args=args,
            adjoint=ra.ReversibleAdjoint(),
        )


@pytest.mark.slow
def test_vmap_different_step_counts():
    """`jax.vmap` over solves that take different numbers of steps (here different
    `t1`): the backward pass also runs for the solves it has already undone, and
    must query their `VirtualBrownianTree` inside its range."""
    terms, y0, args = _problem("general")

    def loss(inputs, adjoint):
        terms, y0, args = inputs

        def one(t1):
            sol = diffrax.diffeqsolve(
                terms,
                ra.ReversibleHeun(),
                T0,
                t1,
                0.05,
                y0,
                args=args,
                adjoint=adjoint,
                max_steps=64,
            )
            return readout(sol.ys)

        return jnp.sum(jax.vmap(one)(jnp.array([T1, T1 / 2])))

    check_gradient_parity(loss, (terms, y0, args), nonzero=(0, 1, 2))
