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
accepted step it records the new time and its tangent in a buffer of `max_steps + 1`
entries. The backward pass then turns the cotangent of each accepted time into
cotangents of the directions with one dot product. Memory: `max_steps * (1 + D)`
scalars; no states. With `D = 0` (no time input differentiated) only the times are
recorded.

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
import equinox.internal as eqxi
import jax
import jax.numpy as jnp
import jax.tree_util as jtu
from diffrax._integrate import _clip_to_end
from diffrax._solver.base import AbstractWrappedSolver
from jaxtyping import Array, PyTree


def clip_floor(t1):
    """`t1` less 100 ULPs: the threshold above which diffrax's loop rounds `tnext` to
    `t1` (same computation as the loop's)."""
    floor = t1
    for _ in range(100):
        floor = eqxi.prevbefore(floor)
    return floor


class StepRecord(eqx.Module):
    """The accepted step times `ts[0] = t0 < ts[1] < ... < ts[num_accepted]` and their
    tangents (shape `(max_steps + 1, D)`) along the differentiated time directions."""

    ts: Array
    tangents: Array
    num_accepted: Array


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

        def write_leaf(buffer, new):
            if not eqx.is_array(buffer):
                return buffer
            return buffer.at[slot].set(jnp.where(due, new, buffer[slot]))

        states = jtu.tree_map(write_leaf, self.states, (y1, solver_state1))
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
    record: StepRecord
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

    def adapt_step_size(
        self, t0, t1, y0, y1_candidate, args, y_error, error_order, controller_state
    ):
        checkpoints = controller_state.checkpoints
        if checkpoints is not None:
            # `ReportingSolver` passes the step's new solver state along here.
            y_error, solver_state1 = y_error
        inner_dynamic, inner_static = _split(controller_state.inner)

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
            next_tnext = _clip_to_end(
                next_tprev, next_tnext, loop_t1, self.t1_clip_floor, keep
            )
            next_dynamic, next_static = _split(inner)
            return (next_tprev, next_tnext, next_dynamic, step_end), (
                keep,
                made_jump,
                next_static,
                result,
            )

        primals = (t0, t1, inner_dynamic, self.t1)
        (next_tprev, next_tnext, next_dynamic, _), aux = time_map(*primals)
        keep, made_jump, next_static, result = aux
        if made_jump is not False:
            raise NotImplementedError(
                "`ReversibleAdjoint` does not support step size controllers that make "
                "jumps (e.g. `PIDController(jump_ts=...)`): a jump re-initialises the "
                "solver state, which cannot then be reconstructed in reverse. Use "
                "`step_ts=...` instead if the vector field is continuous there, or "
                "split the solve at the jump into several `diffeqsolve`s, or use "
                "`adjoint=diffrax.RecursiveCheckpointAdjoint()`."
            )

        tangents = controller_state.time_tangents
        if tangents is not None:
            _, linear = jax.linearize(lambda *p: time_map(*p)[0], *primals)
            *tangents, step_end_tangent = jax.vmap(linear)(*tangents, self.t1_tangent)
            tangents = tuple(tangents)

        record = controller_state.record
        index = record.num_accepted + 1
        new_ts = jnp.where(keep, next_tprev, record.ts[index])
        ts = record.ts.at[index].set(new_ts)
        if tangents is None:
            record_tangents = record.tangents
        else:
            new_tangent = jnp.where(keep, step_end_tangent, record.tangents[index])
            record_tangents = record.tangents.at[index].set(new_tangent)
        num_accepted = record.num_accepted + jnp.where(keep, 1, 0)
        if checkpoints is not None:
            checkpoints = checkpoints.write(
                record.num_accepted, keep, y1_candidate, solver_state1
            )
        record = StepRecord(ts, record_tangents, num_accepted)

        state = RecordingState(
            inner=eqx.combine(next_dynamic, next_static),
            time_tangents=tangents,
            record=record,
            checkpoints=checkpoints,
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
):
    """Wraps `controller` and its initial state for a recording forward pass.

    `tangents` are the initial tangents of `(tprev, tnext, inexact leaves of
    controller_state)` as a tuple, each of shape `(D, *shape)`, or `None` when
    `D = 0`; `t1_tangent` is the tangent of `t1`, of shape `(D,)`. `checkpoints`
    (from `init_checkpoints`) also stores states, and then the solver must be wrapped
    in `ReportingSolver`.
    """
    num_directions = t1_tangent.shape[0]
    time_dtype = jnp.result_type(tprev)
    ts = jnp.full(max_steps + 1, jnp.inf, dtype=time_dtype).at[0].set(tprev)
    record_tangents = jnp.zeros((max_steps + 1, num_directions), dtype=time_dtype)
    if tangents is not None:
        record_tangents = record_tangents.at[0].set(tangents[0])
    record = StepRecord(ts, record_tangents, jnp.array(0, dtype=jnp.int32))
    wrapped = RecordingController(controller, t1, t1_tangent, clip_floor(t1))
    state = RecordingState(controller_state, tangents, record, checkpoints)
    return wrapped, state


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
