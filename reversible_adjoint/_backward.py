"""The backward pass of `ReversibleAdjoint`, in named stages.

`backward` runs them in order:

1. `_pull_back_end`: the cotangents of the final state, and of the values saved at the
   end of the solve (`SaveAt(t1=True)`, the last step's `SaveAt(steps=...)` value).
   With an event, what diffrax does after the loop is outside the custom VJP
   (`_event.py`), and sends cotangents of the last step's times and dense output
   instead (`_EventCotangents`; the dense output's join that step's pullback).
2. A `lax.while_loop` over the accepted steps, last to first, in stretches
   (`_stretch_back`): from checkpoint to checkpoint (each restarts from its
   checkpoint), or, without checkpoints, one stretch of every step. The step times
   are read from the forward pass's record, or computed (`PredictedRecord`). Each
   step (`_step_back`)
   1. calls the solver's `AdjointTerm`: reconstruct the step's inputs with the exact
      inverse, and get the step's pullback;
   2. pulls back the `SaveAt(steps=...)` value saved at the step's start, i.e. at the
      end of the previous step (if any), which needs the reconstructed `y0`
      (`_pull_back_step_saves`);
   3. pulls back every `SaveAt(ts=...)` value inside the step through the solver's
      dense interpolation, which yields the cotangent of the dense output and of each
      save time, emitted into the `ts` cotangent once, as the loop crosses that step
      (`_pull_back_snapshots`);
   4. applies the step's pullback, accumulates the cotangents of `args` and of the
      terms, and turns the cotangents of the step's two times into cotangents of the
      time inputs through the recorded tangents (`TimeCotangent`).
3. `_pull_back_start`: the values saved at `t0`.
4. `_input_cotangents`: everything gathered, as cotangents of the custom VJP's inputs;
   then the drift check.

Where each saved value sits in its `SubSaveAt`'s buffer is `SaveLayout`'s business
(`_save_layout.py`). What does not depend on the loop (`solver.init`,
`stepsize_controller.init`, the time direction, ...) is outside the custom VJP, so JAX
differentiates it as usual.
"""

import dataclasses
import functools as ft
from typing import Any

import equinox as eqx
import equinox.internal as eqxi
import jax.lax as lax
import jax.numpy as jnp
import jax.tree_util as jtu
from jaxtyping import Array, PyTree

from ._adjoint_term import AdjointTerm, Differentiate
from ._cotangents import (
    add,
    entry,
    filter_vjp,
    mask,
    materialise,
    or_zero,
    zeros_like_inexact,
)
from ._diffrax_internals import SaveState
from ._drift import DriftRecord, check_drift, largest_magnitude, narrowest_dtype
from ._save_layout import SaveLayout
from ._step_record import PredictedRecord, recording_controller
from ._time_tangents import TimeCotangent

_REVERSE_OVER_REVERSE = (
    "`ReversibleAdjoint`'s backward pass cannot itself be differentiated in reverse "
    "mode (`jax.grad` of `jax.grad`): it is a `lax.while_loop` over a number of steps "
    "known only at run time (as is `diffrax.RecursiveCheckpointAdjoint`'s). Use "
    "forward-over-reverse instead: `jax.hessian`, `jax.jacfwd(jax.grad(...))`, or "
    "Hessian-vector products as `jax.jvp(jax.grad(f), (x,), (v,))`."
)


class Residuals(eqx.Module):
    """What the forward pass keeps for the backward pass: the final `y` and solver
    state, the step record (`StepRecord` or `PredictedRecord`), the tangents of the
    final `(tprev, tnext, controller state)` (`None` if no time input is
    differentiated),
    the tangent of `t1`, the checkpoints (or `None`), and with an event, the end of
    the last step as the loop left it (`event_tnext`; `None` without an event)."""

    y: PyTree
    solver_state: PyTree
    record: Any
    final_tangents: Any
    t1_tangent: Array
    checkpoints: Any
    event_tnext: Array | None = None


class Sub(eqx.Module):
    """One `SubSaveAt`, seen by the backward pass: its buffer layout, its `fn`, the
    cotangents of its saved values and times, and whether its `ts` are
    differentiated."""

    layout: SaveLayout
    fn: Any
    ct_ts: Any
    ct_ys: Any
    ts_perturbed: bool = eqx.field(static=True)


