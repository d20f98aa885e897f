"""Gradients of `ReversibleAdjoint` against `diffrax.RecursiveCheckpointAdjoint` on the
same solver and the same steps, for every differentiable input."""

from collections.abc import Callable

import diffrax
import equinox as eqx
import jax
import jax.numpy as jnp
import pytest

import reversible_adjoint as ra

from .helpers import assert_nonzero, make_problem, max_relative_error, readout

RTOL = 1e-8
SOLVERS = [ra.ReversibleHeun(), diffrax.ReversibleHeun()]
SOLVER_IDS = ["ra.ReversibleHeun", "diffrax.ReversibleHeun"]


def _controller(name, t0, t1):
    if name == "constant":
        return diffrax.ConstantStepSize(), 0.05
    if name == "pid":
        return diffrax.PIDController(rtol=1e-3, atol=1e-5), 0.3
    if name == "step_ts":
        return diffrax.PIDController(rtol=1e-3, atol=1e-5, step_ts=[0.4, 1.1]), 0.3
    if name == "stepto":
        return diffrax.StepTo(
            jnp.concatenate(
                [jnp.array([t0]), jnp.linspace(0.3, 1.7, 9) ** 1.2, jnp.array([t1])]
            )
        ), None
    raise ValueError(name)


def _solve(inputs, adjoint, solver, controller_name, saveat_fn, max_steps=512):
    term, y0, args, t0, t1, ts, dt0 = inputs
    controller, default_dt0 = _controller(controller_name, t0, t1)
    if default_dt0 is None:
        dt0 = None
    return diffrax.diffeqsolve(
        term,
        solver,
        t0,
        t1,
        dt0,
        y0,
        args=args,
        saveat=saveat_fn(ts),
        stepsize_controller=controller,
        adjoint=adjoint,
        max_steps=max_steps,
    )


def _grads(adjoint, solver, controller_name, saveat_fn, inputs):
    @eqx.filter_jit
    @eqx.filter_grad
    def grad(inputs):
        sol = _solve(inputs, adjoint, solver, controller_name, saveat_fn)
        return readout(sol.ys) + 0.3 * readout(sol.ts)

    return grad(inputs)


def _inputs(dt0=0.05):
    term, y0, args = make_problem()
    ts = jnp.array([0.0, 0.13, 0.5, 0.51, 1.0, 1.77, 2.0])
    return term, y0, args, jnp.array(0.0), jnp.array(2.0), ts, jnp.array(dt0)


def _check(controller_name, saveat_fn, solver=SOLVERS[0], inputs=None):
    if inputs is None:
        inputs = _inputs(_controller(controller_name, 0.0, 2.0)[1] or 0.05)
    want = _grads(
        diffrax.RecursiveCheckpointAdjoint(), solver, controller_name, saveat_fn, inputs
    )
    got = _grads(ra.ReversibleAdjoint(), solver, controller_name, saveat_fn, inputs)
    names = ["term", "y0", "args", "t0", "t1", "ts", "dt0"]
    errors = {}
    for name, g, w in zip(names, got, want):
        if w is None:
            assert g is None, name
            continue
        errors[name] = max_relative_error(g, w)
    assert max(errors.values()) < RTOL, errors
    return got, want


# diffrax's own instance runs the same forward pass; it is checked on constant steps
# (and with adaptive steps in test_sde.py and test_transforms.py). Reversible Heun's
# backward pass has two forms: with `SaveAt(ts=...)` it carries each linearisation to
# the next backward step, without it each backward step settles the previous step's
# evaluation itself (see `_adjoint_term.py`).
@pytest.mark.parametrize("saveat_name", ["ts", "steps"])
@pytest.mark.parametrize(
    "solver, controller_name",
    [(SOLVERS[0], name) for name in ("constant", "pid", "step_ts", "stepto")]
    + [(SOLVERS[1], "constant")],
    ids=lambda x: x if isinstance(x, str) else type(x).__module__.split(".")[0],
)
def test_all_inputs(solver, controller_name, saveat_name):
    if saveat_name == "ts":
        saveat_fn = lambda ts: diffrax.SaveAt(ts=ts, t1=True)
    else:
        saveat_fn = lambda ts: diffrax.SaveAt(steps=3, t1=True)
    got, want = _check(controller_name, saveat_fn, solver)
    term, y0, args, t0, t1, ts, dt0 = want
    # Every input matters here; a zero reference would make the comparison vacuous.
    assert_nonzero((term, y0, args, t1))
    if saveat_name == "ts":
        assert_nonzero(ts)
    if controller_name != "stepto":
        assert_nonzero(t0)
    if controller_name in ("constant", "pid"):
        assert_nonzero(dt0)


