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
- For `StepTo` and `ConstantStepSize` (from diffrax 0.7.1), whose `k`-th accepted
  time is a function of a step counter in the controller state and of the time
  inputs: nothing per step (`PredictedRecord`). The backward pass calls the controller
  on the state it had after `k - 2` calls (the initial one, its counter advanced) to
  get `t_k` and its tangent, which the forward pass checked to be bit for bit those
  of the loop. Memory: a few scalars, whatever the number of steps.

The loop clips `tprev` and `tnext` to `t1` after each controller call. The wrapper
applies the same clip itself, so the tangents include it; the loop's own clip is then
the identity. The recorded tangent of an accepted time is that of the step's end as
the step used it, before the clip: the two differ only when the last step ends exactly
at `t1` without having been clipped there (a first step with `t0 + dt0 == t1`), and
then the final time saved by the loop, which is clipped, takes the tangent of the
final `tprev` instead.
"""

import dataclasses

import diffrax
import equinox as eqx
import jax
import jax.lax as lax
import jax.numpy as jnp
import jax.tree_util as jtu
from jaxtyping import Array, PyTree

from ._diffrax_internals import AbstractWrappedSolver, clip_floor, clip_to_end


class StepRecord(eqx.Module):
    """Accepted step times and their tangents (shape `(max_steps + 1, D)`) along the
    differentiated time directions: `time(k)` is `t_k`, with `t_0 = t0 < t_1 < ... <
    t_num_accepted`."""

    ts: Array
    tangents: Array
    num_accepted: Array

    def time(self, k):
        return self.ts[k]

    def tangent(self, k):
        return self.tangents[k]

    def write(self, keep, t, tangent, tnext, inner, time_tangents, controller):
        """Records `t` (and its tangent) as the next accepted time, if `keep`."""
        del tnext, inner, time_tangents, controller
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


def _with_array_counters(controller_state):
    """`controller_state` with its Python integers (`StepTo`'s initial index) as
    arrays."""
    return jtu.tree_map(
        lambda x: jnp.asarray(x) if isinstance(x, int) else x, controller_state
    )


def _split_counters(controller_state):
    """`(counters, rest)`: the integer leaves of a controller state (as arrays), and
    the rest."""
    is_counter = lambda x: eqx.is_array(x) and jnp.issubdtype(x.dtype, jnp.integer)
    return eqx.partition(_with_array_counters(controller_state), is_counter)


def predicts_grid(controller, controller_state) -> bool:
    """Whether each accepted time of `controller` is a function of a step counter in
    its state (and of the time inputs), so that the backward pass can compute any of
    them directly (`PredictedRecord`): `StepTo` (an index into its `ts`), and
    `ConstantStepSize` from diffrax 0.7.1, whose `k`-th step ends at
    `t0 + (t1 - t0) k / n` (before, it added `dt0` to the previous time, and its state
    holds no counter)."""
    if type(controller) not in (diffrax.ConstantStepSize, diffrax.StepTo):
        return False
    counters, _ = _split_counters(controller_state)
    return len(jtu.tree_leaves(counters)) > 0


class PredictedRecord(eqx.Module):
    """The record of a step grid that `predicts_grid`: nothing per step.

    The loop's time recurrence is `(tprev, tnext, state) -> (tnext, g(state),
    h(state))`, clipped to `t1`, where `h` advances the integer counters of the
    controller state by a fixed amount and leaves its other leaves alone. So the
    state after `j` calls is the initial one with its counters advanced `j` times,
    and the accepted time `t_k` (`k >= 2`) is the `tnext` that the controller computes
    from the state after `k - 2` calls, clipped, as the loop computes it: one call of
    the controller, whatever `k`. `t_0` and `t_1` (the initial `tprev` and `tnext`)
    are kept as they are.

    The forward pass checks every accepted time and its tangent against this
    prediction, bit for bit, and flags any mismatch (`mismatch`), which the backward
    pass turns into an error rather than use a time it cannot reproduce. Memory: a
    few scalars, whatever the number of steps."""

    start_ts: Array
    start_tangents: Array
    state0: PyTree
    state0_tangents: PyTree
    counter_step: PyTree
    num_accepted: Array
    mismatch: Array
    controller: "RecordingController | None" = None

    def _predict(self, k, controller):
        """The accepted time `t_k` (`k >= 2`) and its tangent, as the loop computes
        them from the state after `k - 2` controller calls."""
        counters0, rest = _split_counters(self.state0)
        counters = jtu.tree_map(
            lambda c, s: c + (k - 2).astype(c.dtype) * s, counters0, self.counter_step
        )
        state = eqx.combine(counters, rest)
        # `tprev` and `tnext` are not inputs of the prediction (the controllers that
        # `predicts_grid` do not use them): NaN, so that a controller that did
        # would fail the forward pass's check rather than pass it by chance.
        nan = jnp.full((), jnp.nan, self.start_ts.dtype)
        tangents = None
        if self.start_tangents.shape[-1] > 0:  # Some time input is differentiated.
            zero = jnp.zeros_like(self.start_tangents[0])
            tangents = (zero, zero, self.state0_tangents)
        _, _, tnext, _, tangents, _, _ = controller.advance(nan, nan, state, tangents)
        # Exactly how the loop's next call turns `tnext` into the accepted time.
        t = jnp.minimum(tnext, controller.t1)
        tangent = self.start_tangents[0] if tangents is None else tangents[1]
        return t, tangent

    def _lookup(self, k):
        t, tangent = self._predict(k, self.controller)
        first = jnp.clip(k, 0, 1)
        t = jnp.where(k < 2, self.start_ts[first], t)
        tangent = jnp.where(k < 2, self.start_tangents[first], tangent)
        return t, tangent

    def time(self, k):
        return self._lookup(k)[0]

    def tangent(self, k):
        return self._lookup(k)[1]

    def write(self, keep, t, tangent, tnext, inner, time_tangents, controller):
        """Checks the next accepted time, `t`, against the prediction, if `keep`;
        after the first step, keeps `t_1` and how far a call advances the
        counters."""
        del tnext, time_tangents
        n = self.num_accepted + 1
        if tangent is None:
            tangent = jnp.zeros_like(self.start_tangents[0])
        first = keep & (n == 1)
        start_ts = self.start_ts.at[1].set(jnp.where(first, t, self.start_ts[1]))
        start_tangents = self.start_tangents.at[1].set(
            jnp.where(first, tangent, self.start_tangents[1])
        )
        counters1, _ = _split_counters(inner)
        counters0, _ = _split_counters(self.state0)
        counter_step = jtu.tree_map(
            lambda c1, c0, s: jnp.where(first, c1 - c0, s),
            counters1,
            counters0,
            self.counter_step,
        )
        record = dataclasses.replace(
            self,
            start_ts=start_ts,
            start_tangents=start_tangents,
            counter_step=counter_step,
        )
        predicted_t, predicted_tangent = record._predict(n, controller)
        agrees = (predicted_t == t) & jnp.all(predicted_tangent == tangent)
        mismatch = self.mismatch | (keep & (n >= 2) & ~agrees)
        num_accepted = self.num_accepted + jnp.where(keep, 1, 0)
        return dataclasses.replace(record, num_accepted=num_accepted, mismatch=mismatch)

    def with_controller(self, controller):
        """The record, able to compute its times with `controller` (the
        `RecordingController` of the forward pass)."""
        return dataclasses.replace(self, controller=controller)


def _write_slot(buffers, slot, due, new):
    """Writes `new` into entry `slot` of each array of `buffers`, if `due`; leaves
    that are not arrays are kept once, unstacked."""

    def write(buffer, x):
        if not eqx.is_array(buffer):
            return buffer
        return buffer.at[slot].set(jnp.where(due, x, buffer[slot]))

    return jtu.tree_map(write, buffers, new)


# How many states `ReversibleAdjoint` keeps by default to restart its reconstruction
# from (`ReversibleAdjoint(checkpoints=...)`).
DEFAULT_CHECKPOINTS = 16


class Checkpoints(eqx.Module):
    """`y` and the solver state after some of the accepted steps, from which the
    backward pass restarts its reconstruction: after every `every`-th step (counting
    from 1). Non-array leaves of the state are kept once, unstacked.

    Two layouts:

    - fixed spacing (`ReversibleAdjoint(checkpoint_every=...)`): `every` is that
        spacing, and entry `j` holds the state after step `(j + 1) * every`, for
        `ceil(max_steps / every)` entries;
    - thinned (`ReversibleAdjoint(checkpoints=...)`): a fixed number of entries. The
        spacing starts at one step and doubles whenever every entry is taken: the
        states after odd multiples of the old spacing are then dropped, and their
        entries reused. `counts[j]` is the step after which entry `j` was stored (-1
        if none), so memory is constant in the number of steps and the stretches
        between checkpoints are at most `2 * num_accepted / len(counts)` steps long.
    """

    every: Array
    states: PyTree
    counts: Array | None

    def write(self, num_accepted, keep, y1, solver_state1):
        """Stores `(y1, solver_state1)` if an accepted step brings the count of
        accepted steps from `num_accepted` to a multiple of `every`."""
        count = (num_accepted + 1).astype(self.every.dtype)
        if self.counts is None:
            due = keep & (count % self.every == 0)
            slot = jnp.maximum(count // self.every - 1, 0)
            states = _write_slot(self.states, slot, due, (y1, solver_state1))
            return Checkpoints(self.every, states, None)
        counts, every = self.counts, self.every
        due = keep & (count % every == 0)
        # Every entry taken: double the spacing, which frees those stored after odd
        # multiples of the old one (the step just taken is one of them or not).
        full = due & jnp.all((counts >= 0) & (counts % every == 0))
        every = jnp.where(full, 2 * every, every)
        due = due & (count % every == 0)
        free = (counts < 0) | (counts % every != 0)
        slot = jnp.argmax(free)
        states = _write_slot(self.states, slot, due, (y1, solver_state1))
        counts = counts.at[slot].set(jnp.where(due, count, counts[slot]))
        return Checkpoints(every, states, counts)

    def read(self, j):
        """`(y, solver_state)` after step `(j + 1) * every`."""
        if self.counts is None:
            slot = j
        else:
            slot = jnp.argmax(
                self.counts == (j + 1).astype(self.every.dtype) * self.every
            )
        return jtu.tree_map(lambda x: x[slot] if eqx.is_array(x) else x, self.states)


def init_checkpoints(every, slots, max_steps, y0, solver_state):
    """Empty `Checkpoints`: every `every` steps if `every` is given, else thinned in
    `slots` entries."""
    size = -(-max_steps // every) if every is not None else slots
    states = jtu.tree_map(
        lambda x: (
            jnp.zeros((size, *jnp.shape(x)), jnp.result_type(x))
            if eqx.is_array(x)
            else x
        ),
        (y0, solver_state),
    )
    if every is not None:
        return Checkpoints(jnp.asarray(every, jnp.int32), states, None)
    counts = jnp.full((slots,), -1, jnp.int32)
    return Checkpoints(jnp.ones((), jnp.int32), states, counts)


class RecordingState(eqx.Module):
    inner: PyTree
    # Tangents of (tprev, tnext, inexact leaves of `inner`), each of shape (D, *shape).
    time_tangents: PyTree
    record: StepRecord | PredictedRecord
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
        solver_state1 = None
        if checkpoints is not None:
            # `ReportingSolver` passes the step's new solver state along here.
            y_error, solver_state1 = y_error  # pyright: ignore[reportGeneralTypeIssues]
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
            keep, next_tprev, step_end_tangent, next_tnext, inner, tangents, self
        )
        state = RecordingState(
            inner=inner, time_tangents=tangents, record=record, checkpoints=checkpoints
        )
        return keep, next_tprev, next_tnext, made_jump, state, result


def init_recording(
    controller,
    t1,
    tprev,
    controller_state,
    max_steps,
    tangents,
    t1_tangent,
    checkpoints=None,
    predict=False,
):
    """Wraps `controller` and its initial state for a recording forward pass.

    `tangents` are the initial tangents of `(tprev, tnext, inexact leaves of
    controller_state)` as a tuple, each of shape `(D, *shape)`, or `None` when
    `D = 0`; `t1_tangent` is the tangent of `t1`, of shape `(D,)`. `checkpoints`
    (from `init_checkpoints`) also stores states, and then the solver must be wrapped
    in `ReportingSolver`. With `predict` (only for a controller that
    `predicts_grid`), the record is a `PredictedRecord`; otherwise every accepted
    time is recorded (`StepRecord`).
    """
    num_directions = t1_tangent.shape[0]
    time_dtype = jnp.result_type(tprev)
    first_tangent = jnp.zeros(num_directions, dtype=time_dtype)
    if tangents is not None:
        first_tangent = tangents[0].astype(time_dtype)
    if predict:
        start_ts = jnp.full(2, jnp.inf, dtype=time_dtype).at[0].set(tprev)
        start_tangents = jnp.zeros((2, num_directions), dtype=time_dtype)
        counters, _ = _split_counters(controller_state)
        record = PredictedRecord(
            start_ts=start_ts,
            start_tangents=start_tangents.at[0].set(first_tangent),
            state0=_with_array_counters(controller_state),
            state0_tangents=None if tangents is None else tangents[2],
            counter_step=jtu.tree_map(jnp.zeros_like, counters),
            num_accepted=jnp.array(0, dtype=jnp.int32),
            mismatch=jnp.array(False),
        )
    else:
        ts = jnp.full(max_steps + 1, jnp.inf, dtype=time_dtype).at[0].set(tprev)
        record_tangents = jnp.zeros((max_steps + 1, num_directions), dtype=time_dtype)
        record_tangents = record_tangents.at[0].set(first_tangent)
        record = StepRecord(ts, record_tangents, jnp.array(0, dtype=jnp.int32))
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
    def interpolation_cls(self):  # pyright: ignore[reportIncompatibleMethodOverride]
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
