"""`ReversibleAdjoint`: O(1)-memory, exact gradients through `diffrax.diffeqsolve`.

Forward: diffrax's own loop with the user's solver. Under differentiation the step size
controller is wrapped (`_step_record.py`) to record the times of accepted steps and
their tangents along the differentiated time inputs (for a grid that does not depend
on `y`, only enough to recompute them). Residuals: the final `y` and solver state,
that record, and the checkpoints if any. No state is kept per step; the record holds
`max_steps + 1` times (and their tangents), or, with checkpoints and a known grid, a
few per checkpoint.

Backward: a `lax.while_loop` over the accepted steps, last to first, in stretches:
from checkpoint to checkpoint (each restarts from its checkpoint, and recomputes its
step times if the grid is known), or, without checkpoints, one stretch of every step.
Each iteration
1. calls the solver's `AdjointTerm`: reconstruct the step's inputs with the exact
   inverse, and get the step's pullback;
2. pulls back the `SaveAt(steps=...)` value saved at the step's start, i.e. at the end
   of the previous step (if any), which needs the reconstructed `y0`;
3. pulls back every `SaveAt(ts=...)` value inside the step through the solver's dense
   interpolation, which yields the cotangent of the dense output and of each save time
   (emitted into the `ts` cotangent here, once, as the loop crosses that step);
4. applies the step's pullback, accumulates the parameter cotangents, and turns the
   cotangents of the step's two times into cotangents of the time inputs through the
   recorded tangents.
Values saved at `t0` and at the end (`t1`, and the last step's `steps` value) are pulled
back after and before the loop. What does not
depend on the loop (`solver.init`, `stepsize_controller.init`, the time direction, ...)
is outside this custom VJP, so JAX differentiates it as usual.

Save layout (diffrax 0.7): each `SubSaveAt` owns one buffer, filled in order with the
value at `t0` (if `t0`), then, step by step, the `ts` values inside the step followed
by the step's `steps` value (if due), then the value at `t1` (if `t1` and not already
saved by `steps`).
"""

import dataclasses
import functools as ft
from collections.abc import Callable
from typing import Any, Literal

import diffrax
import equinox as eqx
import equinox.internal as eqxi
import jax
import jax.lax as lax
import jax.numpy as jnp
import jax.tree_util as jtu
import numpy as np
from jaxtyping import Array

from ._adjoint_term import (
    AdjointTerm,
    add_cotangents as _add,
    filter_vjp,
    materialise as _materialise,
    zeros_like_inexact as _zeros_like_inexact,
)
from ._diffrax_internals import SaveState, WrapTerm, is_sde, is_unsafe_sde, save_y
from ._drift import (
    check_drift,
    default_drift_rtol,
    larger,
    magnitudes,
    relative_drift,
)
from ._save_layout import SaveLayout
from ._solver.base import AbstractReversibleSolver
from ._solver.leapfrog_midpoint import LeapfrogMidpoint
from ._solver.reversible import Reversible
from ._solver.reversible_heun import ReversibleHeun
from ._solver.semi_implicit_euler import SemiImplicitEuler
from ._step_record import (
    GridRecord,
    ReportingSolver,
    as_tangent_tuple,
    init_checkpoints,
    init_recording,
    recording_controller,
    replays_grid,
)

_inner_loop = jax.named_call(eqxi.while_loop, name="inner-loop")
_outer_loop = jax.named_call(eqxi.while_loop, name="outer-loop")


def _is_subsaveat(x):
    return isinstance(x, diffrax.SubSaveAt)


def _is_none(x):
    return x is None


def _is_save_state(x):
    return isinstance(x, SaveState)


# diffrax's own reversible solvers, and the `AbstractReversibleSolver` that inverts
# them. Their `solver_state` layouts coincide, so the forward pass runs the user's
# instance unchanged and the backward pass inverts it with ours.
_DIFFRAX_REVERSIBLE = {
    diffrax.ReversibleHeun: ReversibleHeun,
    diffrax.LeapfrogMidpoint: LeapfrogMidpoint,
    diffrax.SemiImplicitEuler: SemiImplicitEuler,
}


def _supported_solvers():
    ours = [
        "ReversibleHeun",
        "AsynchronousLeapfrog",
        "Reversible(<any explicit Runge-Kutta method>)",
        "LeapfrogMidpoint",
        "SemiImplicitEuler",
    ]
    names = [f"`reversible_adjoint.{name}`" for name in ours]
    names += [f"`diffrax.{cls.__name__}`" for cls in _DIFFRAX_REVERSIBLE]
    return ", ".join(names)


def _narrowest_dtype(y0):
    """The floating dtype of the least precise leaf of `y0`: the one whose round-off
    sets the scale of the drift."""
    dtypes = [
        jnp.result_type(x) for x in jtu.tree_leaves(y0) if eqx.is_inexact_array(x)
    ]
    if not dtypes:
        return jnp.result_type(float)
    return max(dtypes, key=lambda dtype: jnp.finfo(dtype).eps)


def _solver_name(solver) -> str:
    if isinstance(solver, Reversible):
        base = type(solver.solver).__name__
        return f"`Reversible({base}(), coupling={solver.coupling})`"
    return f"`{type(solver).__name__}`"


def as_reversible(solver) -> AbstractReversibleSolver:
    if isinstance(solver, AbstractReversibleSolver):
        return solver
    reversible = _DIFFRAX_REVERSIBLE.get(type(solver))
    if reversible is None:
        raise ValueError(
            f"`adjoint=ReversibleAdjoint()` needs an algebraically reversible solver, "
            f"but got `{type(solver).__name__}`. Supported: {_supported_solvers()}, "
            "and any subclass of `reversible_adjoint.AbstractReversibleSolver`. To "
            "keep your solver, wrap it: `reversible_adjoint.Reversible(solver)` makes "
            "any explicit Runge-Kutta method reversible. Otherwise use "
            "`adjoint=diffrax.RecursiveCheckpointAdjoint()`."
        )
    return reversible()


def _mask(tree, keep):
    return jtu.tree_map(lambda x: jnp.where(keep, x, jnp.zeros_like(x)), tree)


def _index(tree, i):
    return jtu.tree_map(lambda x: x[i], tree)


def _or_zero(x, zero):
    return zero if x is None else x.astype(zero.dtype)


def _save_pullback(fn, t, y, args, ct, with_time):
    """Cotangents of `(t, y, args, fn)`, given the cotangent `ct` of `fn(t, y, args)`
    (`None` for `t` unless `with_time`)."""
    _, pullback = filter_vjp(
        lambda _t, _y, _a, _f: _f(_t, _y, _a),
        (t, y, args, fn),
        (with_time, True, True, True),
    )
    return pullback(ct)


