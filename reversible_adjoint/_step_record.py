"""Recording the accepted step times, and how they depend on the time inputs.

The forward pass is diffrax's own loop with the user's solver. To undo it, the backward
pass needs the times of the accepted steps; to differentiate with respect to `t0`, `t1`,
`dt0` (anything that moves the step grid) it also needs how each accepted time depends
on them. In the discrete solve that `RecursiveCheckpointAdjoint` differentiates, the
times depend only on times: step-size controllers stop gradients through the
error-based factor, so `y` never feeds back into the grid. The grid is a small scalar
recurrence

    (tprev, tnext, controller_state) -> controller.adapt_step_size -> clip to t1

driven by data-dependent but gradient-free decisions (accept or reject, the factor).

`RecordingController` wraps the user's controller. On every call (rejected steps
included) it pushes the tangents of that recurrence forward along the `D` time inputs
that are being differentiated ("directions": `tprev` and `tnext` at the start, the
inexact leaves of the initial controller state, and the loop's `t1`), and on every
accepted step it records the new time and its tangent. The backward pass then turns
the cotangent of each accepted time into cotangents of the directions with one dot
product. With `D = 0` (no time input differentiated) only the times are recorded.

What is recorded depends on the controller:
- In general (an adaptive controller, whose decisions depend on `y`): every accepted
  time, in a `StepRecord` of `max_steps + 1` entries; memory `max_steps * (1 + D)`
  scalars, no states.
- With checkpoints, for `ConstantStepSize` and `StepTo`, whose grid depends on the
  time inputs only: a `GridRecord`, which keeps the state of the recurrence at the
  start of every stretch of `every = checkpoint_every` accepted steps. The backward
  pass undoes the solve stretch by stretch, last to first, and runs the controller
  again over each stretch to recompute its times (`GridRecord.stretch`): memory
  `O(max_steps / every + every)` scalars, and one more controller call per step, on
  scalars. The recomputed times are bit for bit those of the forward pass
  (`tests/test_replayed_grid.py`): both run the same computation on opaque inputs.

The loop clips `tprev` and `tnext` to `t1` after each controller call. The wrapper
applies the same clip itself, so the tangents include it; the loop's own clip is then
the identity. The recorded tangent of an accepted time is that of the step's end as
the step used it, before the clip: the two differ only when the last step ends exactly
at `t1` without having been clipped there (a first step with `t0 + dt0 == t1`), and
then the final time saved by the loop, which is clipped, takes the tangent of the
final `tprev` instead.
"""

import diffrax
import equinox as eqx
import jax
import jax.lax as lax
import jax.numpy as jnp
import jax.tree_util as jtu
from jaxtyping import Array, PyTree

from ._diffrax_internals import AbstractWrappedSolver, clip_floor, clip_to_end


class StepRecord(eqx.Module):
    """Accepted step times and their tangents (shape `(size, D)`) along the
    differentiated time directions: `time(k)` is `t_k`, for `k` from `offset` to
    `offset + size - 1`. Recorded in full (`offset = 0`, `t_0 = t0 < t_1 < ... <
    t_num_accepted`, `max_steps + 1` entries), or one stretch of a `GridRecord`."""

    ts: Array
    tangents: Array
    num_accepted: Array
    offset: Array | int = 0

    def time(self, k):
        return self.ts[k - self.offset]

    def tangent(self, k):
        return self.tangents[k - self.offset]

    def write(self, keep, t, tangent, tnext, inner, time_tangents):
        """Records `t` (and its tangent) as the next accepted time, if `keep`."""
        del tnext, inner, time_tangents
        index = self.num_accepted + 1
        ts = self.ts.at[index].set(jnp.where(keep, t, self.ts[index]))
        if tangent is not None:
            tangents = self.tangents.at[index].set(
                jnp.where(keep, tangent, self.tangents[index])
            )
        else:
            tangents = self.tangents
        num_accepted = self.num_accepted + jnp.where(keep, 1, 0)
        return StepRecord(ts, tangents, num_accepted)

    def stretch(self, c, controller):
        """The times of stretch `c`: all of them."""
        del c, controller
        return self


def replays_grid(controller) -> bool:
    """Whether the accepted times of `controller` depend on the time inputs only (not
    on `y`), so that the backward pass can recompute them exactly as the forward loop
    computed them instead of recording each one."""
    return type(controller) in (diffrax.ConstantStepSize, diffrax.StepTo)


