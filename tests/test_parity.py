"""Gradients of `ReversibleAdjoint` against `diffrax.RecursiveCheckpointAdjoint` on the
same solver and the same steps, for every differentiable input."""

from collections.abc import Callable

import diffrax
import equinox as eqx
import jax
import jax.numpy as jnp
import pytest

import reversible_adjoint as ra

from .helpers import (
    INPUT_NAMES,
    check_gradient_parity,
    check_solve_parity,
    make_problem,
    problem_inputs,
    readout,
    save_ts_t1,
    step_to,
)

SOLVERS = [ra.ReversibleHeun(), diffrax.ReversibleHeun()]
CONTROLLERS = {
    "constant": (diffrax.ConstantStepSize(), 0.05),
    "pid": (diffrax.PIDController(rtol=1e-3, atol=1e-5), 0.3),
    "step_ts": (diffrax.PIDController(rtol=1e-3, atol=1e-5, step_ts=[0.4, 1.1]), 0.3),
    "stepto": (step_to, None),
}


def _check(controller_name, saveat, solver=SOLVERS[0], inputs=None, **kwargs):
    controller, dt0 = CONTROLLERS[controller_name]
    if inputs is None:
        inputs = problem_inputs(dt0=dt0)
    return check_solve_parity(inputs, solver, controller, saveat, **kwargs)


# diffrax's own instance runs the same forward pass; it is checked on constant steps
# (and with adaptive steps in test_sde.py and test_transforms.py). Reversible Heun's
# backward pass has two forms: with `SaveAt(ts=...)` it carries each linearisation to
# the next backward step, without it each backward step settles the previous step's
# evaluation itself (see `_adjoint_term.py`).
#
# `step_ts` changes where steps end, not how values are saved: one `SaveAt` for it,
# and for diffrax's instance (which is served by the same backward pass as ours).
@pytest.mark.parametrize(
    "solver, controller_name, saveat_name",
    [
        # Constant and adaptive steps, every input, save times included: part of the
        # quick check of an install (`-m quick`).
        pytest.param(
            SOLVERS[0],
            name,
            saveat_name,
            marks=[pytest.mark.quick]
            if saveat_name == "ts" and name != "stepto"
            else [],
        )
        for name in ("constant", "pid", "stepto")
        for saveat_name in ("ts", "steps")
    ]
    + [(SOLVERS[0], "step_ts", "ts"), (SOLVERS[1], "constant", "ts")],
    ids=lambda x: x if isinstance(x, str) else type(x).__module__.split(".")[0],
)
def test_all_inputs(solver, controller_name, saveat_name):
    if saveat_name == "ts":
        saveat_fn = lambda ts: diffrax.SaveAt(ts=ts, t1=True)
    else:
        saveat_fn = lambda ts: diffrax.SaveAt(steps=3, t1=True)
    # Every input matters here; a zero reference would make the comparison vacuous.
    nonzero = ["terms", "y0", "args", "t1"]
    if saveat_name == "ts":
        nonzero.append("ts")
    if controller_name != "stepto":
        nonzero.append("t0")
    if controller_name in ("constant", "pid"):
        nonzero.append("dt0")
    _, _, stats = _check(controller_name, saveat_fn, solver, nonzero=nonzero)
    if controller_name == "pid":
        assert stats["num_rejected_steps"] > 0
        assert stats["num_accepted_steps"] > 10