class SubCotangent(eqx.Module):
    """The cotangents accumulated for one `SubSaveAt`: of its `ts`, and of the arrays
    in its `fn`."""

    ts: Any
    fn: Any

    def add(self, ct_fn=None, index=None, ct_t=None):
        """Adds `ct_fn` to the cotangent of `fn`, and `ct_t` to that of `ts[index]`."""
        ts, fn = self.ts, self.fn
        if ct_fn is not None:
            fn = add(fn, ct_fn)
        if index is not None:
            ts = ts.at[index].add(ct_t)
        return SubCotangent(ts, fn)


def _replace(items, j, item):
    return items[:j] + [item] + items[j + 1 :]


class _Context(eqx.Module):
    """What every stage of one backward pass reads, and none changes.

    - `terms`, `args`: as solved.
    - `differentiate`: which leaves of `args` and of `terms` are differentiated (those
        the caller perturbs; a `Differentiate`). The cotangents of the others are
        `None` throughout.
    - `adjoint_term`: undoes one step (the solver's `AdjointTerm`, differentiating
        the same).
    - `interpolation_cls`: the solver's dense interpolation.
    - `subs`: each `SubSaveAt` (`Sub`).
    - `with_time`: whether to differentiate with respect to the step times (only if
        some time input is differentiated: it costs time, and an SDE's Brownian motion
        cannot be differentiated with respect to time at all).
    - `with_dense`: whether some `SubSaveAt` saves `ts` (read from the dense output).
    - `num_accepted`: the number of accepted steps.
    - `zero_time`: a zero of the dtype of time cotangents.
    - `t0_equals_t1`: whether the solve took no step because `t0 == t1`.
    - `step_to_ts`: the times of `StepTo(ts=...)` if they are differentiated, else
        `None`.
    - `record`, `checkpoints`: the step times (`StepRecord`, or `PredictedRecord`
        able to compute them), the stored states (or `None`).
    - `every`: the length of a stretch.
    - `event_dense`: with an event and a root finder, the cotangent of the last
        step's dense output, from the root find after the loop (`_event.py`); else
        `None`.
    """

    terms: PyTree
    args: PyTree
    differentiate: Differentiate
    adjoint_term: AdjointTerm
    interpolation_cls: Any = eqx.field(static=True)
    subs: list
    with_time: bool = eqx.field(static=True)
    with_dense: bool = eqx.field(static=True)
    num_accepted: Array
    zero_time: Array
    t0_equals_t1: Array
    step_to_ts: Array | None
    record: Any
    checkpoints: Any
    every: Array
    event_dense: PyTree | None = None

    def zero_args(self):
        """A zero cotangent of `args`."""
        return zeros_like_inexact(eqx.filter(self.args, self.differentiate.args))

    def add_time(self, a_time: TimeCotangent, ct_t, k, times) -> TimeCotangent:
        """Adds the cotangent `ct_t` of the accepted time `times.time(k)`."""
        return a_time.add(ct_t, k, times, self.step_to_ts)


class _BackwardCarry(eqx.Module):
    """The state of the backward loop before undoing accepted step `k`: the state
    after it (`y`, `solver_state`); the cotangents of `y`, of the solver state, of
    `args`, of the terms, of the time inputs (`TimeCotangent`) and of each
    `SubSaveAt` (`SubCotangent`) gathered so far; what the `AdjointTerm` carries from
    one step to the next; and the drift record (`None` if not checked)."""

    k: Array
    y: PyTree
    solver_state: PyTree
    a_y: PyTree
    a_state: PyTree
    a_args: PyTree
    a_terms: PyTree
    a_time: TimeCotangent
    a_subs: list
    term_carry: Any
    drift: DriftRecord | None


def _save_pullback(ctx: "_Context", fn, t, y, ct, with_time):
    """Cotangents of `(t, y, args, fn)`, given the cotangent `ct` of `fn(t, y, args)`
    (`None` for `t` unless `with_time`, and for what is not differentiated in
    `args`)."""
    _, pullback = filter_vjp(
        lambda _t, _y, _a, _f: _f(_t, _y, _a),
        (t, y, ctx.args, fn),
        (with_time, True, ctx.differentiate.args, True),
    )
    return pullback(ct)


#
# Saved values.
#