@pytest.mark.parametrize(
    "controller_name, saveat_name",
    [("constant", "ts"), ("constant", "steps"), ("stepto", "steps")],
)
def test_one_step_ending_exactly_at_t1(controller_name, saveat_name):
    """One step whose end equals `t1` exactly without being clipped there (`dt0 = t1 -
    t0`, or `StepTo([t0, t1])`): the step's end and the saved final time are equal but
    depend on the inputs differently at that tie, and each must get its own
    derivative, as in diffrax."""
    term, y0, args, t0, t1, ts, _ = _inputs()
    t1 = jnp.array(0.5)
    inputs = (term, y0, args, t0, t1, ts * 0.25, t1 - t0)
    saveat = SAVEATS["ts"] if saveat_name == "ts" else SAVEATS["steps_t0_t1"]
    if controller_name == "stepto":

        def solve(inputs, adjoint):
            term, y0, args, t0, t1, ts, _ = inputs
            return diffrax.diffeqsolve(
                term,
                SOLVERS[0],
                t0,
                t1,
                None,
                y0,
                args=args,
                saveat=saveat(ts),
                stepsize_controller=diffrax.StepTo(jnp.stack([t0, t1])),
                adjoint=adjoint,
            )
    else:
        solve = lambda inputs, adjoint: _solve(
            inputs, adjoint, SOLVERS[0], "constant", saveat
        )
    grad = lambda adjoint: eqx.filter_jit(
        eqx.filter_grad(
            lambda inputs: (
                readout(solve(inputs, adjoint).ys)
                + 0.3 * readout(solve(inputs, adjoint).ts)
            )
        )
    )(inputs)
    want = grad(diffrax.RecursiveCheckpointAdjoint())
    got = grad(ra.ReversibleAdjoint())
    assert max_relative_error(got, want) < RTOL
    assert_nonzero((want[3], want[4]))


def test_pid_has_rejected_steps():
    inputs = _inputs(0.3)
    sol = _solve(
        inputs,
        ra.ReversibleAdjoint(),
        SOLVERS[0],
        "pid",
        lambda ts: diffrax.SaveAt(t1=True),
    )
    assert sol.stats["num_rejected_steps"] > 0
    assert sol.stats["num_accepted_steps"] > 10


SAVEATS = {
    "t0_t1": lambda ts: diffrax.SaveAt(t0=True, t1=True),
    "ts": lambda ts: diffrax.SaveAt(ts=ts),
    "steps_t0_t1": lambda ts: diffrax.SaveAt(t0=True, t1=True, steps=True),
    "steps_3_t1": lambda ts: diffrax.SaveAt(steps=3, t1=True),
    "ts_and_steps": lambda ts: diffrax.SaveAt(t0=True, ts=ts[1:-1], steps=2, t1=True),
    "fn": lambda ts: diffrax.SaveAt(
        ts=ts, t1=True, fn=lambda t, y, args: jnp.cos(t) * y["x"] * args[0]
    ),
    "subs": lambda ts: diffrax.SaveAt(
        subs=[
            diffrax.SubSaveAt(ts=ts[::2], fn=lambda t, y, args: y["v"] ** 2),
            diffrax.SubSaveAt(t0=True, steps=True, fn=lambda t, y, args: t * y["x"]),
            diffrax.SubSaveAt(ts=ts[1::2], t1=True),
        ]
    ),
}


# Every `SaveAt` with constant steps; with adaptive steps those whose layout depends on
# the number of accepted steps.
@pytest.mark.parametrize(
    "saveat_name, controller_name",
    [(name, "constant") for name in SAVEATS]
    + [(name, "pid") for name in ("steps_3_t1", "subs")],
)
def test_saveat(saveat_name, controller_name):
    _check(controller_name, SAVEATS[saveat_name])


def test_saveat_fn_module_parameters():
    """Arrays inside `SaveAt(fn=...)` (here an `eqx.Module`) get gradients too."""

    class Readout(eqx.Module):
        w: jax.Array

        def __call__(self, t, y, args):
            return self.w * y["x"] + t

    def grad(adjoint, w):
        @eqx.filter_jit
        @eqx.filter_grad
        def _grad(w):
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

        return _grad(w)

    w = jnp.array([0.5, -1.5])
    want = grad(diffrax.RecursiveCheckpointAdjoint(), w)
    assert_nonzero(want)
    assert max_relative_error(grad(ra.ReversibleAdjoint(), w), want) < RTOL