class _Sub(eqx.Module):
    """One `SubSaveAt`, seen by the backward pass: its buffer layout, its `fn`, and
    the cotangents of its saved values and times."""

    layout: SaveLayout
    fn: Any
    ct_ts: Any
    ct_ys: Any


class _Static(eqx.Module):
    adjoint: Any
    solver: Any
    adjoint_term: AdjointTerm
    stepsize_controller: Any
    subs_treedef: Any = eqx.field(static=True)
    saveat_flags: dict
    max_steps: int = eqx.field(static=True)
    progress_meter: Any
    init_state: Any
    dt0: Any


#
# Time inputs and their tangent directions.
#


def _time_leaves(inputs):
    """The time inputs whose tangents the step record carries, in a fixed order:
    initial `tprev`, initial `tnext`, inexact leaves of the initial controller state,
    and the loop's `t1`."""
    tprev, tnext, dynamic = as_tangent_tuple(
        inputs["tprev"], inputs["tnext"], inputs["controller_state"]
    )
    return [tprev, tnext, *jtu.tree_leaves(dynamic), inputs["t1"]]


def _directions(inputs, perturbed):
    """Where each time leaf starts among the `D` tangent directions (`None` if it is
    not differentiated), and `D`."""
    is_inexact = jtu.tree_map(eqx.is_inexact_array, inputs["controller_state"])
    dynamic_perturbed = jtu.tree_leaves(
        eqx.filter(perturbed["controller_state"], is_inexact)
    )
    flags = [
        perturbed["tprev"],
        perturbed["tnext"],
        *dynamic_perturbed,
        perturbed["t1"],
    ]
    offsets = []
    num_directions = 0
    for leaf, flag in zip(_time_leaves(inputs), flags, strict=True):
        if flag:
            offsets.append(num_directions)
            num_directions += int(np.prod(jnp.shape(leaf)))
        else:
            offsets.append(None)
    return offsets, num_directions


def _initial_tangents(inputs, perturbed):
    offsets, num_directions = _directions(inputs, perturbed)
    time_dtype = jnp.result_type(inputs["tprev"])

    def tangent(leaf, offset):
        shape = jnp.shape(leaf)
        size = int(np.prod(shape))
        out = jnp.zeros((num_directions, size), dtype=time_dtype)
        if offset is not None:
            out = out.at[offset : offset + size].set(jnp.eye(size, dtype=time_dtype))
        return out.reshape((num_directions, *shape)).astype(jnp.result_type(leaf))

    *tangents, t1_tangent = [
        tangent(leaf, offset) for leaf, offset in zip(_time_leaves(inputs), offsets)
    ]
    t1_tangent = t1_tangent.astype(time_dtype)
    if num_directions == 0:
        return None, t1_tangent
    tprev_tangent, tnext_tangent, *dynamic_tangents = tangents
    _, _, dynamic = as_tangent_tuple(
        inputs["tprev"], inputs["tnext"], inputs["controller_state"]
    )
    dynamic_tangents = jtu.tree_unflatten(jtu.tree_structure(dynamic), dynamic_tangents)
    return (tprev_tangent, tnext_tangent, dynamic_tangents), t1_tangent


def _time_cotangents(inputs, perturbed, a_theta):
    """Splits the cotangent of the `D` directions back onto the time inputs."""
    offsets, _ = _directions(inputs, perturbed)
    cts = []
    for leaf, offset in zip(_time_leaves(inputs), offsets):
        if offset is None:
            cts.append(None)
        else:
            shape = jnp.shape(leaf)
            ct = a_theta[offset : offset + int(np.prod(shape))].reshape(shape)
            cts.append(ct.astype(jnp.result_type(leaf)))
    ct_tprev, ct_tnext, *ct_dynamic, ct_t1 = cts
    controller_state = inputs["controller_state"]
    dynamic, static = eqx.partition(controller_state, eqx.is_inexact_array)
    ct_dynamic = jtu.tree_unflatten(jtu.tree_structure(dynamic), ct_dynamic)
    ct_controller_state = eqx.combine(ct_dynamic, jtu.tree_map(lambda _: None, static))
    return ct_tprev, ct_tnext, ct_controller_state, ct_t1


#
# The forward pass.
#


def _build_init_state(inputs, static):
    return eqx.tree_at(
        lambda s: (s.y, s.solver_state, s.tprev, s.tnext, s.controller_state),
        static.init_state,
        (
            inputs["y0"],
            inputs["solver_state"],
            inputs["tprev"],
            inputs["tnext"],
            inputs["controller_state"],
        ),
        is_leaf=_is_none,
    )


def _controller(inputs, static):
    if inputs["step_to"] is None:
        return static.stepsize_controller
    return inputs["step_to"]


def _run(inputs, static, stepsize_controller, init_state, solver=None):
    subs = jtu.tree_unflatten(static.subs_treedef, inputs["subs"])
    return static.adjoint._loop(
        args=inputs["args"],
        terms=inputs["terms"],
        solver=static.solver if solver is None else solver,
        stepsize_controller=stepsize_controller,
        event=None,
        saveat=diffrax.SaveAt(subs=subs, **static.saveat_flags),
        t0=inputs["t0"],
        t1=inputs["t1"],
        dt0=static.dt0,
        max_steps=static.max_steps,
        init_state=init_state,
        inner_while_loop=ft.partial(_inner_loop, kind="lax"),
        outer_while_loop=ft.partial(_outer_loop, kind="lax"),
        progress_meter=static.progress_meter,
    )


@eqx.filter_custom_vjp
def _reversible_loop(inputs, *, static):
    init_state = _build_init_state(inputs, static)
    return _run(inputs, static, _controller(inputs, static), init_state)


def _is_virtual_brownian_tree(x):
    return isinstance(x, diffrax.VirtualBrownianTree)


def _replay_every(controller, static):
    """With checkpoints, and a step grid that does not depend on `y`: the length of
    the stretches in which the backward pass recomputes the grid instead of reading a
    record of every step time. (Without checkpoints the record is kept: recomputing
    the tangents of the times costs up to 40% of a tiny state's gradient when time
    inputs are differentiated; `benchmarks/grid.py`.)"""
    if replays_grid(controller):
        return static.adjoint.checkpoint_every
    return None