def _pull_back_step_saves(ctx: _Context, j, t_j1, y_j1, a_subs):
    """`SaveAt(steps=n)`: cotangents from the value saved at the end of step `j`
    (at `t_j1`, equal to `y_j1`), if it was saved; none for `j = -1`. Returns those
    of `(y_j1, t_j1, args)`, and `a_subs` with those of `fn` added."""
    c_y = zeros_like_inexact(y_j1)
    c_t = ctx.zero_time
    c_args = ctx.zero_args()
    for i, sub in enumerate(ctx.subs):
        if sub.layout.steps == 0:
            continue
        due = sub.layout.steps_due(j)
        index = sub.layout.steps_index(j, t_j1)
        ct = mask(entry(sub.ct_ys, index), due)
        s_t, s_y, s_args, s_fn = _save_pullback(
            ctx, sub.fn, t_j1, y_j1, ct, ctx.with_time
        )
        c_y = add(c_y, s_y)
        c_t = c_t + or_zero(s_t, ctx.zero_time) + jnp.where(due, sub.ct_ts[index], 0)
        c_args = add(c_args, s_args)
        a_subs = _replace(a_subs, i, a_subs[i].add(ct_fn=s_fn))
    return c_y, c_t, c_args, a_subs


def _snapshot(interpolation_cls, t, t_k, t_k1, dense_info, args, fn):
    interpolation = interpolation_cls(t0=t_k, t1=t_k1, **dense_info)
    return fn(t, interpolation.evaluate(t), args)


def _pull_back_snapshots(ctx: _Context, k, t_k, t_k1, dense_info, a_args, a_subs):
    """Cotangents of the dense output and of the step's times from every
    `SaveAt(ts=...)` value inside step `k`; the cotangents of the save times
    themselves go straight into the `ts` cotangent. Returns those of the dense output,
    `t_k` and `t_k1`, and `a_args` and `a_subs` with the others added."""
    ct_dense = zeros_like_inexact(dense_info)
    a_t_k = a_t_k1 = ctx.zero_time
    snapshot = ft.partial(_snapshot, ctx.interpolation_cls)
    for j, sub in enumerate(ctx.subs):
        layout = sub.layout
        if layout.ts is None:
            continue
        lo = layout.ts_saved(k, t_k)
        hi = layout.ts_saved(k + 1, t_k1)

        def body(c, sub=sub):
            i, ct_dense, a_t_k, a_t_k1, a_args, a_sub = c
            index = sub.layout.ts_index(k, i)
            with_time = ctx.with_time
            _, pullback = filter_vjp(
                snapshot,
                (sub.layout.ts[i], t_k, t_k1, dense_info, ctx.args, sub.fn),
                (
                    sub.ts_perturbed,
                    with_time,
                    with_time,
                    True,
                    ctx.differentiate.args,
                    True,
                ),
            )
            c_t, c_tk, c_tk1, c_dense, c_args, c_fn = pullback(entry(sub.ct_ys, index))
            ct_t = or_zero(c_t, ctx.zero_time) + sub.ct_ts[index]
            return (
                i + 1,
                add(ct_dense, c_dense),
                a_t_k + or_zero(c_tk, ctx.zero_time),
                a_t_k1 + or_zero(c_tk1, ctx.zero_time),
                add(a_args, c_args),
                a_sub.add(ct_fn=c_fn, index=i, ct_t=ct_t),
            )

        init = (lo, ct_dense, a_t_k, a_t_k1, a_args, a_subs[j])
        c = lax.while_loop(lambda c, hi=hi: c[0] < hi, body, init)
        _, ct_dense, a_t_k, a_t_k1, a_args, a_sub = c
        a_subs = _replace(a_subs, j, a_sub)
    return ct_dense, a_t_k, a_t_k1, a_args, a_subs


class _EventCotangents(eqx.Module):
    """With an event, the cotangents of the start (`tprev`) and end (`tnext`) of the
    loop's last step and of its dense output (`dense`; `None` if nothing after the
    loop uses it, as without a root finder), from what diffrax does after the loop
    (`_event.py`); and whether they come from a rejected step (`rejected`), which
    the backward pass does not reconstruct."""

    tprev: Array
    tnext: Array
    dense: PyTree | None
    rejected: Array


