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

import equinox as eqx
import equinox.internal as eqxi
import jax
import jax.numpy as jnp
from jaxtyping import Array, PyTree

import diffrax
from diffrax._integrate import _clip_to_end


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


class RecordingState(eqx.Module):
    inner: PyTree
    # Tangents of (tprev, tnext, inexact leaves of `inner`), each of shape (D, *shape).
    time_tangents: PyTree
    record: StepRecord


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
        record = StepRecord(ts, record_tangents, num_accepted)

        state = RecordingState(
            inner=eqx.combine(next_dynamic, next_static),
            time_tangents=tangents,
            record=record,
        )
        return keep, next_tprev, next_tnext, made_jump, state, result


def init_recording(
    controller, t1, tprev, tnext, controller_state, max_steps, tangents, t1_tangent
):
    """Wraps `controller` and its initial state for a recording forward pass.

    `tangents` are the initial tangents of `(tprev, tnext, inexact leaves of
    controller_state)` as a tuple, each of shape `(D, *shape)`, or `None` when
    `D = 0`; `t1_tangent` is the tangent of `t1`, of shape `(D,)`.
    """
    num_directions = t1_tangent.shape[0]
    time_dtype = jnp.result_type(tprev)
    ts = jnp.full(max_steps + 1, jnp.inf, dtype=time_dtype).at[0].set(tprev)
    record_tangents = jnp.zeros((max_steps + 1, num_directions), dtype=time_dtype)
    if tangents is not None:
        record_tangents = record_tangents.at[0].set(tangents[0])
    record = StepRecord(ts, record_tangents, jnp.array(0, dtype=jnp.int32))
    wrapped = RecordingController(controller, t1, t1_tangent, clip_floor(t1))
    state = RecordingState(controller_state, tangents, record)
    return wrapped, state


def as_tangent_tuple(tprev, tnext, controller_state):
    """The tuple `(tprev, tnext, inexact part of controller_state)` whose tangents the
    recording controller pushes forward."""
    dynamic, _ = _split(controller_state)
    return tprev, tnext, dynamic


