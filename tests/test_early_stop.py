"""Solves that stop early (`max_steps` reached with `throw=False`): the backward pass
reads every saved value's cotangent from the slot the forward pass wrote, and the
buffer layout (`SaveLayout`) agrees with diffrax's own buffers."""

import diffrax
import jax
import jax.numpy as jnp
import pytest

import reversible_adjoint as ra
from reversible_adjoint._save_layout import SaveLayout

from .helpers import check_gradient_parity, make_problem, readout

T0, T1 = 0.0, 2.0
TS = jnp.array([0.0, 0.25, 0.95, 1.4, 2.0])


def _saveats():
    def fn(t, y, args):
        return y["x"] * jnp.cos(t) + args[0]

    return {
        "t0_ts_t1": diffrax.SaveAt(t0=True, ts=TS, t1=True),
        "steps3_t1": diffrax.SaveAt(steps=3, t1=True),
        "ts_steps2_t1": diffrax.SaveAt(ts=TS, steps=2, t1=True),
        "fn_subs": diffrax.SaveAt(
            subs=[
                diffrax.SubSaveAt(ts=TS[1:4], t1=True, fn=fn),
                diffrax.SubSaveAt(t0=True, steps=True),
            ]
        ),
    }


def _controllers():
    return {
        "constant": (diffrax.ConstantStepSize(), 0.1),
        "pid": (diffrax.PIDController(rtol=1e-6, atol=1e-8), 0.5),
    }


def _solve(y0, args, adjoint, saveat, controller, dt0, max_steps, dtype=jnp.float64):
    term, _, _ = make_problem(dtype)
    return diffrax.diffeqsolve(
        term,
        ra.ReversibleHeun(),
        jnp.array(T0, dtype),
        jnp.array(T1, dtype),
        dt0,
        y0,
        args=args,
        saveat=saveat,
        stepsize_controller=controller,
        adjoint=adjoint,
        max_steps=max_steps,
        throw=False,
    )


def _masked(tree):
    """Zeros in the slots a truncated solve never filled (they hold `inf`)."""
    return jax.tree_util.tree_map(lambda x: jnp.where(jnp.isfinite(x), x, 0.0), tree)


def _check(saveat, controller, dt0, max_steps, rtol, dtype=jnp.float64, **kwargs):
    """`check_gradient_parity` with respect to `y0` and `args`, of a loss of the
    values and times saved, where they were saved."""
    _, y0, args = make_problem(dtype)

    def loss(inputs, adjoint):
        sol = _solve(*inputs, adjoint, saveat, controller, dt0, max_steps, dtype)
        return readout(_masked(sol.ys)) + 0.3 * readout(_masked(sol.ts))

    return check_gradient_parity(loss, (y0, args), rtol=rtol, **kwargs)


@pytest.mark.parametrize(
    "saveat, controller",
    [
        ("t0_ts_t1", "constant"),
        ("t0_ts_t1", "pid"),
        ("steps3_t1", "constant"),
        ("ts_steps2_t1", "pid"),
        ("fn_subs", "constant"),
    ],
)
def test_truncated_solve_gradients(saveat, controller):
    controller, dt0 = _controllers()[controller]
    saveat = _saveats()[saveat]
    _, y0, args = make_problem()
    sol = _solve(
        y0, args, diffrax.RecursiveCheckpointAdjoint(), saveat, controller, dt0, 7
    )
    assert sol.result == diffrax.RESULTS.max_steps_reached
    _check(saveat, controller, dt0, 7, rtol=1e-10, nonzero=[0, 1])


def test_truncated_unmasked_loss_is_finite():
    """The value at `t1` lands right after the `ts` values actually saved. A loss
    that reads the unfilled slots (`inf`) only through `jnp.where` gets no gradient
    from them, from RCA or from us."""
    saveat = diffrax.SaveAt(t0=True, ts=jnp.array([0.25, 0.95]), t1=True)
    term = diffrax.ODETerm(lambda t, y, args: -0.5 * y + jnp.cos(t))

    def loss(y0, adjoint):
        sol = diffrax.diffeqsolve(
            term,
            ra.ReversibleHeun(),
            0.0,
            1.0,
            0.1,
            y0,
            saveat=saveat,
            max_steps=5,
            throw=False,
            adjoint=adjoint,
        )
        assert sol.ys.shape == (4,)
        return jnp.sum(jnp.where(jnp.isfinite(sol.ys), sol.ys, 0.0) ** 2)

    sol = diffrax.diffeqsolve(
        term,
        ra.ReversibleHeun(),
        0.0,
        1.0,
        0.1,
        1.0,
        saveat=saveat,
        max_steps=5,
        throw=False,
    )
    assert jnp.isinf(sol.ys[3]) and jnp.isfinite(sol.ys[2])  # `t1` went to slot 2.
    _, (want,) = check_gradient_parity(
        lambda inputs, adjoint: loss(*inputs, adjoint),
        (jnp.array(1.0),),
        rtol=1e-12,
        nonzero=[0],
    )
    assert jnp.isfinite(want)


def test_no_accepted_step():
    """Every step rejected before `max_steps`: nothing but `t0` (and the end, which
    is `t0`) is saved, even a save time equal to `t0`."""
    controller = diffrax.PIDController(rtol=1e-12, atol=1e-12)
    saveat = diffrax.SaveAt(t0=True, ts=TS, t1=True)
    _, y0, args = make_problem()
    sol = _solve(
        y0, args, diffrax.RecursiveCheckpointAdjoint(), saveat, controller, 1.5, 2
    )
    assert int(sol.stats["num_accepted_steps"]) == 0
    # `y0`; no step evaluated the vector field, so not `args`.
    _check(saveat, controller, 1.5, 2, rtol=1e-12, nonzero=[0])


