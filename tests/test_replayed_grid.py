"""With checkpoints and a step grid that does not depend on `y` (`ConstantStepSize`,
`StepTo`), the forward pass does not record every accepted time: the backward pass
runs the controller again over each stretch between checkpoints. The times must be
exactly those of the forward pass, and the gradients those of
`RecursiveCheckpointAdjoint`, across many stretches; and memory must not grow by a
scalar per step."""

import math

import diffrax
import equinox as eqx
import jax
import jax.numpy as jnp
import pytest

import reversible_adjoint as ra
from reversible_adjoint._step_record import init_recording

from .helpers import (
    assert_nonzero,
    check_parity_of_every_input,
    make_problem,
    max_relative_error,
    readout,
)

RTOL = 1e-9
MAX_STEPS = 50


def _grid():
    inner = jnp.linspace(0.05, 1.95, 41) ** 1.1 * 1.95**-0.1
    return jnp.concatenate([jnp.array([0.0]), inner, jnp.array([2.0])])


def _controller(name):
    if name == "constant":
        return diffrax.ConstantStepSize(), 2.0 / 45
    return diffrax.StepTo(_grid()), None


@pytest.mark.parametrize(
    "solver, controller_name, checkpoint_every",
    [
        (ra.ReversibleHeun(), "constant", 7),
        (ra.AsynchronousLeapfrog(), "step_to", 5),
        (ra.Reversible(diffrax.Bosh3()), "constant", 1),
    ],
    ids=["RH-constant", "ALF-step_to", "Reversible-constant"],
)
def test_parity_over_many_stretches(solver, controller_name, checkpoint_every):
    """Gradients with respect to every input, the times included (`t0`, `t1`, `dt0`,
    the `StepTo` grid, the save times), over six or more stretches."""
    controller, dt0 = _controller(controller_name)
    check_parity_of_every_input(
        solver,
        controller,
        ra.ReversibleAdjoint(checkpoint_every=checkpoint_every),
        0.0,
        2.0,
        dt0,
        jnp.array([0.1, 0.77, 0.78, 1.5, 1.99]),
        steps=3,
        max_steps=MAX_STEPS,
        rtol=RTOL,
        nonzero=["y0", "args", "t0", "t1", "ts"],
    )


@pytest.mark.parametrize("controller_name", ["constant", "step_to"])
@pytest.mark.parametrize("every", [1, 7])
def test_replayed_times_are_the_recorded_times(controller_name, every):
    """Run the controller as diffrax's loop does, recording every time and, alongside,
    only what replaying needs: every stretch replays to the same times and tangents,
    bit for bit."""
    controller, dt0 = _controller(controller_name)
    if dt0 is not None:
        dt0 = jnp.array(dt0)  # An array, as `diffeqsolve` passes it.
    t0, t1 = jnp.array(0.0), jnp.array(2.0)
    tnext, controller_state = controller.init(None, t0, t1, None, dt0, None, None, None)
    # One direction: the tangent along `t1` (`ConstantStepSize` also holds `t1`, or,
    # in diffrax 0.7.0, `dt0`).
    dynamic, _ = eqx.partition(controller_state, eqx.is_inexact_array)
    tangents = (
        jnp.zeros(1),
        jnp.zeros(1),
        jax.tree_util.tree_map(lambda x: jnp.ones((1, *x.shape)), dynamic),
    )
    t1_tangent = jnp.ones(1)

    def run(replay_every):
        wrapped, state = init_recording(
            controller,
            t1,
            t0,
            tnext,
            controller_state,
            MAX_STEPS,
            tangents,
            t1_tangent,
            replay_every=replay_every,
        )

        def step(carry, _):
            tprev, tnext, state = carry
            _, tprev, tnext, _, state, _ = wrapped.adapt_step_size(
                tprev, tnext, None, None, None, None, None, state
            )
            return (tprev, tnext, state), None

        (_, _, state), _ = jax.lax.scan(step, (t0, tnext, state), length=MAX_STEPS)
        return wrapped, state.record

    _, full = jax.jit(lambda: run(None))()
    wrapped, grid = jax.jit(lambda: run(every))()
    num_steps = int(full.num_accepted)
    assert num_steps > 40 and int(grid.num_accepted) == num_steps
    assert float(full.ts[num_steps]) == 2.0
    assert jnp.any(full.tangents[1 : num_steps + 1] != 0)
    for stretch in range(math.ceil(num_steps / every)):
        times = eqx.filter_jit(grid.stretch)(jnp.array(stretch), wrapped)
        ks = jnp.arange(stretch * every, min((stretch + 1) * every, num_steps) + 1)
        assert jnp.array_equal(times.time(ks), full.ts[ks])
        assert jnp.array_equal(times.tangent(ks), full.tangents[ks])
        previous = max(stretch * every - 1, 0)
        assert times.time(stretch * every - 1) == full.ts[previous] or stretch == 0