@_reversible_loop.def_fwd
def _reversible_loop_fwd(perturbed, inputs, *, static):
    tangents, t1_tangent = _initial_tangents(inputs, perturbed)
    moves_grid = t1_tangent.shape[0] > 0 or (
        inputs["step_to"] is not None and perturbed["step_to"].ts
    )
    trees = jtu.tree_leaves(inputs["terms"], is_leaf=_is_virtual_brownian_tree)
    if moves_grid and any(_is_virtual_brownian_tree(x) for x in trees):
        raise ValueError(
            "Cannot differentiate an SDE solve with respect to `t0`, `t1`, `dt0` or "
            "the step times (`StepTo(ts=...)`) when its Brownian motion is a "
            "`diffrax.VirtualBrownianTree`: the tree is not differentiable with "
            "respect to time (diffrax's own adjoints raise too). Gradients with "
            "respect to `y0`, `args`, the terms and `SaveAt(ts=...)` are available; "
            "for time gradients, use a Brownian path that is differentiable in time."
        )
    every = static.adjoint.checkpoint_every
    if every is None:
        checkpoints, solver = None, static.solver
    else:
        checkpoints = init_checkpoints(
            every, static.max_steps, inputs["y0"], inputs["solver_state"]
        )
        solver = ReportingSolver(static.solver)
    controller = _controller(inputs, static)
    controller, controller_state = init_recording(
        controller,
        inputs["t1"],
        inputs["tprev"],
        inputs["tnext"],
        inputs["controller_state"],
        static.max_steps,
        tangents,
        t1_tangent,
        checkpoints,
        _replay_every(controller, static),
    )
    init_state = _build_init_state(inputs, static)
    init_state = eqx.tree_at(lambda s: s.controller_state, init_state, controller_state)
    final_state, aux_stats = _run(inputs, static, controller, init_state, solver)
    recording = final_state.controller_state
    final_state = eqx.tree_at(
        lambda s: s.controller_state, final_state, recording.inner, is_leaf=_is_none
    )
    residuals = (
        final_state.y,
        final_state.solver_state,
        recording.record,
        recording.time_tangents,
        t1_tangent,
        recording.checkpoints,
    )
    return (final_state, aux_stats), residuals


#
# The backward pass.
#


_REVERSE_OVER_REVERSE = (
    "`ReversibleAdjoint`'s backward pass cannot itself be differentiated in reverse "
    "mode (`jax.grad` of `jax.grad`): it is a `lax.while_loop` over a number of steps "
    "known only at run time (as is `diffrax.RecursiveCheckpointAdjoint`'s). Use "
    "forward-over-reverse instead: `jax.hessian`, `jax.jacfwd(jax.grad(...))`, or "
    "Hessian-vector products as `jax.jvp(jax.grad(f), (x,), (v,))`."
)


class _DriftRecord(eqx.Module):
    """What the drift check needs from the backward loop: the worst drift measured
    so far and over how many steps it grew, the step from which the reconstruction
    now runs (the end of the solve, or the last checkpoint it restarted from), and
    the largest magnitudes of `y` and of the solver state among the exact states met
    so far: the end of the solve and the checkpoints (the scale of `relative_drift`).
    (A running maximum along the whole reconstructed trajectory would be a better
    scale for solutions that pass near zero, but costs about 8% of the backward
    pass: one reduction per step.)"""

    worst: Array
    steps: Array
    restart: Array
    scales: tuple

    @staticmethod
    def init(num_accepted, end):
        scales = magnitudes(end)
        dtype = jnp.result_type(*[x for x in scales if x is not None], jnp.float32)
        zero = jnp.zeros((), dtype)
        return _DriftRecord(zero, jnp.zeros((), jnp.int32), num_accepted, scales)

    def measure(self, reconstructed, true, restart=None):
        """Measures the drift of `reconstructed` against `true`, reconstructed since
        `self.restart`; the reconstruction then runs from `restart` (if given)."""
        scales = larger(self.scales, magnitudes(true))
        drift = relative_drift(reconstructed, true, scales).astype(self.worst.dtype)
        worse = drift > self.worst
        return _DriftRecord(
            jnp.where(worse, drift, self.worst),
            jnp.where(
                worse, self.restart - (0 if restart is None else restart), self.steps
            ),
            self.restart if restart is None else restart,
            scales,
        )


class _BackwardCarry(eqx.Module):
    """The state of the backward loop before undoing accepted step `k`: the state
    after it (`y`, `solver_state`) and the cotangents of everything met so far, as
    named in `_reversible_loop_bwd`; `times` holds the step times of the current
    stretch."""

    k: Array
    y: Any
    solver_state: Any
    a_y: Any
    a_state: Any
    a_args_terms: Any
    a_time: Any
    a_subs: Any
    term_carry: Any
    drift: Any
    times: Any