def _event_cotangents(grad_state, residuals, times, dense_like, zero):
    """The `_EventCotangents` in the cotangent `grad_state` of the loop's final
    state.

    The loop's last step is the last accepted one, except when its last iteration
    was a rejected step: only when it stopped without an event (on `max_steps`, or a
    failure, with `throw=False`), and the root find uses it only under `jax.vmap`
    when another solve of the batch had an event. The backward pass does not
    reconstruct rejected steps: `backward` then makes every cotangent NaN rather
    than wrong."""
    tprev = or_zero(grad_state.event_tprev, zero)
    tnext = or_zero(grad_state.event_tnext, zero)
    dense = grad_state.event_dense_info
    dense = materialise(dense, dense_like) if jtu.tree_leaves(dense) else None
    rejected = residuals.event_tnext != times.time(residuals.record.num_accepted)
    used = (tprev != 0) | (tnext != 0)
    for x in jtu.tree_leaves(dense):
        used = used | jnp.any(x != 0)
    return _EventCotangents(tprev, tnext, dense, rejected & used)


#
# The stages.
#


def _pull_back_end(ctx, grad_state, residuals, times, controller_state, drift, event):
    """The carry of the backward loop before its first step: the cotangents of the
    final state (`grad_state`), of the values saved at the end of the solve, of the
    last step's last evaluation if the `AdjointTerm` settles it there, and of the last
    step's times from an event (`event`, `_EventCotangents`, or `None`)."""
    zero = ctx.zero_time
    num_accepted = ctx.num_accepted
    y_final, state_final = residuals.y, residuals.solver_state
    a_subs = [
        SubCotangent(zeros_like_inexact(sub.layout.ts), zeros_like_inexact(sub.fn))
        for sub in ctx.subs
    ]
    t_final = times.time(num_accepted)
    a_y = materialise(grad_state.y, y_final)
    a_state = materialise(grad_state.solver_state, state_final)
    a_args = ctx.zero_args()
    a_terms = zeros_like_inexact(eqx.filter(ctx.terms, ctx.differentiate.terms))
    # `a_t_final`: the cotangent of the final time as the loop saved it (clipped to
    # `t1`); see `_step_record.py`.
    a_t_final = or_zero(grad_state.tprev, zero)
    # `SaveAt(t1=True)`.
    for j, sub in enumerate(ctx.subs):
        saved = sub.layout.t1_due(num_accepted)
        if saved is False:
            continue  # Not saved, or always saved as the last step's `steps` value.
        index = sub.layout.t1_index(num_accepted, t_final, ctx.t0_equals_t1)
        ct = mask(entry(sub.ct_ys, index), saved)
        c_t, c_y, c_args, c_fn = _save_pullback(
            ctx, sub.fn, t_final, y_final, ct, ctx.with_time
        )
        a_y = add(a_y, c_y)
        a_t_final = a_t_final + or_zero(c_t, zero)
        a_t_final = a_t_final + jnp.where(saved, sub.ct_ts[index], 0)
        a_args = add(a_args, c_args)
        a_subs = _replace(a_subs, j, a_subs[j].add(ct_fn=c_fn))
    # `SaveAt(steps=n)`: the value at the end of the last step, if it was saved.
    c_y, c_t, c_args, a_subs = _pull_back_step_saves(
        ctx, num_accepted - 1, t_final, y_final, a_subs
    )
    a_y = add(a_y, c_y)
    a_t_final = a_t_final + c_t
    a_args = add(a_args, c_args)
    term_carry, settled = ctx.adjoint_term.init(
        ctx.terms,
        times.time(jnp.maximum(num_accepted - 1, 0)),
        t_final,
        y_final,
        ctx.args,
        state_final,
        a_y,
        a_state,
        with_dense=ctx.with_dense,
        active=num_accepted > 0,
    )
    # The end of the last step as the step used it.
    a_t_step_end = zero
    if settled.solver_state is not None:  # The last step's last evaluation.
        a_state = add(a_state, settled.solver_state)
        a_args = add(a_args, settled.args)
        a_terms = add(a_terms, settled.terms)
        if ctx.with_time:
            a_t_step_end = or_zero(settled.t1, zero)
    a_time = TimeCotangent(
        jnp.zeros_like(residuals.t1_tangent),
        None if ctx.step_to_ts is None else jnp.zeros_like(ctx.step_to_ts),
    )
    if event is not None:
        a_t_step_end = a_t_step_end + event.tnext
    a_time = ctx.add_time(a_time, a_t_step_end, num_accepted, times)
    if event is not None:
        last_start = jnp.maximum(num_accepted - 1, 0)
        a_time = ctx.add_time(a_time, event.tprev, last_start, times)
    if residuals.final_tangents is None:
        a_time = ctx.add_time(a_time, a_t_final, num_accepted, times)
    else:
        a_time = a_time.add_final_state(
            residuals.final_tangents,
            a_t_final,
            or_zero(grad_state.tnext, zero),
            materialise(grad_state.controller_state, controller_state),
        )
        if ctx.step_to_ts is not None:
            # The final `tprev` is a point of the `StepTo` grid too if the solve
            # stopped before its end.
            a_time = a_time.add_grid(a_t_final, num_accepted, times, ctx.step_to_ts)
    return _BackwardCarry(
        k=num_accepted - 1,
        y=y_final,
        solver_state=state_final,
        a_y=a_y,
        a_state=a_state,
        a_args=a_args,
        a_terms=a_terms,
        a_time=a_time,
        a_subs=a_subs,
        term_carry=term_carry,
        drift=drift,
    )