class GridRecord(eqx.Module):
    """The record of a step grid that does not depend on `y` (`replays_grid`): only
    every `every`-th point of it. The solve is split into stretches of `every`
    accepted steps; for stretch `c` (steps `c * every` to `(c + 1) * every - 1`) this
    keeps the time before it and the time it starts at (`ends[c]`, with tangents),
    and the rest of the state of the time recurrence at its start (`starts`: `tnext`,
    the controller state and their tangents). `stretch(c, ...)` runs the recurrence
    again from there. Memory: `O(max_steps / every)` scalars, and `O(every)` for the
    stretch being replayed."""

    every: int = eqx.field(static=True)
    ends: Array
    end_tangents: Array
    starts: PyTree
    num_accepted: Array

    def write(self, keep, t, tangent, tnext, inner, time_tangents):
        """Records what it needs of the next accepted step, ending at `t`, if `keep`."""
        n = self.num_accepted + 1
        record = self.with_time(n, keep, t, tangent)
        due = keep & (n % self.every == 0)
        starts = _write_slot(
            record.starts, n // self.every, due, (tnext, inner, time_tangents)
        )
        num_accepted = self.num_accepted + jnp.where(keep, 1, 0)
        return GridRecord(
            self.every, record.ends, record.end_tangents, starts, num_accepted
        )

    def with_time(self, n, keep, t, tangent):
        """Records `t_n = t` where a stretch needs it, if `keep`: as the time before
        stretch `(n + 1) / every` and as the start of stretch `n / every`, if these
        are integers."""
        every = self.every
        if tangent is None:
            tangent = jnp.zeros(self.end_tangents.shape[2:], self.end_tangents.dtype)
        ends = self.ends
        end_tangents = self.end_tangents
        for due, slot, column in (
            (keep & ((n + 1) % every == 0), (n + 1) // every, 0),
            (keep & (n % every == 0), n // every, 1),
        ):
            ends = ends.at[slot, column].set(jnp.where(due, t, ends[slot, column]))
            end_tangents = end_tangents.at[slot, column].set(
                jnp.where(due, tangent, end_tangents[slot, column])
            )
        return GridRecord(every, ends, end_tangents, self.starts, self.num_accepted)

    def stretch(self, c, controller: "RecordingController") -> StepRecord:
        """The times `t_k` (and tangents) for `k` from `c * every - 1` to
        `(c + 1) * every`: the times stretch `c` needs, recomputed by `controller`
        (the `RecordingController` of the forward pass)."""
        tprev = self.ends[c, 1]
        tnext, inner, time_tangents = jtu.tree_map(lambda x: x[c], self.starts)

        def advance(carry, _):
            tprev, tnext, inner, time_tangents = carry
            _, tprev, tnext, inner, time_tangents, step_end_tangent, _ = (
                controller.advance(tprev, tnext, inner, time_tangents)
            )
            if step_end_tangent is None:
                step_end_tangent = jnp.zeros(self.end_tangents.shape[2:], tprev.dtype)
            return (tprev, tnext, inner, time_tangents), (tprev, step_end_tangent)

        init = (tprev, tnext, inner, time_tangents)
        _, (ts, tangents) = lax.scan(advance, init, length=self.every)
        return StepRecord(
            jnp.concatenate([self.ends[c], ts]),
            jnp.concatenate([self.end_tangents[c], tangents]),
            self.num_accepted,
            c * self.every - 1,
        )


def _write_slot(buffers, slot, due, new):
    """Writes `new` into entry `slot` of each array of `buffers`, if `due`; leaves
    that are not arrays are kept once, unstacked."""

    def write(buffer, x):
        if not eqx.is_array(buffer):
            return buffer
        return buffer.at[slot].set(jnp.where(due, x, buffer[slot]))

    return jtu.tree_map(write, buffers, new)


class Checkpoints(eqx.Module):
    """`y` and the solver state after every `every`-th accepted step: entry `j` holds
    them after step `(j + 1) * every` (counting from 1), for `ceil(max_steps / every)`
    entries. Non-array leaves of the state are kept once, unstacked."""

    every: int = eqx.field(static=True)
    states: PyTree

    def write(self, num_accepted, keep, y1, solver_state1):
        """Stores `(y1, solver_state1)` if an accepted step brings the count of
        accepted steps from `num_accepted` to a multiple of `every`."""
        count = num_accepted + 1
        due = keep & (count % self.every == 0)
        slot = jnp.maximum(count // self.every - 1, 0)
        states = _write_slot(self.states, slot, due, (y1, solver_state1))
        return Checkpoints(self.every, states)

    def read(self, j):
        """`(y, solver_state)` of entry `j`."""
        return jtu.tree_map(lambda x: x[j] if eqx.is_array(x) else x, self.states)


def init_checkpoints(every, max_steps, y0, solver_state):
    size = -(-max_steps // every)
    states = jtu.tree_map(
        lambda x: (
            jnp.zeros((size, *jnp.shape(x)), jnp.result_type(x))
            if eqx.is_array(x)
            else x
        ),
        (y0, solver_state),
    )
    return Checkpoints(every, states)


class RecordingState(eqx.Module):
    inner: PyTree
    # Tangents of (tprev, tnext, inexact leaves of `inner`), each of shape (D, *shape).
    time_tangents: PyTree
    record: StepRecord | GridRecord
    checkpoints: Checkpoints | None


def _split(controller_state):
    return eqx.partition(controller_state, eqx.is_inexact_array)


class RecordingController(diffrax.AbstractStepSizeController):
    """Wraps a step size controller; records accepted step times and their tangents."""

    controller: diffrax.AbstractStepSizeController
    t1: Array
    t1_tangent: Array
    t1_clip_floor: Array

    def wrap(self, direction):
        raise AssertionError("`RecordingController` is created after `wrap`.")

    def init(self, terms, t0, t1, y0, dt0, args, func, error_order):
        raise AssertionError("`RecordingController` is created after `init`.")

    def advance(
        self,
        tprev,
        tnext,
        inner,
        time_tangents,
        y0=None,
        y1_candidate=None,
        args=None,
        y_error=None,
        error_order=None,
    ):
        """One call of the wrapped controller followed by the loop's clip to `t1`, and
        the tangents of the result. Returns `(keep, tprev, tnext, inner,
        time_tangents, step_end_tangent, aux)`: the new `tprev`, `tnext` and
        controller state, their tangents (`None` without directions), the tangent of
        the end of the step as the step used it, and `(made_jump, result)`.

        The backward pass calls this again on stored values to recompute the grid,
        so the result must not depend on what XLA knows of the inputs: if some are
        constants in the forward pass (`t0` and `t1` given as Python floats), it may
        fold them and round differently. An optimisation barrier hides them."""
        arrays, rest = eqx.partition(
            (self, tprev, tnext, inner, time_tangents), eqx.is_array
        )
        self, tprev, tnext, inner, time_tangents = eqx.combine(
            lax.optimization_barrier(arrays), rest
        )
        inner_dynamic, inner_static = _split(inner)

        def time_map(tprev, tnext, dynamic, loop_t1):
            (keep, next_tprev, next_tnext, made_jump, inner, result) = (
                self.controller.adapt_step_size(
                    tprev,
                    tnext,
                    y0,
                    y1_candidate,
                    args,
                    y_error,
                    error_order,
                    eqx.combine(dynamic, inner_static),
                )
            )
            # The end of an accepted step, as the step itself used it.
            step_end = next_tprev
            # Exactly the clip diffrax's loop applies after this call.
            next_tprev = jnp.minimum(next_tprev, loop_t1)
            next_tnext = clip_to_end(
                next_tprev, next_tnext, loop_t1, self.t1_clip_floor, keep
            )
            next_dynamic, next_static = _split(inner)
            return (next_tprev, next_tnext, next_dynamic, step_end), (
                keep,
                made_jump,
                next_static,
                result,
            )

        primals = (tprev, tnext, inner_dynamic, self.t1)
        (next_tprev, next_tnext, next_dynamic, _), aux = time_map(*primals)
        keep, made_jump, next_static, result = aux
        step_end_tangent = None
        if time_tangents is not None:
            _, linear = jax.linearize(lambda *p: time_map(*p)[0], *primals)
            *time_tangents, step_end_tangent = jax.vmap(linear)(
                *time_tangents, self.t1_tangent
            )
            time_tangents = tuple(time_tangents)
        inner = eqx.combine(next_dynamic, next_static)
        return (
            keep,
            next_tprev,
            next_tnext,
            inner,
            time_tangents,
            step_end_tangent,
            (made_jump, result),
        )

    def adapt_step_size(
        self, t0, t1, y0, y1_candidate, args, y_error, error_order, controller_state
    ):
        checkpoints = controller_state.checkpoints
        if checkpoints is not None:
            # `ReportingSolver` passes the step's new solver state along here.
            y_error, solver_state1 = y_error
        keep, next_tprev, next_tnext, inner, tangents, step_end_tangent, aux = (
            self.advance(
                t0,
                t1,
                controller_state.inner,
                controller_state.time_tangents,
                y0,
                y1_candidate,
                args,
                y_error,
                error_order,
            )
        )
        made_jump, result = aux
        if made_jump is not False:
            raise NotImplementedError(
                "`ReversibleAdjoint` does not support step size controllers that make "
                "jumps (e.g. `PIDController(jump_ts=...)`): a jump re-initialises the "
                "solver state, which cannot then be reconstructed in reverse. Use "
                "`step_ts=...` instead if the vector field is continuous there, or "
                "split the solve at the jump into several `diffeqsolve`s, or use "
                "`adjoint=diffrax.RecursiveCheckpointAdjoint()`."
            )
        record = controller_state.record
        if checkpoints is not None:
            checkpoints = checkpoints.write(
                record.num_accepted, keep, y1_candidate, solver_state1
            )
        record = record.write(
            keep, next_tprev, step_end_tangent, next_tnext, inner, tangents
        )
        state = RecordingState(
            inner=inner, time_tangents=tangents, record=record, checkpoints=checkpoints
        )
        return keep, next_tprev, next_tnext, made_jump, state, result


def init_recording(
    controller,
    t1,
    tprev,
    tnext,
    controller_state,
    max_steps,
    tangents,
    t1_tangent,
    checkpoints=None,
    replay_every=None,
):
    """Wraps `controller` and its initial state for a recording forward pass.

    `tangents` are the initial tangents of `(tprev, tnext, inexact leaves of
    controller_state)` as a tuple, each of shape `(D, *shape)`, or `None` when
    `D = 0`; `t1_tangent` is the tangent of `t1`, of shape `(D,)`. `checkpoints`
    (from `init_checkpoints`) also stores states, and then the solver must be wrapped
    in `ReportingSolver`. With `replay_every` (only for a controller that
    `replays_grid`), the record is a `GridRecord` of stretches of that many steps;
    otherwise every accepted time is recorded.
    """
    num_directions = t1_tangent.shape[0]
    time_dtype = jnp.result_type(tprev)
    first_tangent = jnp.zeros(num_directions, dtype=time_dtype)
    if tangents is not None:
        first_tangent = tangents[0].astype(time_dtype)
    if replay_every is None:
        ts = jnp.full(max_steps + 1, jnp.inf, dtype=time_dtype).at[0].set(tprev)
        record_tangents = jnp.zeros((max_steps + 1, num_directions), dtype=time_dtype)
        record_tangents = record_tangents.at[0].set(first_tangent)
        record = StepRecord(ts, record_tangents, jnp.array(0, dtype=jnp.int32))
    else:
        size = max_steps // replay_every + 2
        # Stretch 0 starts at `t0`; the time before it is taken to be `t0` too.
        ends = jnp.full((size, 2), jnp.inf, dtype=time_dtype).at[0, 0].set(tprev)
        end_tangents = jnp.zeros((size, 2, num_directions), dtype=time_dtype)
        end_tangents = end_tangents.at[0, 0].set(first_tangent)
        start = (tnext, controller_state, tangents)
        starts = jtu.tree_map(
            lambda x: jnp.zeros((size, *jnp.shape(x)), jnp.result_type(x)).at[0].set(x),
            start,
        )
        record = GridRecord(
            replay_every, ends, end_tangents, starts, jnp.array(0, dtype=jnp.int32)
        ).with_time(0, True, tprev, first_tangent)
    wrapped = recording_controller(controller, t1, t1_tangent)
    state = RecordingState(controller_state, tangents, record, checkpoints)
    return wrapped, state


def recording_controller(controller, t1, t1_tangent):
    """`controller` wrapped to record (or, in the backward pass, replay) its grid."""
    return RecordingController(controller, t1, t1_tangent, clip_floor(t1))


class ReportingSolver(AbstractWrappedSolver):
    """Wraps a solver so that each step hands its new solver state to the
    `RecordingController`, alongside the error estimate (the only output of a step
    that diffrax's loop passes to the step size controller). The solve is otherwise
    unchanged. This relies on diffrax 0.7's loop doing nothing with `y_error` but
    mapping NaN to inf and handing it to the controller (`RecordingController`, which
    unpacks it before the user's controller sees it)."""

    solver: diffrax.AbstractSolver

    @property
    def term_structure(self):
        return self.solver.term_structure

    @property
    def interpolation_cls(self):
        return self.solver.interpolation_cls

    @property
    def term_compatible_contr_kwargs(self):
        return self.solver.term_compatible_contr_kwargs

    def order(self, terms):
        return self.solver.order(terms)

    def strong_order(self, terms):
        return self.solver.strong_order(terms)

    def error_order(self, terms):
        return self.solver.error_order(terms)

    def init(self, terms, t0, t1, y0, args):
        return self.solver.init(terms, t0, t1, y0, args)

    def step(self, terms, t0, t1, y0, args, solver_state, made_jump):
        y1, y_error, dense_info, solver_state1, result = self.solver.step(
            terms, t0, t1, y0, args, solver_state, made_jump
        )
        return y1, (y_error, solver_state1), dense_info, solver_state1, result

    def func(self, terms, t0, y0, args):
        return self.solver.func(terms, t0, y0, args)


def as_tangent_tuple(tprev, tnext, controller_state):
    """The tuple `(tprev, tnext, inexact part of controller_state)` whose tangents the
    recording controller pushes forward."""
    dynamic, _ = _split(controller_state)
    return tprev, tnext, dynamic