@_reversible_loop.def_bwd
def _reversible_loop_bwd(residuals, grad_out, perturbed, inputs, *, static):
    y_final, solver_state_final, record, final_tangents, t1_tangent, checkpoints = (
        residuals
    )
    grad_state, _ = grad_out
    end = (y_final, solver_state_final)
    adjoint = static.adjoint
    if adjoint.on_drift == "ignore":
        checking = None
    else:
        checking = dict(
            on_drift=adjoint.on_drift,
            rtol=adjoint.rtol_for(inputs["y0"]),
            solver_name=_solver_name(static.solver),
            dtype=_narrowest_dtype(inputs["y0"]),
        )
    args = inputs["args"]
    terms = inputs["terms"]
    adjoint_term = static.adjoint_term
    interpolation_cls = static.solver.interpolation_cls
    num_accepted = record.num_accepted
    zero_time = jnp.zeros((), dtype=t1_tangent.dtype)
    # The solve is undone in stretches of `every` steps, last to first: each starts
    # from a checkpoint (if any) and has its step times recomputed (if the record is a
    # `GridRecord`). Without checkpoints, one stretch of every step.
    recomputes = isinstance(record, GridRecord)
    every = static.max_steps + 1 if checkpoints is None else checkpoints.every
    controller = recording_controller(
        _controller(inputs, static), inputs["t1"], t1_tangent
    )
    last_stretch = jnp.maximum(num_accepted - 1, 0) // every
    times = record.stretch(last_stretch, controller)

    # Cotangents of the time inputs: `a_theta` for the `D` tangent directions, and
    # `a_grid` for the times of `StepTo(ts=...)`, which are the step times themselves.
    step_to = inputs["step_to"]
    grid_perturbed = step_to is not None and bool(perturbed["step_to"].ts)
    grid = step_to.ts if grid_perturbed else None
    # Differentiate with respect to the step times only if some time input is
    # differentiated: it costs time, and an SDE's Brownian motion cannot be
    # differentiated with respect to time at all.
    with_time = t1_tangent.shape[0] > 0 or grid_perturbed
    perturbed_subs = perturbed["subs"]

    def time_ct(a_time, ct_t, k, times):
        """Adds the cotangent `ct_t` of the accepted time `times.time(k)`."""
        a_theta, a_grid = a_time
        a_theta = a_theta + ct_t * times.tangent(k)
        if a_grid is not None:
            # `StepTo` steps to `ts[k]`, except: at the start (`ts[1]` is the initial
            # `tnext`, differentiated outside as a time input) and at the end, where
            # the loop clips to `t1` (both dependences are in the tangents).
            from_grid = (k >= 2) & (k < num_accepted) & (times.time(k) == grid[k])
            a_grid = a_grid.at[k].add(
                jnp.where(from_grid, ct_t, 0).astype(a_grid.dtype)
            )
        return a_theta, a_grid

    save_like = jtu.tree_leaves(static.init_state.save_state, is_leaf=_is_save_state)
    save_ct = jtu.tree_leaves(grad_state.save_state, is_leaf=_is_save_state)
    subs = [
        _Sub(
            layout=SaveLayout(ts=sub.ts, t0=sub.t0, t1=sub.t1, steps=sub.steps),
            fn=sub.fn,
            ct_ts=_materialise(ct.ts, like.ts),
            ct_ys=_materialise(ct.ys, like.ys),
        )
        for sub, like, ct in zip(inputs["subs"], save_like, save_ct, strict=True)
    ]
    # Cotangents accumulated per `SubSaveAt`: of its `ts`, and of the arrays in its
    # `fn`.
    a_subs = [
        (_zeros_like_inexact(sub.layout.ts), _zeros_like_inexact(sub.fn))
        for sub in subs
    ]

    def add_save(a_subs, j, ct_fn=None, index=None, ct_t=None):
        a_ts, a_fn = a_subs[j]
        if ct_fn is not None:
            a_fn = _add(a_fn, ct_fn)
        if index is not None:
            a_ts = a_ts.at[index].add(ct_t)
        return a_subs[:j] + [(a_ts, a_fn)] + a_subs[j + 1 :]

    def pull_back_step_saves(j, t_j1, y_j1, a_subs):
        """`SaveAt(steps=n)`: cotangents from the value saved at the end of step `j`
        (at `t_j1`, equal to `y_j1`), if it was saved; none for `j = -1`. Returns
        those of `(y_j1, t_j1, args)`, and `a_subs` with those of `fn` added."""
        c_y = _zeros_like_inexact(y_j1)
        c_t = zero_time
        c_args = _zeros_like_inexact(args)
        for i, sub in enumerate(subs):
            if sub.layout.steps == 0:
                continue
            due = sub.layout.steps_due(j)
            index = sub.layout.steps_index(j, t_j1)
            ct = _mask(_index(sub.ct_ys, index), due)
            s_t, s_y, s_args, s_fn = _save_pullback(
                sub.fn, t_j1, y_j1, args, ct, with_time
            )
            c_y = _add(c_y, s_y)
            c_t = c_t + _or_zero(s_t, zero_time) + jnp.where(due, sub.ct_ts[index], 0)
            c_args = _add(c_args, s_args)
            a_subs = add_save(a_subs, i, ct_fn=s_fn)
        return c_y, c_t, c_args, a_subs

    with_dense = any(sub.layout.ts is not None for sub in subs)

    #
    # Values saved at the end of the solve (`SaveAt(t1=True)`), and cotangents of the
    # final state itself.
    #

    t_final = times.time(num_accepted)
    a_y = _materialise(grad_state.y, y_final)
    a_state = _materialise(grad_state.solver_state, solver_state_final)
    a_args_terms = _zeros_like_inexact((args, terms))
    a_t_final = _or_zero(grad_state.tprev, zero_time)
    t0_equals_t1 = inputs["t0"] == inputs["t1"]
    for j, sub in enumerate(subs):
        saved = sub.layout.t1_due(num_accepted)
        if saved is False:
            continue  # Not saved, or always saved as the last step's `steps` value.
        index = sub.layout.t1_index(num_accepted, t_final, t0_equals_t1)
        ct = _mask(_index(sub.ct_ys, index), saved)
        c_t, c_y, c_args, c_fn = _save_pullback(
            sub.fn, t_final, y_final, args, ct, with_time
        )
        a_y = _add(a_y, c_y)
        a_t_final = a_t_final + _or_zero(c_t, zero_time)
        a_t_final = a_t_final + jnp.where(saved, sub.ct_ts[index], 0)
        a_args_terms = (_add(a_args_terms[0], c_args), a_args_terms[1])
        a_subs = add_save(a_subs, j, ct_fn=c_fn)
    # `SaveAt(steps=n)`: the value at the end of the last step, if it was saved.
    c_y, c_t, c_args, a_subs = pull_back_step_saves(
        num_accepted - 1, t_final, y_final, a_subs
    )
    a_y = _add(a_y, c_y)
    a_t_final = a_t_final + c_t
    a_args_terms = (_add(a_args_terms[0], c_args), a_args_terms[1])
    term_carry, (c_state, c_t, c_args, c_terms) = adjoint_term.init(
        terms,
        times.time(jnp.maximum(num_accepted - 1, 0)),
        t_final,
        y_final,
        args,
        solver_state_final,
        a_y,
        a_state,
        with_dense=with_dense,
        active=num_accepted > 0,
    )
    # The end of the last step as the step used it; `a_t_final` is the cotangent of
    # the final time as the loop saved it (clipped to `t1`). See `_step_record.py`.
    a_t_step_end = zero_time
    if c_state is not None:  # The last step's last evaluation was settled.
        a_state = _add(a_state, c_state)
        a_args_terms = _add(a_args_terms, (c_args, c_terms))
        if with_time:
            a_t_step_end = _or_zero(c_t, zero_time)
    a_theta = jnp.zeros_like(t1_tangent)
    a_grid = None if grid is None else jnp.zeros_like(grid)
    a_time = time_ct((a_theta, a_grid), a_t_step_end, num_accepted, times)
    if final_tangents is None:
        a_time = time_ct(a_time, a_t_final, num_accepted, times)
    else:
        a_theta, a_grid = a_time
        tprev_tangent, tnext_tangent, dynamic_tangents = final_tangents
        a_theta = a_theta + a_t_final * tprev_tangent
        a_theta = a_theta + _or_zero(grad_state.tnext, zero_time) * tnext_tangent
        ct_controller = _materialise(
            grad_state.controller_state, inputs["controller_state"]
        )
        for ct_leaf, tangent_leaf in zip(
            jtu.tree_leaves(ct_controller), jtu.tree_leaves(dynamic_tangents)
        ):
            a_theta = a_theta + jnp.tensordot(
                tangent_leaf, ct_leaf.astype(tangent_leaf.dtype), axes=ct_leaf.ndim
            ).astype(a_theta.dtype)
        a_time = a_theta, a_grid

    #
    # One iteration per accepted step, last to first.
    #

    def snapshot(t, t_k, t_k1, dense_info, _args, fn):
        interpolation = interpolation_cls(t0=t_k, t1=t_k1, **dense_info)
        return fn(t, interpolation.evaluate(t), _args)

    def pull_back_snapshots(k, t_k, t_k1, dense_info, a_args_terms, a_subs):
        """Cotangents of the dense output and of the step's times from every
        `SaveAt(ts=...)` value inside the step; the cotangents of the save times
        themselves go straight into the `ts` cotangent."""
        ct_dense = _zeros_like_inexact(dense_info)
        a_t_k = a_t_k1 = zero_time
        a_args, a_terms = a_args_terms
        for j, sub in enumerate(subs):
            layout = sub.layout
            if layout.ts is None:
                continue
            lo = layout.ts_saved(k, t_k)
            hi = layout.ts_saved(k + 1, t_k1)
            ts_perturbed = bool(perturbed_subs[j].ts)

            def body(c, sub=sub, ts_perturbed=ts_perturbed):
                i, ct_dense, a_t_k, a_t_k1, a_args, (a_ts, a_fn) = c
                index = sub.layout.ts_index(k, i)
                _, pullback = filter_vjp(
                    snapshot,
                    (sub.layout.ts[i], t_k, t_k1, dense_info, args, sub.fn),
                    (ts_perturbed, with_time, with_time, True, True, True),
                )
                c_t, c_tk, c_tk1, c_dense, c_args, c_fn = pullback(
                    _index(sub.ct_ys, index)
                )
                a_ts = a_ts.at[i].add(_or_zero(c_t, zero_time) + sub.ct_ts[index])
                return (
                    i + 1,
                    _add(ct_dense, c_dense),
                    a_t_k + _or_zero(c_tk, zero_time),
                    a_t_k1 + _or_zero(c_tk1, zero_time),
                    _add(a_args, c_args),
                    (a_ts, _add(a_fn, c_fn)),
                )

            init = (lo, ct_dense, a_t_k, a_t_k1, a_args, a_subs[j])
            c = lax.while_loop(lambda c, hi=hi: c[0] < hi, body, init)
            _, ct_dense, a_t_k, a_t_k1, a_args, a_sub = c
            a_subs = a_subs[:j] + [a_sub] + a_subs[j + 1 :]
        return ct_dense, a_t_k, a_t_k1, (a_args, a_terms), a_subs

    def step_back(carry):
        """Undoes accepted step `carry.k` and pulls the cotangents back through it."""
        k = carry.k
        times = record if carry.times is None else carry.times
        t_k = times.time(k)
        t_k1 = times.time(k + 1)
        y0, state0, dense_info, pullback, term_carry = adjoint_term(
            terms,
            t_k,
            t_k1,
            carry.y,
            args,
            carry.solver_state,
            carry.term_carry,
            with_dense=with_dense,
            with_time=with_time,
            t_previous=times.time(jnp.maximum(k - 1, 0)),
            is_first=k == 0,
        )
        # The value at the end of the previous step (`SaveAt(steps=n)`), if saved.
        a_subs = carry.a_subs
        c_y0, a_t_k, c_args, a_subs = pull_back_step_saves(k - 1, t_k, y0, a_subs)
        a_args_terms = (_add(carry.a_args_terms[0], c_args), carry.a_args_terms[1])
        a_t_k1 = zero_time
        if with_dense:
            ct_dense, s_t_k, s_t_k1, a_args_terms, a_subs = pull_back_snapshots(
                k, t_k, t_k1, dense_info, a_args_terms, a_subs
            )
            a_t_k = a_t_k + s_t_k
            a_t_k1 = a_t_k1 + s_t_k1
            cts = pullback(carry.a_y, carry.a_state, ct_dense, c_y0)
        else:
            cts = pullback(carry.a_y, carry.a_state, None, c_y0)
        ct_y0, ct_state0, ct_t0, ct_t1, ct_args, ct_terms = cts
        a_t_k = a_t_k + _or_zero(ct_t0, zero_time)
        a_t_k1 = a_t_k1 + _or_zero(ct_t1, zero_time)
        a_time = time_ct(time_ct(carry.a_time, a_t_k, k, times), a_t_k1, k + 1, times)
        return _BackwardCarry(
            k=k - 1,
            y=y0,
            solver_state=state0,
            a_y=_materialise(ct_y0, y0),
            a_state=_materialise(ct_state0, state0),
            a_args_terms=_add(a_args_terms, (ct_args, ct_terms)),
            a_time=a_time,
            a_subs=a_subs,
            term_carry=term_carry,
            drift=carry.drift,
            times=carry.times,
        )

    def stretch_back(carry):
        """Undoes the steps of stretch `carry.k // every`, last to first."""
        # (Under `vmap`, also run for elements already done, with `k = -1`.)
        stretch = jnp.maximum(carry.k, 0) // every
        y, state, drift = carry.y, carry.solver_state, carry.drift
        if checkpoints is not None:
            # Unless this stretch ends the solve, it ends at a checkpoint: measure the
            # drift of the reconstruction so far, and carry on from the stored state.
            restart = carry.k + 1 < num_accepted
            stored = checkpoints.read(stretch)
            if drift is not None:
                measured = drift.measure((y, state), stored, restart=carry.k + 1)
                drift = jtu.tree_map(ft.partial(jnp.where, restart), measured, drift)
            y, state = jtu.tree_map(ft.partial(jnp.where, restart), stored, (y, state))
        times = record.stretch(stretch, controller) if recomputes else None
        carry = dataclasses.replace(
            carry, y=y, solver_state=state, drift=drift, times=times
        )
        start = stretch * every
        return lax.while_loop(lambda c: c.k >= start, step_back, carry)

    carry = _BackwardCarry(
        k=num_accepted - 1,
        y=y_final,
        solver_state=solver_state_final,
        a_y=a_y,
        a_state=a_state,
        a_args_terms=a_args_terms,
        a_time=a_time,
        a_subs=a_subs,
        term_carry=term_carry,
        drift=None if checking is None else _DriftRecord.init(num_accepted, end),
        # The times of the current stretch, if recomputed; else read from `record`.
        times=times if recomputes else None,
    )
    carry = lax.while_loop(lambda c: c.k >= 0, stretch_back, carry)
    y_rec, state_rec, drift = carry.y, carry.solver_state, carry.drift
    a_y, a_state, a_args_terms, a_subs = (
        carry.a_y,
        carry.a_state,
        carry.a_args_terms,
        carry.a_subs,
    )
    a_time = carry.a_time
    a_theta, a_grid = a_time
    if drift is not None:
        # The reconstruction has come back to where the solve began: its drift.
        drift = drift.measure(
            (y_rec, state_rec), (inputs["y0"], inputs["solver_state"])
        )

    #
    # Values saved at the start: `SaveAt(t0=True)`, and `SaveAt(ts=...)` when
    # `t0 == t1` (no steps: diffrax then saves `fn(t0, y0, args)` for every entry).
    #

    y0 = inputs["y0"]
    t0 = inputs["t0"]
    a_t0 = zero_time
    for j, sub in enumerate(subs):
        ct = None
        ct_time = zero_time
        if sub.layout.t0:
            ct = _index(sub.ct_ys, 0)
            ct_time = sub.ct_ts[0]
        if sub.layout.ts is not None:
            window = sub.layout.repeated_at_t0()
            repeated = jtu.tree_map(lambda c: jnp.sum(c[window], axis=0), sub.ct_ys)
            repeated = _mask(repeated, t0_equals_t1)
            ct = repeated if ct is None else _add(ct, repeated)
            ct_time = ct_time + jnp.where(t0_equals_t1, jnp.sum(sub.ct_ts[window]), 0)
        if ct is None:
            continue
        c_t, c_y, c_args, c_fn = _save_pullback(
            sub.fn, t0, y0, args, ct, bool(perturbed["t0"])
        )
        a_y = _add(a_y, c_y)
        a_t0 = a_t0 + _or_zero(c_t, zero_time) + ct_time
        a_args_terms = (_add(a_args_terms[0], c_args), a_args_terms[1])
        a_subs = add_save(a_subs, j, ct_fn=c_fn)

    #
    # Cotangents of `inputs`.
    #

    ct_tprev, ct_tnext, ct_controller_state, ct_t1 = _time_cotangents(
        inputs, perturbed, a_theta
    )
    a_args, a_terms = a_args_terms
    ct_subs = [
        eqx.tree_at(
            lambda s: (s.ts, s.fn),
            _zeros_like_inexact(sub),
            (a_ts, a_fn),
            is_leaf=_is_none,
        )
        for sub, (a_ts, a_fn) in zip(inputs["subs"], a_subs)
    ]
    cts = dict(
        y0=a_y,
        solver_state=a_state,
        tprev=ct_tprev,
        tnext=ct_tnext,
        controller_state=ct_controller_state,
        t0=a_t0.astype(jnp.result_type(t0)) if eqx.is_inexact_array(t0) else None,
        t1=ct_t1,
        args=a_args,
        terms=a_terms,
        subs=ct_subs,
        step_to=_step_to_cotangent(step_to, a_grid),
    )
    # Forward-over-reverse (`jax.hessian`, `jax.jvp` of `jax.grad`) differentiates
    # this backward pass in forward mode, which works. Reverse-over-reverse would
    # transpose its `while_loop`, which JAX cannot do: say so clearly.
    cts = eqxi.nondifferentiable_backward(cts, msg=_REVERSE_OVER_REVERSE)
    if checking is None:
        return cts
    return check_drift(cts, drift.worst, drift.steps, **checking)