def _step_back(ctx: _Context, carry: _BackwardCarry) -> _BackwardCarry:
    """Undoes accepted step `carry.k` and pulls the cotangents back through it."""
    k = carry.k
    times = ctx.record
    # Under `vmap`, also run for elements already done (`k < 0`), whose result is
    # discarded: as a step of length zero at `t_0`, so that a Brownian path is
    # queried inside its range (`VirtualBrownianTree` raises outside it).
    t_k = times.time(jnp.maximum(k, 0))
    t_k1 = jnp.where(k < 0, t_k, times.time(k + 1))
    step = ctx.adjoint_term(
        ctx.terms,
        t_k,
        t_k1,
        carry.y,
        ctx.args,
        carry.solver_state,
        carry.term_carry,
        with_dense=ctx.with_dense,
        with_time=ctx.with_time,
        t_previous=times.time(jnp.maximum(k - 1, 0)),
        is_first=k == 0,
    )
    y0, state0 = step.y0, step.solver_state0
    # The value at the end of the previous step (`SaveAt(steps=n)`), if saved.
    c_y0, a_t_k, c_args, a_subs = _pull_back_step_saves(
        ctx, k - 1, t_k, y0, carry.a_subs
    )
    a_args = add(carry.a_args, c_args)
    a_t_k1 = ctx.zero_time
    ct_dense = None
    if ctx.with_dense:
        ct_dense, s_t_k, s_t_k1, a_args, a_subs = _pull_back_snapshots(
            ctx, k, t_k, t_k1, step.dense_info, a_args, a_subs
        )
        a_t_k = a_t_k + s_t_k
        a_t_k1 = a_t_k1 + s_t_k1
        if ctx.event_dense is not None:
            last = k == ctx.num_accepted - 1
            ct_dense = add(ct_dense, mask(ctx.event_dense, last))
    cts = step.pullback(carry.a_y, carry.a_state, ct_dense, c_y0)
    a_t_k = a_t_k + or_zero(cts.t0, ctx.zero_time)
    a_t_k1 = a_t_k1 + or_zero(cts.t1, ctx.zero_time)
    a_time = ctx.add_time(carry.a_time, a_t_k, k, times)
    a_time = ctx.add_time(a_time, a_t_k1, k + 1, times)
    return dataclasses.replace(
        carry,
        k=k - 1,
        y=y0,
        solver_state=state0,
        a_y=materialise(cts.y0, y0),
        a_state=materialise(cts.solver_state0, state0),
        a_args=add(a_args, cts.args),
        a_terms=add(carry.a_terms, cts.terms),
        a_time=a_time,
        a_subs=a_subs,
        term_carry=step.carry,
    )


def _stretch_back(ctx: _Context, carry: _BackwardCarry) -> _BackwardCarry:
    """Undoes the steps of stretch `carry.k // every`, last to first."""
    # (Under `vmap`, also run for elements already done, with `k = -1`.)
    stretch = jnp.maximum(carry.k, 0) // ctx.every
    y, state, drift = carry.y, carry.solver_state, carry.drift
    if ctx.checkpoints is not None:
        # Unless this stretch ends the solve, it ends at a checkpoint: measure the
        # drift of the reconstruction so far, and carry on from the stored state.
        restart = carry.k + 1 < ctx.num_accepted
        stored = ctx.checkpoints.read(stretch)
        if drift is not None:
            measured = drift.measure((y, state), stored, restart=carry.k + 1)
            drift = jtu.tree_map(ft.partial(jnp.where, restart), measured, drift)
        y, state = jtu.tree_map(ft.partial(jnp.where, restart), stored, (y, state))
    carry = dataclasses.replace(carry, y=y, solver_state=state, drift=drift)
    start = stretch * ctx.every
    return lax.while_loop(lambda c: c.k >= start, ft.partial(_step_back, ctx), carry)


