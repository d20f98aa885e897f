"""With a step grid that does not depend on `y` (`ConstantStepSize`, `StepTo`), the
forward pass does not record every accepted time. Where each time is a function of a
step counter in the controller state (`StepTo`; `ConstantStepSize` from diffrax
0.7.1), the backward pass computes it directly (`PredictedRecord`): memory is flat in
the number of steps. Otherwise, with checkpoints, it runs the controller again over
each stretch between checkpoints (`GridRecord`). The times must be exactly those of
the forward pass, and the gradients those of `RecursiveCheckpointAdjoint`; and memory
must not grow by a scalar per step."""

import diffrax
import equinox as eqx
import jax
import jax.numpy as jnp
import pytest

import reversible_adjoint as ra
from reversible_adjoint._step_record import init_recording, predicts_grid

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
        pytest.param(
            ra.Reversible(diffrax.Bosh3()), "constant", 1, marks=pytest.mark.slow
        ),
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
def test_computed_times_are_the_recorded_times(controller_name):
    """Run the controller as diffrax's loop does, recording every time and,
    alongside, only what computing them needs: every time and tangent computed is the
    recorded one, bit for bit, and the forward pass's check agrees."""
    controller, dt0 = _controller(controller_name)
    if dt0 is not None:
        dt0 = jnp.array(dt0)  # An array, as `diffeqsolve` passes it.
    t0, t1 = jnp.array(0.0), jnp.array(2.0)
    tnext, controller_state = controller.init(None, t0, t1, None, dt0, None, None, None)
    if not predicts_grid(controller, controller_state):
        pytest.skip("diffrax < 0.7.1: `ConstantStepSize` adds `dt0` at each step.")
    # Directions: along `tnext` and `t1`, and (`ConstantStepSize`) along the inexact
    # leaves of its state (which hold `t0` and `t1`).
    dynamic, _ = eqx.partition(controller_state, eqx.is_inexact_array)
    tangents = (
        jnp.zeros(2),
        jnp.array([1.0, 0.0]),
        jax.tree_util.tree_map(lambda x: jnp.ones((2, *x.shape)), dynamic),
    )
    t1_tangent = jnp.array([0.0, 1.0])

    def run(predict):
        wrapped, state = init_recording(
            controller,
            t1,
            t0,
            controller_state,
            MAX_STEPS,
            tangents,
            t1_tangent,
            predict=predict,
        )

        def step(carry, _):
            tprev, tnext, state = carry
            _, tprev, tnext, _, state, _ = wrapped.adapt_step_size(
                tprev, tnext, None, None, None, None, None, state
            )
            return (tprev, tnext, state), None

        (_, _, state), _ = jax.lax.scan(step, (t0, tnext, state), length=MAX_STEPS)
        return wrapped, state.record

    _, full = jax.jit(lambda: run(False))()
    wrapped, predicted = jax.jit(lambda: run(True))()
    num_steps = int(full.num_accepted)
    assert num_steps > 40 and int(predicted.num_accepted) == num_steps
    assert float(full.ts[num_steps]) == 2.0
    assert jnp.any(full.tangents[1 : num_steps + 1] != 0)
    assert not predicted.mismatch
    ks = jnp.arange(num_steps + 1)
    lookup = eqx.filter_jit(lambda r, ks: jax.vmap(r._lookup)(ks))
    times, time_tangents = lookup(predicted.with_controller(wrapped), ks)
    assert jnp.array_equal(times, full.ts[ks])
    assert jnp.array_equal(time_tangents, full.tangents[ks])


def test_unpredicted_grid_is_an_error():
    """A solve whose times the controller does not compute from its step count
    (`ConstantStepSize` with an infinite `t1`, which adds `dt0` to the previous
    time) is caught by the forward pass's check: the gradient is an error, not a
    wrong number."""
    controller, dt0 = _controller("constant")
    _, state = controller.init(None, 0.0, 2.0, None, dt0, None, None, None)
    if not predicts_grid(controller, state):
        pytest.skip("diffrax < 0.7.1: `ConstantStepSize` adds `dt0` at each step.")
    term, y0, args = make_problem()

    def loss(args):
        sol = diffrax.diffeqsolve(
            term,
            ra.ReversibleHeun(),
            0.0,
            jnp.inf,
            0.05,
            y0,
            args=args,
            adjoint=ra.ReversibleAdjoint(),
            max_steps=20,
            throw=False,
        )
        return readout(sol.ys)

    with pytest.raises(Exception, match="could not recompute the step times"):
        eqx.filter_jit(jax.grad(loss))(args)


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


def test_memory_flat_in_steps():
    """On a constant grid with `t1` differentiated (`D = 2` directions), from 1,000
    to 20,000 steps: without checkpoints, the compiled gradient needs the same
    memory (a record of every time would add 19,000 times `1 + D` scalars); with
    checkpoints every 100 steps, it grows by the checkpoints only, `y` and the solver
    state (4 float64 scalars) each; allow twice that. (A `StepTo` grid is itself an
    array of the steps' size, which diffrax copies.)"""
    controller, dt0 = _controller("constant")
    _, state = controller.init(None, 0.0, 2.0, None, dt0, None, None, None)
    if not predicts_grid(controller, state):
        pytest.skip("diffrax < 0.7.1: `ConstantStepSize` adds `dt0` at each step.")
    adjoint = ra.ReversibleAdjoint()
    assert _temp_bytes(20_000, adjoint) == _temp_bytes(1_000, adjoint)
    adjoint = ra.ReversibleAdjoint(checkpoint_every=100)
    growth = _temp_bytes(20_000, adjoint) - _temp_bytes(1_000, adjoint)
    bound = 2 * 8 * 4 * (20_000 - 1_000) // 100
    assert growth <= bound, growth