@pytest.mark.parametrize(
    "controller_name, saveat_name",
    [("constant", "ts"), ("constant", "steps"), ("stepto", "steps")],
)
def test_one_step_ending_exactly_at_t1(controller_name, saveat_name):
    """One step whose end equals `t1` exactly without being clipped there (`dt0 = t1 -
    t0`, or `StepTo([t0, t1])`): the step's end and the saved final time are equal but
    depend on the inputs differently at that tie, and each must get its own
    derivative, as in diffrax."""
    term, y0, args, t0, _, ts, _ = problem_inputs()
    t1 = jnp.array(0.5)
    inputs = (term, y0, args, t0, t1, ts * 0.25, t1 - t0)
    saveat = SAVEATS["ts"] if saveat_name == "ts" else SAVEATS["steps_t0_t1"]
    if controller_name == "stepto":
        controller = lambda t0, t1: diffrax.StepTo(jnp.stack([t0, t1]))
    else:
        controller = diffrax.ConstantStepSize()
    check_solve_parity(inputs, SOLVERS[0], controller, saveat, nonzero=["t0", "t1"])


SAVEATS = {
    "ts": lambda ts: diffrax.SaveAt(ts=ts),
    "steps_t0_t1": lambda ts: diffrax.SaveAt(t0=True, t1=True, steps=True),
}


# Every kind of `SaveAt`, as the `SubSaveAt`s of one `SaveAt` per form of the backward
# pass (each `SubSaveAt` has its own buffer and layout; `SaveAt(ts=..., fn=...)` is
# diffrax's shorthand for one `SubSaveAt`). Without save times between the steps
# reversible Heun's backward pass settles each evaluation in the step that makes it;
# with them it carries it to the next (see `_adjoint_term.py`). `SaveAt(steps=3,
# t1=True)` is in `test_all_inputs`.
SAVEAT_GROUPS = {
    "no_ts": lambda ts: diffrax.SaveAt(
        subs=[
            diffrax.SubSaveAt(t0=True, t1=True),
            diffrax.SubSaveAt(t0=True, t1=True, steps=True),
        ]
    ),
    "with_ts": lambda ts: diffrax.SaveAt(
        subs=[
            diffrax.SubSaveAt(ts=ts),
            diffrax.SubSaveAt(t0=True, ts=ts[1:-1], steps=2, t1=True),
            diffrax.SubSaveAt(
                ts=ts, t1=True, fn=lambda t, y, args: jnp.cos(t) * y["x"] * args[0]
            ),
            diffrax.SubSaveAt(ts=ts[::2], fn=lambda t, y, args: y["v"] ** 2),
            diffrax.SubSaveAt(t0=True, steps=True, fn=lambda t, y, args: t * y["x"]),
            diffrax.SubSaveAt(ts=ts[1::2], t1=True),
        ]
    ),
}


# With constant steps. With adaptive steps, where the layout of the values saved at
# steps depends on the number of accepted steps: `SaveAt(steps=3, t1=True)` in
# `test_all_inputs`, and `SaveAt(ts=..., steps=2, t1=True)` in test_early_stop.py.
@pytest.mark.parametrize("saveat_name", ["no_ts", "with_ts"])
def test_saveat(saveat_name):
    _check("constant", SAVEAT_GROUPS[saveat_name])


def test_saveat_fn_module_parameters():
    """Arrays inside `SaveAt(fn=...)` (here an `eqx.Module`) get gradients too."""

    class Readout(eqx.Module):
        w: jax.Array

        def __call__(self, t, y, args):
            return self.w * y["x"] + t

    def loss(inputs, adjoint):
        (w,) = inputs
        term, y0, args = make_problem()
        saveat = diffrax.SaveAt(ts=jnp.linspace(0.1, 1.9, 5), fn=Readout(w))
        sol = diffrax.diffeqsolve(
            term,
            ra.ReversibleHeun(),
            0.0,
            2.0,
            0.05,
            y0,
            args=args,
            saveat=saveat,
            adjoint=adjoint,
        )
        return readout(sol.ys)

    check_gradient_parity(loss, (jnp.array([0.5, -1.5]),), nonzero=[0])


def test_backwards_in_time():
    """`t1 < t0`: diffrax flips time; gradients of the flipped solve must still
    agree. With constant steps here; with adaptive steps in test_checkpoints.py
    (asynchronous leapfrog) and test_reversible_wrapper.py."""
    inputs = problem_inputs(t0=2.0, t1=0.0, ts=(2.0, 1.6, 0.9, 0.2), dt0=-0.05)
    _check("constant", save_ts_t1, inputs=inputs)