def _step_to_cotangent(step_to, a_grid):
    """The cotangent of `StepTo`: `a_grid` for its times if they were differentiated,
    zeros for its other inexact leaves (and for its times otherwise)."""
    if step_to is None:
        return None
    ct = _zeros_like_inexact(step_to)
    if a_grid is None:
        return ct
    return eqx.tree_at(lambda c: c.ts, ct, a_grid)


#
# The public class.
#


def _is_leaf_term(x):
    """A term that is not a container of other terms: it has a vector field of its
    own."""
    return isinstance(x, diffrax.AbstractTerm) and not isinstance(
        x, (diffrax.MultiTerm, WrapTerm)
    )


class _RecordInputs(diffrax.AbstractTerm):
    """A term that reports the `(t, y, args)` its vector field is called with."""

    term: diffrax.AbstractTerm
    report: Callable = eqx.field(static=True)

    def vf(self, t, y, args):
        self.report((t, y, args))
        return self.term.vf(t, y, args)

    def contr(self, t0, t1, **kwargs):
        return self.term.contr(t0, t1, **kwargs)

    def prod(self, vf, control):
        return self.term.prod(vf, control)


class _HoistedTerm(diffrax.AbstractTerm):
    """A user's own term whose `vf` closes over arrays being differentiated: `vf` is
    replaced by its closure-converted form, which holds them as PyTree leaves."""

    term: diffrax.AbstractTerm
    converted_vf: Callable

    def vf(self, t, y, args):
        return self.converted_vf(t, y, args)

    def is_vf_expensive(self, t0, t1, y, args):
        return self.term.is_vf_expensive(t0, t1, y, args)

    def contr(self, t0, t1, **kwargs):
        return self.term.contr(t0, t1, **kwargs)

    def prod(self, vf, control):
        return self.term.prod(vf, control)