def _pull_back_start(ctx: _Context, carry: _BackwardCarry, y0, t0, t0_perturbed):
    """Pulls back the values saved at the start: `SaveAt(t0=True)`, and
    `SaveAt(ts=...)` when `t0 == t1` (no steps: diffrax then saves `fn(t0, y0, args)`
    for every entry). Returns the cotangents of `y0` and `t0`, and those of `args` and
    of each `SubSaveAt` with theirs added."""
    a_y, a_args, a_subs = carry.a_y, carry.a_args, carry.a_subs
    a_t0 = ctx.zero_time
    for j, sub in enumerate(ctx.subs):
        ct = None
        ct_time = ctx.zero_time
        if sub.layout.t0:
            ct = entry(sub.ct_ys, 0)
            ct_time = sub.ct_ts[0]
        if sub.layout.ts is not None and sub.layout.at_end:
            window = sub.layout.repeated_at_t0()
            repeated = jtu.tree_map(lambda c: jnp.sum(c[window], axis=0), sub.ct_ys)
            repeated = mask(repeated, ctx.t0_equals_t1)
            ct = repeated if ct is None else add(ct, repeated)
            ct_time = ct_time + jnp.where(
                ctx.t0_equals_t1, jnp.sum(sub.ct_ts[window]), 0
            )
        if ct is None:
            continue
        c_t, c_y, c_args, c_fn = _save_pullback(ctx, sub.fn, t0, y0, ct, t0_perturbed)
        a_y = add(a_y, c_y)
        a_t0 = a_t0 + or_zero(c_t, ctx.zero_time) + ct_time
        a_args = add(a_args, c_args)
        a_subs = _replace(a_subs, j, a_subs[j].add(ct_fn=c_fn))
    return a_y, a_t0, a_args, a_subs


def _input_cotangents(inputs, perturbed, carry, a_y, a_t0, a_args, a_subs) -> dict:
    """The cotangents of the custom VJP's `inputs`, from what the stages gathered."""
    ct_tprev, ct_tnext, ct_controller_state, ct_t1 = carry.a_time.split(
        inputs, perturbed
    )
    ct_subs = [
        eqx.tree_at(
            lambda s: (s.ts, s.fn),
            zeros_like_inexact(sub),
            (a_sub.ts, a_sub.fn),
            is_leaf=lambda x: x is None,
        )
        for sub, a_sub in zip(inputs["subs"], a_subs)
    ]
    t0 = inputs["t0"]
    step_to = inputs["step_to"]
    if step_to is None:
        ct_step_to = None
    else:
        # `a_time.grid` for its times if they were differentiated, zeros for its
        # other inexact leaves (and for its times otherwise).
        ct_step_to = zeros_like_inexact(step_to)
        if carry.a_time.grid is not None:
            ct_step_to = eqx.tree_at(lambda c: c.ts, ct_step_to, carry.a_time.grid)
    return dict(
        y0=a_y,
        solver_state=carry.a_state,
        tprev=ct_tprev,
        tnext=ct_tnext,
        controller_state=ct_controller_state,
        t0=a_t0.astype(jnp.result_type(t0)) if eqx.is_inexact_array(t0) else None,
        t1=ct_t1,
        args=a_args,
        terms=carry.a_terms,
        subs=ct_subs,
        step_to=ct_step_to,
    )


def _subs(inputs, perturbed, save_state_like, grad_state, at_end):
    """Each `SubSaveAt` as the backward pass sees it (`Sub`); `at_end`: whether its
    buffer holds the values saved after the loop (`SaveLayout`)."""
    is_save_state = lambda x: isinstance(x, SaveState)
    save_like = jtu.tree_leaves(save_state_like, is_leaf=is_save_state)
    save_ct = jtu.tree_leaves(grad_state.save_state, is_leaf=is_save_state)
    return [
        Sub(
            layout=SaveLayout.of(sub, at_end),
            fn=sub.fn,
            ct_ts=materialise(ct.ts, like.ts),
            ct_ys=materialise(ct.ys, like.ys),
            ts_perturbed=bool(sub_perturbed.ts),
        )
        for sub, sub_perturbed, like, ct in zip(
            inputs["subs"], perturbed["subs"], save_like, save_ct, strict=True
        )
    ]