def test_solver_state_output():
    """`SaveAt(solver_state=True)` exposes the final `(ŷ, v)`; its cotangent is pulled
    back too."""

    saveat = lambda ts: diffrax.SaveAt(t1=True, solver_state=True)
    nonzero = ["terms", "y0", "args", "t0", "t1", "dt0"]
    check_solve_parity(problem_inputs(), SOLVERS[0], saveat=saveat, nonzero=nonzero)


def test_t0_equals_t1():
    """No steps at all: diffrax saves `y0` at every `ts`; gradients still flow."""
    inputs = problem_inputs(t0=1.0, t1=1.0, ts=(1.0, 1.0))
    saveat_fn = lambda ts: diffrax.SaveAt(
        t0=True, ts=ts, t1=True, fn=lambda t, y, args: t * y["x"]
    )
    _check("constant", saveat_fn, inputs=inputs)


def test_float32():
    f32 = lambda x: jnp.asarray(x, jnp.float32)
    inputs = problem_inputs(
        f32(0.0), f32(2.0), f32([0.1, 0.7, 1.5]), f32(0.05), make_problem(jnp.float32)
    )
    # Float32 round-off. The `dt0` gradient is a sum of cancelling terms along the step
    # grid; there both adjoints are ~2e-4 away from the float64 value.
    rtol = {name: 2e-3 if name == "dt0" else 1e-5 for name in INPUT_NAMES}
    got, _, _ = check_solve_parity(inputs, SOLVERS[0], rtol=rtol)
    for leaf in jax.tree_util.tree_leaves(got):
        assert leaf.dtype == jnp.float32


@pytest.mark.parametrize(
    "solver",
    [ra.ReversibleHeun(), ra.LeapfrogMidpoint()],
    ids=["RH", "LM"],
)
def test_step_to_times_not_differentiated(solver):
    """`StepTo` whose times are a constant (or built inside the loss): its times get
    a zero cotangent, as from RCA, rather than a structure mismatch."""
    term, y0, args = make_problem()

    def loss(inputs, adjoint):
        y0, args = inputs
        controller = diffrax.StepTo(jnp.linspace(0.0, 1.0, 11) ** 1.3)
        sol = diffrax.diffeqsolve(
            term,
            solver,
            0.0,
            1.0,
            None,
            y0,
            args=args,
            stepsize_controller=controller,
            adjoint=adjoint,
        )
        return readout(sol.ys)

    check_gradient_parity(loss, (y0, args), nonzero=[0, 1])


def test_custom_term_closing_over_parameters():
    """A user's own `AbstractTerm` whose vector field closes over an array being
    differentiated (not a leaf of the term)."""

    class Term(diffrax.AbstractTerm):
        fn: Callable

        def vf(self, t, y, args):
            return self.fn(t, y, args)

        def contr(self, t0, t1, **kwargs):
            return t1 - t0

        def prod(self, vf, control):
            return jax.tree_util.tree_map(lambda v: v * control, vf)

    _, y0, args = make_problem()

    def loss(inputs, adjoint):
        (w,) = inputs
        field = lambda t, y, args: {
            "x": -w * y["v"] * jnp.cos(t),
            "v": w**2 * y["x"] - args[0] * y["v"],
        }
        sol = diffrax.diffeqsolve(
            Term(field),
            ra.ReversibleHeun(),
            0.0,
            1.0,
            0.05,
            y0,
            args=args,
            saveat=diffrax.SaveAt(ts=jnp.array([0.3, 0.77, 1.0])),
            adjoint=adjoint,
        )
        return readout(sol.ys)

    check_gradient_parity(loss, (jnp.array(0.8),), nonzero=[0])