def _has_tracers(tree):
    return any(isinstance(x, jax.core.Tracer) for x in jtu.tree_leaves(tree))


def _hoist_closures(terms, solver, t0, t1, y0, args, solver_state):
    """Makes the arrays that vector fields close over (e.g. `lambda t, y, args: -a * y`
    with `a` being differentiated) leaves of `terms`, so that the custom VJP
    differentiates them, as `RecursiveCheckpointAdjoint` would.

    Each vector field is traced with the inputs the solver's `step` gives it, which
    need not be `y` (`SemiImplicitEuler` gives each of its two terms the other half).
    `ODETerm`s and `ControlTerm`s get their `vector_field` converted; a user's own
    term, whose `vf` may close over arrays anywhere, is wrapped with a converted `vf`
    if it closes over any array being traced.
    """
    leaves, treedef = jtu.tree_flatten(terms, is_leaf=_is_leaf_term)
    inputs = {}

    def as_struct(x):
        if eqx.is_array(x):
            return jax.ShapeDtypeStruct(jnp.shape(x), jnp.result_type(x))
        return x

    def recording(i, leaf):
        if not _is_leaf_term(leaf):
            return leaf
        report = lambda tya: inputs.setdefault(i, jtu.tree_map(as_struct, tya))
        return _RecordInputs(leaf, report)

    recording_terms = jtu.tree_unflatten(
        treedef, [recording(i, x) for i, x in enumerate(leaves)]
    )
    eqx.filter_eval_shape(
        lambda: solver.step(recording_terms, t0, t1, y0, args, solver_state, False)
    )

    def hoist(i, term):
        if i not in inputs:
            return term
        if isinstance(term, (diffrax.ODETerm, diffrax.ControlTerm)):
            vector_field = eqx.filter_closure_convert(term.vector_field, *inputs[i])
            return eqx.tree_at(lambda tm: tm.vector_field, term, vector_field)
        converted = eqx.filter_closure_convert(term.vf, *inputs[i])
        # (A function that closes over nothing is not converted: no `consts`.)
        closed_over = getattr(converted, "consts", ())
        return _HoistedTerm(term, converted) if _has_tracers(closed_over) else term

    return jtu.tree_unflatten(treedef, [hoist(i, x) for i, x in enumerate(leaves)])