_UNPREDICTED_GRID = (
    "`ReversibleAdjoint` could not recompute the step times of this solve for its "
    "backward pass: the step size controller did not compute them as a function of "
    "its step count, as `diffrax.ConstantStepSize` (with a finite `t1`) and "
    "`diffrax.StepTo` do. Please report this, with the solve. As a workaround, use "
    "another step size controller (e.g. `diffrax.StepTo(ts=...)` on the same grid) or "
    "`adjoint=diffrax.RecursiveCheckpointAdjoint()`."
)


def backward(
    residuals: Residuals, grad_out, perturbed, inputs, *, static, controller
) -> dict:
    """The custom VJP's backward pass: the cotangents of `inputs`, given those of the
    loop's outputs (`grad_out`). `static` holds the adjoint, the solver, its
    `AdjointTerm`, `max_steps` and the layout of the save state; `controller` is the
    step size controller that the forward pass ran."""
    grad_state, _ = grad_out
    adjoint = static.adjoint
    t1_tangent = residuals.t1_tangent
    record = residuals.record
    checkpoints = residuals.checkpoints
    zero_time = jnp.zeros((), dtype=t1_tangent.dtype)
    # The solve is undone in stretches of `every` steps, last to first, each from a
    # checkpoint (if any). Without checkpoints, one stretch of every step.
    if checkpoints is None:
        every = jnp.asarray(static.max_steps + 1, record.num_accepted.dtype)
    else:
        every = checkpoints.every.astype(record.num_accepted.dtype)
    if isinstance(record, PredictedRecord):
        controller = recording_controller(controller, inputs["t1"], t1_tangent)
        # The check is attached to a scalar that everything after depends on (on the
        # cotangents, it would copy each of them).
        num_accepted = eqx.error_if(
            record.num_accepted, record.mismatch, _UNPREDICTED_GRID
        )
        record = dataclasses.replace(
            record.with_controller(controller), num_accepted=num_accepted
        )
    times = record
    # Cotangents of the time inputs: along the `D` tangent directions, and of the
    # times of `StepTo(ts=...)`, which are the step times themselves.
    step_to = inputs["step_to"]
    grid_perturbed = step_to is not None and bool(perturbed["step_to"].ts)
    with_event = static.event is not None
    subs = _subs(
        inputs, perturbed, static.init_state.save_state, grad_state, not with_event
    )
    if with_event:
        event = _event_cotangents(
            grad_state, residuals, times, static.init_state.event_dense_info, zero_time
        )
    else:
        event = None
    # Only what the caller perturbs: an array of `args` that is not differentiated
    # would otherwise cost the backward pass a cotangent of its size, computed at every
    # step.
    differentiate = Differentiate(perturbed["args"], perturbed["terms"])
    ctx = _Context(
        terms=inputs["terms"],
        args=inputs["args"],
        differentiate=differentiate,
        adjoint_term=dataclasses.replace(
            static.adjoint_term, differentiate=differentiate
        ),
        interpolation_cls=static.solver.interpolation_cls,
        subs=subs,
        with_time=t1_tangent.shape[0] > 0 or grid_perturbed,
        with_dense=any(sub.layout.ts is not None for sub in subs)
        or (event is not None and event.dense is not None),
        num_accepted=record.num_accepted,
        zero_time=zero_time,
        t0_equals_t1=inputs["t0"] == inputs["t1"],
        step_to_ts=step_to.ts if grid_perturbed else None,
        record=record,
        checkpoints=checkpoints,
        every=every,
        event_dense=None if event is None else event.dense,
    )
    checks = adjoint.on_drift != "ignore"
    end = (residuals.y, residuals.solver_state)
    drift = DriftRecord.init(record.num_accepted, end) if checks else None

    carry = _pull_back_end(
        ctx, grad_state, residuals, times, inputs["controller_state"], drift, event
    )
    carry = lax.while_loop(lambda c: c.k >= 0, ft.partial(_stretch_back, ctx), carry)
    a_y, a_t0, a_args, a_subs = _pull_back_start(
        ctx, carry, inputs["y0"], inputs["t0"], bool(perturbed["t0"])
    )
    cts = _input_cotangents(inputs, perturbed, carry, a_y, a_t0, a_args, a_subs)
    if event is not None:
        # NaN, not a gradient that misses the rejected step's part (which would be
        # silently wrong: zero, when the solve accepted no step).
        cts = jtu.tree_map(
            lambda x: (
                jnp.where(event.rejected, jnp.nan, x) if eqx.is_inexact_array(x) else x
            ),
            cts,
        )
    # Forward-over-reverse (`jax.hessian`, `jax.jvp` of `jax.grad`) differentiates
    # this backward pass in forward mode, which works. Reverse-over-reverse would
    # transpose its `while_loop`, which JAX cannot do: say so clearly.
    cts = eqxi.nondifferentiable_backward(cts, msg=_REVERSE_OVER_REVERSE)
    if not checks:
        return cts
    # The reconstruction has come back to where the solve began: its drift.
    drift = carry.drift.measure(
        (carry.y, carry.solver_state), (inputs["y0"], inputs["solver_state"])
    )
    injected = largest_magnitude(
        (grad_state.y, grad_state.solver_state, [sub.ct_ys for sub in subs])
    )
    amplification = _amplification(static.solver, inputs, a_y, carry.a_state, injected)
    diverged = ~_all_finite((residuals.y, residuals.solver_state))
    return check_drift(
        cts,
        drift.worst,
        drift.steps,
        amplification,
        diverged,
        adjoint=adjoint,
        solver=static.solver,
        rtol=adjoint.rtol_for(inputs["y0"]),
        dtype=narrowest_dtype(inputs["y0"]),
    )


