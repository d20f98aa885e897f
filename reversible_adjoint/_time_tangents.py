"""The tangent directions of the time inputs: seeding them before the forward pass,
projecting cotangents of step times onto them in the backward pass, and splitting
the result back onto the time inputs.

The time inputs that can move the step grid are the loop's initial `tprev` and
`tnext`, the inexact leaves of the initial controller state (which hold `dt0`), and
`t1`. Those being differentiated span `D` directions (one per scalar). The forward
pass pushes their tangents through the time recurrence (`_step_record.py`), so that
every recorded step time `t_k` has a tangent `dt_k/dθ` of shape `(D,)`; the backward
pass adds `ct(t_k) * dt_k/dθ` into one cotangent `a_θ` of shape `(D,)`, and splits
`a_θ` onto the inputs at the end. `StepTo(ts=...)` is different: its step times are
its `ts` themselves, whose cotangents are accumulated directly.
"""

import equinox as eqx
import jax.numpy as jnp
import jax.tree_util as jtu
import numpy as np
from jaxtyping import Array

from ._step_record import as_tangent_tuple


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


def initial_tangents(inputs, perturbed):
    """The tangents of the time inputs along the `D` directions, as the recording
    controller takes them: `((tprev, tnext, inexact controller state), t1)`, each leaf
    of shape `(D, *leaf.shape)`; the first is `None` if `D = 0`."""
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


class TimeCotangent(eqx.Module):
    """The cotangent of the time inputs accumulated by the backward pass: `theta`,
    along the `D` directions, and `grid`, of the times of `StepTo(ts=...)` if they are
    differentiated (else `None`)."""

    theta: Array
    grid: Array | None

    def add(self, ct_t, k, times, step_to_ts):
        """Adds the cotangent `ct_t` of the accepted time `times.time(k)`."""
        theta = self.theta + ct_t * times.tangent(k)
        return TimeCotangent(theta, self.grid).add_grid(ct_t, k, times, step_to_ts)

    def add_grid(self, ct_t, k, times, step_to_ts):
        """Adds the cotangent `ct_t` of the accepted time `times.time(k)` to that of
        the `StepTo` grid `step_to_ts`, where the time is a point of it."""
        grid = self.grid
        if grid is None:
            return self
        # `StepTo` steps to `ts[k]`, except: at the start (`ts[1]` is the initial
        # `tnext`, differentiated outside as a time input) and at the end of the
        # grid, where the loop clips to `t1` (both dependences are in the tangents).
        # A solve stopped earlier (by an event, or by `max_steps`) ends at
        # `ts[num_accepted]`.
        last = step_to_ts.shape[0] - 1
        from_grid = (k >= 2) & (k < last) & (times.time(k) == step_to_ts[k])
        grid = grid.at[k].add(jnp.where(from_grid, ct_t, 0).astype(grid.dtype))
        return TimeCotangent(self.theta, grid)

    def add_final_state(self, final_tangents, ct_tprev, ct_tnext, ct_controller):
        """Adds the cotangents of the loop's final `tprev`, `tnext` and controller
        state, whose tangents are `final_tangents`."""
        tprev_tangent, tnext_tangent, dynamic_tangents = final_tangents
        theta = self.theta + ct_tprev * tprev_tangent
        theta = theta + ct_tnext * tnext_tangent
        for ct_leaf, tangent_leaf in zip(
            jtu.tree_leaves(ct_controller), jtu.tree_leaves(dynamic_tangents)
        ):
            theta = theta + jnp.tensordot(
                tangent_leaf, ct_leaf.astype(tangent_leaf.dtype), axes=ct_leaf.ndim
            ).astype(theta.dtype)
        return TimeCotangent(theta, self.grid)

    def split(self, inputs, perturbed):
        """The cotangents of `(tprev, tnext, controller_state, t1)` in `inputs`."""
        offsets, _ = _directions(inputs, perturbed)
        cts = []
        for leaf, offset in zip(_time_leaves(inputs), offsets):
            if offset is None:
                cts.append(None)
            else:
                shape = jnp.shape(leaf)
                ct = self.theta[offset : offset + int(np.prod(shape))].reshape(shape)
                cts.append(ct.astype(jnp.result_type(leaf)))
        ct_tprev, ct_tnext, *ct_dynamic, ct_t1 = cts
        dynamic, static = eqx.partition(
            inputs["controller_state"], eqx.is_inexact_array
        )
        ct_dynamic = jtu.tree_unflatten(jtu.tree_structure(dynamic), ct_dynamic)
        ct_controller_state = eqx.combine(
            ct_dynamic, jtu.tree_map(lambda _: None, static)
        )
        return ct_tprev, ct_tnext, ct_controller_state, ct_t1