@pytest.mark.parametrize("controller_name", ["constant", "pid"])
def test_backwards_in_time(controller_name):
    """`t1 < t0`: diffrax flips time; gradients of the flipped solve must still
    agree."""
    term, y0, args, _, _, _, _ = _inputs()
    ts = jnp.array([2.0, 1.6, 0.9, 0.2])
    dt0 = -0.05 if controller_name == "constant" else -0.3
    inputs = (term, y0, args, jnp.array(2.0), jnp.array(0.0), ts, jnp.array(dt0))
    _check(controller_name, lambda ts: diffrax.SaveAt(ts=ts, t1=True), inputs=inputs)


def test_solver_state_output():
    """`SaveAt(solver_state=True)` exposes the final `(ŷ, v)`; its cotangent is pulled
    back too."""

    def grad(adjoint):
        @eqx.filter_jit
        @eqx.filter_grad
        def _grad(inputs):
            term, y0, args, t0, t1 = inputs
            sol = diffrax.diffeqsolve(
                term,
                ra.ReversibleHeun(),
                t0,
                t1,
                0.05,
                y0,
                args=args,
                saveat=diffrax.SaveAt(t1=True, solver_state=True),
                adjoint=adjoint,
            )
            return readout(sol.ys) + readout(sol.solver_state)

        term, y0, args = make_problem()
        return _grad((term, y0, args, jnp.array(0.0), jnp.array(2.0)))

    want = grad(diffrax.RecursiveCheckpointAdjoint())
    assert_nonzero(want)
    assert max_relative_error(grad(ra.ReversibleAdjoint()), want) < RTOL


def test_t0_equals_t1():
    """No steps at all: diffrax saves `y0` at every `ts`; gradients still flow."""
    term, y0, args = make_problem()
    inputs = (
        term,
        y0,
        args,
        jnp.array(1.0),
        jnp.array(1.0),
        jnp.array([1.0, 1.0]),
        jnp.array(0.05),
    )
    saveat_fn = lambda ts: diffrax.SaveAt(
        t0=True, ts=ts, t1=True, fn=lambda t, y, args: t * y["x"]
    )
    _check("constant", saveat_fn, inputs=inputs)


def test_float32():
    term, y0, args = make_problem(jnp.float32)
    ts = jnp.array([0.1, 0.7, 1.5], dtype=jnp.float32)
    inputs = (
        term,
        y0,
        args,
        jnp.array(0.0, jnp.float32),
        jnp.array(2.0, jnp.float32),
        ts,
        jnp.array(0.05, jnp.float32),
    )
    saveat_fn = lambda ts: diffrax.SaveAt(ts=ts, t1=True)
    want = _grads(
        diffrax.RecursiveCheckpointAdjoint(), SOLVERS[0], "constant", saveat_fn, inputs
    )
    got = _grads(ra.ReversibleAdjoint(), SOLVERS[0], "constant", saveat_fn, inputs)
    names = ["term", "y0", "args", "t0", "t1", "ts", "dt0"]
    for name, g, w in zip(names, got, want):
        for leaf in jax.tree_util.tree_leaves(g):
            assert leaf.dtype == jnp.float32
        # Float32 round-off. The `dt0` gradient is a sum of cancelling terms along the
        # step grid; there both adjoints are ~2e-4 away from the float64 value.
        assert max_relative_error(g, w) < (2e-3 if name == "dt0" else 1e-5), name


@pytest.mark.parametrize(
    "solver",
    [ra.ReversibleHeun(), ra.LeapfrogMidpoint()],
    ids=["RH", "LM"],
)
def test_step_to_times_not_differentiated(solver):
    """`StepTo` whose times are a constant (or built inside the loss): its times get
    a zero cotangent, as from RCA, rather than a structure mismatch."""
    term, y0, args = make_problem()

    @eqx.filter_grad
    def grad(inputs, adjoint):
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

    want = grad((y0, args), diffrax.RecursiveCheckpointAdjoint())
    got = grad((y0, args), ra.ReversibleAdjoint())
    assert_nonzero(want)
    assert max_relative_error(got, want) < RTOL


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

    def loss(w, adjoint):
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

    w = jnp.array(0.8)
    want = jax.grad(loss)(w, diffrax.RecursiveCheckpointAdjoint())
    got = jax.grad(loss)(w, ra.ReversibleAdjoint())
    assert want != 0 and abs(got - want) < RTOL * abs(want)