def _all_finite(tree) -> Array:
    leaves = [x for x in jtu.tree_leaves(tree) if eqx.is_inexact_array(x)]
    return jnp.all(jnp.stack([jnp.all(jnp.isfinite(x)) for x in leaves]))


def _amplification(solver, inputs, a_y, a_state, injected) -> Array:
    """How much the gradient amplifies a relative reconstruction error (at least 1):
    the product of two factors, each at least 1, derived on the maths page.

    - Cancellation: the largest cotangent of the initial `y` and solver state taken
        apart, over the largest of the cotangent of `y0` they make together (through
        `solver.init`, as the caller's gradient does). The backward pass
        differentiates with respect to `y` and the solver state as independent
        variables, which they are not (`z_0 = y_0` for `Reversible`, the cached
        evaluation `f(t_0, y_0)` for reversible Heun and ALF). A reconstruction error
        moves them apart, into a direction that the caller's gradient sees only
        through this error; where their cotangents cancel in `y0`'s (on periodic
        problems, by thousands), the error does not.
    - Growth: the largest cotangent of `y0` over the largest cotangent the loss put
        on the solution (`injected`: on the final state and on the saved values). It
        measures how much the solve's tangent map grows, as the shear of the phase
        of a periodic orbit does, and the gradient's sensitivity to a change of the
        trajectory grows with it.
    """
    if jtu.tree_leaves(eqx.filter(inputs["solver_state"], eqx.is_inexact_array)):
        init = lambda y: solver.init(
            inputs["terms"], inputs["tprev"], inputs["tnext"], y, inputs["args"]
        )
        _, pullback = eqx.filter_vjp(init, inputs["y0"])
        (a_init,) = pullback(a_state)
        together = add(a_y, a_init)
    else:
        together = a_y
    apart = largest_magnitude((a_y, a_state))
    combined = largest_magnitude(together)
    # Cotangents that do not cancel at all (none together, some apart) are as bad as
    # it gets; the growth from nothing injected (all of it from the event or `args`)
    # is not measured.
    cancellation = _at_least_one(apart, combined, zero_over=jnp.inf)
    growth = _at_least_one(combined, injected, zero_over=1.0)
    return cancellation * growth


def _at_least_one(numerator, denominator, *, zero_over) -> Array:
    """`max(numerator / denominator, 1)`; 1 if both are zero, `zero_over` if only the
    denominator is."""
    denominator = denominator.astype(numerator.dtype)
    safe = jnp.where(denominator > 0, denominator, 1)
    return jnp.where(
        denominator > 0,
        jnp.maximum(numerator / safe, 1),
        jnp.where(numerator > 0, zero_over, 1),
    )