_NONDIFF_CONTROLLER = (
    "`ReversibleAdjoint` differentiates with respect to `t0`, `t1`, `dt0`, "
    "`SaveAt(ts=...)`, `StepTo(ts=...)`, `y0`, `args` and the terms, but not with "
    "respect to the parameters of other step size controllers (such as "
    "`PIDController(dtmax=...)`). Use `adjoint=diffrax.RecursiveCheckpointAdjoint()` "
    "for that."
)


class ReversibleAdjoint(diffrax.AbstractAdjoint):
    """Backpropagate through [`diffrax.diffeqsolve`][] in O(1) memory by
    reconstructing the forward trajectory exactly, step by step, in reverse.

    Use it with an algebraically reversible solver
    ([`reversible_adjoint.ReversibleHeun`][], `diffrax.ReversibleHeun`, or any
    [`reversible_adjoint.AbstractReversibleSolver`][]). The forward pass is diffrax's
    own loop and keeps only the final state and the times of the accepted steps. The
    backward pass undoes one step at a time with the solver's exact inverse and
    differentiates it there, so the gradients are those of the discrete solve, the same
    as [`diffrax.RecursiveCheckpointAdjoint`][] computes (to round-off), while memory
    does not grow with the number of steps.

    Apart from the step times: one scalar per step (and one per time input
    differentiated). With checkpoints and `ConstantStepSize` or `StepTo`, whose times
    do not depend on `y`, the backward pass recomputes them instead, and keeps a few
    scalars per checkpoint.

    Gradients are available with respect to `y0`, `args`, parameters inside `terms`,
    `t0`, `t1`, `dt0`, `SaveAt(ts=...)` and arrays used by `SaveAt(fn=...)`. Every
    step size controller without jumps works: `ConstantStepSize`, `StepTo`,
    `PIDController` (rejected steps included), `PIDController(step_ts=...)`.

    **Drift check.** Reconstruction is exact in exact arithmetic only. In floating
    point its error grows with the number of steps, with how contractive the backward
    flow is, and for some solvers much faster (`Reversible(coupling=λ)` amplifies
    round-off by about `λ^-N` over `N` steps). Every backward pass ends where the
    solve began, so it measures its own drift there, at no extra cost: the relative
    error of the reconstructed initial `y` and solver state. Above `drift_rtol`, the
    gradient may be inaccurate, and `on_drift` says what happens: a
    [`reversible_adjoint.ReconstructionDriftWarning`][] (default), a run-time error, or
    nothing. Under `jax.vmap` the batch warns once, with its worst drift.

    **Checkpoints.** `checkpoint_every=K` stores `y` and the solver state after every
    `K`-th accepted step (`ceil(max_steps / K)` states). The backward pass restarts its
    reconstruction from each stored state, so round-off is amplified over at most `K`
    steps, and checks the drift at every checkpoint. Gradients are unchanged (to
    round-off); memory is O(`max_steps / K`) states instead of O(1). With
    `ConstantStepSize` or `StepTo` the step times are then not recorded either: the
    backward pass recomputes them, `K` at a time.

    The check bounds the reconstruction error, not how sensitive the gradient is to
    it: on a chaotic problem even a small drift can move the gradient (as round-off
    moves `RecursiveCheckpointAdjoint`'s own gradient there). Checkpoints keep the
    drift near round-off.

    Not supported, with a clear error at trace time: non-reversible solvers,
    `max_steps=None`, `SaveAt(dense=True)` (which stores every step), events,
    `UnsafeBrownianPath`, and controllers that make jumps (`jump_ts`).

    ??? cite "References"

        ```bibtex
        @article{kidger2021efficient,
            author={Kidger, Patrick and Foster, James and Li, Xuechen and Lyons, Terry},
            title={{E}fficient and {A}ccurate {G}radients for {N}eural {SDE}s},
            year={2021},
            journal={Advances in Neural Information Processing Systems}
        }

        @article{mccallum2024efficient,
            author={McCallum, Sam and Foster, James},
            title={Efficient, Accurate and Stable Gradients for Neural ODEs},
            year={2024},
            journal={arXiv:2410.11648}
        }
        ```
    """

    on_drift: Literal["warn", "raise", "ignore"] = eqx.field(
        default="warn", static=True
    )
    drift_rtol: float | None = eqx.field(default=None, static=True)
    checkpoint_every: int | None = eqx.field(default=None, static=True)

    def __check_init__(self):
        every = self.checkpoint_every
        if every is not None and not (isinstance(every, int) and every >= 1):
            raise ValueError(
                "`ReversibleAdjoint(checkpoint_every=...)` must be a positive integer "
                f"(or `None` for no checkpoints), but got {every!r}."
            )
        if self.on_drift not in ("warn", "raise", "ignore"):
            raise ValueError(
                "`ReversibleAdjoint(on_drift=...)` must be 'warn', 'raise' or "
                f"'ignore', but got {self.on_drift!r}."
            )
        if self.drift_rtol is not None and not self.drift_rtol > 0:
            raise ValueError(
                "`ReversibleAdjoint(drift_rtol=...)` must be positive (or `None` for "
                f"the default of the state's dtype), but got {self.drift_rtol!r}."
            )

    def rtol_for(self, y0) -> float:
        """The drift tolerance for a state like `y0`: `drift_rtol`, or by default
        the square root of the machine epsilon of its floating dtype."""
        if self.drift_rtol is not None:
            return self.drift_rtol
        return default_drift_rtol(_narrowest_dtype(y0))

    def loop(
        self,
        *,
        args,
        terms,
        solver,
        stepsize_controller,
        event,
        saveat,
        t0,
        t1,
        dt0,
        max_steps,
        throw,
        init_state,
        passed_solver_state,
        passed_controller_state,
        progress_meter,
    ):
        del throw, passed_solver_state, passed_controller_state
        reversible = as_reversible(solver)
        if event is not None:
            raise NotImplementedError(
                "`adjoint=ReversibleAdjoint()` does not support events: the solve's "
                "end would depend on a root find the reverse pass cannot invert. Use "
                "`adjoint=diffrax.RecursiveCheckpointAdjoint()` instead."
            )
        if saveat.dense:
            raise NotImplementedError(
                "`adjoint=ReversibleAdjoint()` does not support `SaveAt(dense=True)`: "
                "dense output stores every step, which is O(number of steps) memory "
                "and defeats the purpose of this adjoint. Save the times you need with "
                "`SaveAt(ts=...)` (their gradients are exact, times included), or use "
                "`adjoint=diffrax.RecursiveCheckpointAdjoint()`."
            )
        if max_steps is None:
            raise ValueError(
                "`adjoint=ReversibleAdjoint()` needs `diffeqsolve(..., max_steps=...)` "
                "to be an integer: it records the time of every accepted step, in a "
                "buffer of `max_steps` scalars."
            )
        if is_unsafe_sde(terms):
            raise ValueError(
                "`adjoint=ReversibleAdjoint()` does not support `UnsafeBrownianPath`: "
                "the backward pass re-queries the Brownian motion over each step, "
                "which needs a path that returns the same increment twice. Use "
                "`diffrax.VirtualBrownianTree` instead."
            )
        if is_sde(terms) and isinstance(solver, diffrax.AbstractItoSolver):
            raise NotImplementedError(
                f"`{type(solver).__name__}` converges to the Itô solution of an SDE, "
                "but `adjoint=ReversibleAdjoint()` supports Stratonovich SDEs only "
                "(the algebraically reversible schemes are Stratonovich). Write the "
                "SDE in Stratonovich form and use `ReversibleHeun`, or use "
                "`adjoint=diffrax.RecursiveCheckpointAdjoint()`."
            )
        if is_sde(terms) and isinstance(reversible, LeapfrogMidpoint):
            raise NotImplementedError(
                "`adjoint=ReversibleAdjoint()` does not support "
                f"`{type(solver).__name__}` on an SDE: its step takes the Brownian "
                "increment over two steps, from a time held in the solver state, and "
                "the backward pass differentiates the solver state, whereas the "
                "Brownian motion cannot be differentiated with respect to time. Use "
                "`reversible_adjoint.ReversibleHeun()`, which converges to the "
                "Stratonovich solution, or "
                "`adjoint=diffrax.RecursiveCheckpointAdjoint()`."
            )
        if init_state.made_jump is not False:
            raise NotImplementedError(
                "`adjoint=ReversibleAdjoint()` does not support "
                "`diffeqsolve(..., made_jump=...)`: a jump re-initialises the solver "
                "state, which cannot then be reconstructed in reverse."
            )
        if isinstance(stepsize_controller, diffrax.ClipStepSizeController) and (
            stepsize_controller.jump_ts is not None
        ):
            raise NotImplementedError(
                "`adjoint=ReversibleAdjoint()` does not support `jump_ts`: a jump "
                "re-initialises the solver state (reversible Heun re-evaluates its "
                "cached vector field), which cannot then be reconstructed in reverse. "
                "Use `step_ts=...` if the vector field is continuous there, or split "
                "the solve at each jump into separate `diffeqsolve` calls, or use "
                "`adjoint=diffrax.RecursiveCheckpointAdjoint()`."
            )

        if isinstance(stepsize_controller, diffrax.StepTo):
            step_to, stepsize_controller = stepsize_controller, None
        else:
            step_to = None
            stepsize_controller = eqxi.nondifferentiable(
                stepsize_controller, msg=_NONDIFF_CONTROLLER
            )
        terms = _hoist_closures(
            terms,
            solver,
            t0,
            init_state.tnext,
            init_state.y,
            args,
            init_state.solver_state,
        )
        subs, subs_treedef = jtu.tree_flatten(saveat.subs, is_leaf=_is_subsaveat)
        # Hoist the arrays that `fn` closes over (e.g. the time direction, or a model)
        # into its PyTree, so that they are differentiated like everything else.
        subs = [
            sub
            if sub.fn is save_y
            else eqx.tree_at(
                lambda s: s.fn,
                sub,
                eqx.filter_closure_convert(sub.fn, t0, init_state.y, args),
            )
            for sub in subs
        ]
        inputs = dict(
            y0=init_state.y,
            solver_state=init_state.solver_state,
            tprev=init_state.tprev,
            tnext=init_state.tnext,
            controller_state=init_state.controller_state,
            t0=t0,
            t1=t1,
            args=args,
            terms=terms,
            subs=subs,
            # `StepTo(ts=...)`: the step times are `ts` themselves, so they are
            # differentiated directly. Other controllers are not differentiated.
            step_to=step_to,
        )
        rest_of_state = eqx.tree_at(
            lambda s: (s.y, s.solver_state, s.tprev, s.tnext, s.controller_state),
            init_state,
            (None, None, None, None, None),
            is_leaf=_is_none,
        )
        static = _Static(
            adjoint=self,
            solver=solver,
            adjoint_term=AdjointTerm(reversible),
            stepsize_controller=stepsize_controller,
            subs_treedef=subs_treedef,
            saveat_flags=dict(
                dense=False,
                solver_state=saveat.solver_state,
                controller_state=saveat.controller_state,
                made_jump=saveat.made_jump,
            ),
            max_steps=max_steps,
            progress_meter=progress_meter,
            init_state=rest_of_state,
            dt0=None if dt0 is None else lax.stop_gradient(dt0),
        )
        final_state, aux_stats = _reversible_loop(inputs, static=static)
        # Integer outputs (`result`, step counts) carry no derivative. Saying so keeps
        # JAX from linearising what diffrax does with them (e.g. `throw=True`).
        final_state = jtu.tree_map(
            lambda x: (
                x
                if eqx.is_inexact_array(x) or not eqx.is_array(x)
                else lax.stop_gradient(x)
            ),
            final_state,
        )
        return final_state, aux_stats


ReversibleAdjoint.__init__.__doc__ = """**Arguments:**

- `on_drift`: what to do when the backward pass's reconstruction of the initial state
    has drifted by more than `drift_rtol`: `"warn"` (default) issues a
    [`reversible_adjoint.ReconstructionDriftWarning`][] saying how large the drift was,
    after how many steps, for which solver, and what to do about it; `"raise"` raises
    an error at run time (an `equinox` runtime error, as `diffeqsolve(..., throw=True)`
    does); `"ignore"` skips the check.
- `drift_rtol`: the largest relative reconstruction error accepted. `None` (default)
    uses the square root of the machine epsilon of the state's floating dtype (1.5e-8
    in float64, 3.5e-4 in float32), which healthy solves stay far below; see
    [`reversible_adjoint.round_trip_error`][] to measure a solve's drift.
- `checkpoint_every`: store the state after every `checkpoint_every`-th accepted step
    and restart the reconstruction from there, bounding drift at the cost of
    `ceil(max_steps / checkpoint_every)` stored states. `None` (default): no
    checkpoints, O(1) memory.
"""