def test_truncated_float32():
    controller, dt0 = _controllers()["pid"]
    saveat = _saveats()["t0_ts_t1"]
    _check(saveat, controller, dt0, 7, rtol=1e-4, dtype=jnp.float32, nonzero=[0, 1])


def _step_ends(controller, dt0, max_steps, t1):
    term, y0, args = make_problem()
    sol = diffrax.diffeqsolve(
        term,
        ra.ReversibleHeun(),
        T0,
        t1,
        dt0,
        y0,
        args=args,
        saveat=diffrax.SaveAt(steps=True),
        stepsize_controller=controller,
        max_steps=max_steps,
        throw=False,
    )
    n = int(sol.stats["num_accepted_steps"])
    return sol.ts[:n], n


# (t0, steps, t1) flags of the `SaveAt`.
# `steps=2` and `3` as every n-th step: not in diffrax 0.7.0 (`int_steps`).
FLAGS = [
    (True, 0, True),
    pytest.param((False, 2, True), marks=pytest.mark.int_steps),
    pytest.param((True, 3, True), marks=pytest.mark.int_steps),
    (False, 1, False),
]


@pytest.mark.parametrize("max_steps", [2, 7])
@pytest.mark.parametrize("flags", FLAGS)
def test_layout_matches_diffrax_buffers(flags, max_steps):
    """Every slot `SaveLayout` names holds the time diffrax saved there."""
    t0_flag, steps, t1_flag = flags
    controller, dt0 = _controllers()["pid"]
    ends, num_accepted = _step_ends(controller, dt0, max_steps, T1)
    term, y0, args = make_problem()
    sol = diffrax.diffeqsolve(
        term,
        ra.ReversibleHeun(),
        T0,
        T1,
        dt0,
        y0,
        args=args,
        saveat=diffrax.SaveAt(t0=t0_flag, ts=TS, steps=steps, t1=t1_flag),
        stepsize_controller=controller,
        max_steps=max_steps,
        throw=False,
    )
    layout = SaveLayout(ts=TS, t0=t0_flag, t1=t1_flag, steps=steps)
    filled = set()
    if t0_flag:
        assert sol.ts[0] == T0
        filled.add(0)
    starts = jnp.concatenate([jnp.array([T0]), ends[:-1]])
    for k in range(num_accepted):
        lo = int(layout.ts_saved(k, starts[k]))
        hi = int(layout.ts_saved(k + 1, ends[k]))
        for i in range(lo, hi):
            index = int(layout.ts_index(k, i))
            assert sol.ts[index] == TS[i]
            filled.add(index)
        if steps and bool(layout.steps_due(k)):
            index = int(layout.steps_index(k, ends[k]))
            assert sol.ts[index] == ends[k]
            filled.add(index)
    t_final = ends[-1] if num_accepted else T0
    if bool(layout.t1_due(num_accepted)):
        index = int(layout.t1_index(num_accepted, t_final, False))
        assert sol.ts[index] == t_final
        filled.add(index)
    # Every other slot was never written.
    for index in range(len(sol.ts)):
        if index not in filled:
            assert sol.ts[index] == jnp.inf, index


def test_layout_t0_equals_t1():
    term, y0, args = make_problem()
    ts = jnp.array([1.0, 1.0, 1.0])
    sol = diffrax.diffeqsolve(
        term,
        ra.ReversibleHeun(),
        1.0,
        1.0,
        0.1,
        y0,
        args=args,
        saveat=diffrax.SaveAt(t0=True, ts=ts, t1=True),
    )
    layout = SaveLayout(ts=ts, t0=True, t1=True, steps=0)
    assert list(range(len(sol.ts)))[layout.repeated_at_t0()] == [1, 2, 3]
    assert int(layout.t1_index(0, 1.0, True)) == 4 == len(sol.ts) - 1


@pytest.mark.parametrize("checkpoint_every", [None, 2])
def test_truncated_step_to_grid(checkpoint_every):
    """`StepTo` stopped by `max_steps` before the end of its grid, with the grid
    differentiated: the time the solve stopped at is a grid point (saved at `t1`),
    and it, the grid points before it and the values saved there have the gradients
    `RecursiveCheckpointAdjoint` gives; the grid points after it, none. (Recorded or
    recomputed grid.)"""
    term, y0, args = make_problem()
    grid = jnp.linspace(T0, T1, 11) ** 1.2

    def loss(inputs, adjoint):
        grid, y0, args = inputs
        sol = diffrax.diffeqsolve(
            term,
            ra.ReversibleHeun(),
            grid[0],
            grid[-1],
            None,
            y0,
            args,
            stepsize_controller=diffrax.StepTo(grid),
            saveat=diffrax.SaveAt(ts=grid[1:3], t1=True),
            adjoint=adjoint,
            max_steps=5,
            throw=False,
        )
        return readout(sol.ys) + jnp.sum(sol.ts**2)

    check_gradient_parity(
        loss,
        (grid, y0, args),
        adjoint=ra.ReversibleAdjoint(checkpoint_every=checkpoint_every),
        names=("grid", "y0", "args"),
        nonzero=("grid", "y0", "args"),
    )