def test_truncated_and_vmapped():
    """`vmap` over `t1`, so that each element takes a different number of constant
    steps (and so of stretches), one of them cut short by `max_steps`."""
    term, y0, args = make_problem()

    def loss(args, t1, adjoint):
        sol = diffrax.diffeqsolve(
            term,
            ra.ReversibleHeun(),
            0.0,
            t1,
            0.05,
            y0,
            args=args,
            saveat=diffrax.SaveAt(ts=jnp.array([0.1, 0.5, 0.9]) * t1, t1=True),
            adjoint=adjoint,
            max_steps=36,
            throw=False,
        )
        ys = jax.tree_util.tree_map(
            lambda x: jnp.where(jnp.isfinite(x), x, 0.0), sol.ys
        )
        return readout(ys), (sol.stats["num_accepted_steps"], sol.result._value)

    def grads(adjoint):
        fn = jax.vmap(jax.grad(loss, argnums=(0, 1), has_aux=True), (None, 0, None))
        return eqx.filter_jit(fn)(args, jnp.array([0.7, 1.3, 2.0]), adjoint)

    want, (steps, results) = grads(diffrax.RecursiveCheckpointAdjoint())
    got, _ = grads(ra.ReversibleAdjoint(checkpoint_every=5))
    assert steps.tolist() == [14, 26, 36]
    stopped_early = results == diffrax.RESULTS.max_steps_reached._value
    assert stopped_early.tolist() == [False, False, True]
    assert_nonzero(want)
    assert max_relative_error(got, want) < RTOL


def _temp_bytes(num_steps, adjoint):
    term = diffrax.ODETerm(lambda t, y, args: args * jnp.stack([y[1], -y[0]]))

    def loss(y0, args, t1):
        sol = diffrax.diffeqsolve(
            term,
            ra.ReversibleHeun(),
            0.0,
            t1,
            1.0 / num_steps,
            y0,
            args,
            adjoint=adjoint,
            max_steps=num_steps,
        )
        return jnp.sum(sol.ys**2)

    grad = jax.jit(jax.grad(loss, argnums=(0, 1, 2)))
    compiled = grad.lower(jnp.array([1.0, 0.0]), 2.0, 1.0).compile()
    return compiled.memory_analysis().temp_size_in_bytes


def test_no_time_recorded_per_step():
    """A two-component state, with `t1` differentiated (`D = 2` directions): from
    1,000 to 20,000 steps, checkpoints every 100 add, per checkpoint, `y` and the
    solver state (4 scalars) and the grid's few scalars (two times and the controller
    state, 7 scalars, with tangents: 21), all float64. Allow twice that. A record of
    every time would add `1 + D` scalars per step: 12 times more, 6 times the bound."""
    adjoint = ra.ReversibleAdjoint(checkpoint_every=100)
    growth = _temp_bytes(20_000, adjoint) - _temp_bytes(1_000, adjoint)
    bound = 2 * 8 * (4 + 21) * (20_000 - 1_000) // 100
    assert growth <= bound, growth
    assert bound * 6 <= 8 * 3 * (20_000 - 1_000)
