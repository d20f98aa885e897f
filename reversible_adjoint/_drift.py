"""Reconstruction drift: how far the backward pass's reconstruction of the initial
state is from the initial state the solve was given.

Reconstruction is exact in exact arithmetic only. In floating point each inverse step
adds round-off, which later (earlier in time) inverse steps may amplify: by about
`1/λ` per step for `Reversible(coupling=λ)`, `1/|1 − 2η|` for asynchronous leapfrog
with `η < 1`, and by the backward flow's own growth on dissipative problems. The
gradient is computed along the reconstructed trajectory, so when reconstruction has
drifted the gradient is not the gradient of the solve that was run.

The backward pass ends where the solve began, at a state it knows exactly, so the
drift is measured there for free: `relative_drift` below, one formula used by
`ReversibleAdjoint`'s check and by `round_trip_error`.
"""

import warnings
from typing import Literal

import equinox as eqx
import equinox.internal as eqxi
import jax
import jax.numpy as jnp
import jax.tree_util as jtu
from jaxtyping import Array, PyTree

from ._solver.reversible import Reversible


class ReconstructionDriftWarning(UserWarning):
    """Warns that `ReversibleAdjoint`'s backward pass reconstructed the start of the
    solve with a relative error above `drift_rtol`, so that its gradient may be
    inaccurate. The message says how large the drift was, after how many steps, and
    what to do about it."""


def default_drift_rtol(dtype) -> float:
    """The default `drift_rtol` for a state of floating dtype `dtype`: the square
    root of its machine epsilon (1.5e-8 in float64, 3.5e-4 in float32), that is, half
    of the significant digits lost.

    Healthy solves stay far below it: in `benchmarks/reconstruction.py`, 10,000 steps
    of reversible Heun or asynchronous leapfrog on an oscillator reconstruct to about
    1e-14 (float64) and 2e-6 to 5e-6 (float32) relative, while the failures it is
    meant to catch drift by far more: the `Reversible` wrapper over 10,000 steps in
    float32 by 1e-2, the Lorenz system over `[0, 2]` with `Reversible(Tsit5())` in
    float64 by 3e-4.
    """
    return float(jnp.finfo(dtype).eps) ** 0.5


def _inexact_leaves(tree):
    """The inexact array leaves of `tree` that hold any element."""
    return [x for x in jtu.tree_leaves(tree) if eqx.is_inexact_array(x) and x.size > 0]


def _largest(arrays):
    dtype = jnp.result_type(*arrays)
    return jnp.max(jnp.stack([jnp.max(x).astype(dtype) for x in arrays]))


def magnitudes(state: PyTree) -> tuple:
    """The largest magnitude of each part of `state = (y, solver_state)` (`None` for
    a part without inexact elements). Not differentiated."""
    state = jax.lax.stop_gradient(state)
    return tuple(
        _largest([jnp.abs(x) for x in leaves]) if leaves else None
        for leaves in map(_inexact_leaves, state)
    )


def larger(scales: tuple, other: tuple) -> tuple:
    """Elementwise maximum of two results of `magnitudes`."""
    return tuple(
        None if a is None else jnp.maximum(a, b.astype(a.dtype))
        for a, b in zip(scales, other, strict=True)
    )


def relative_drift(reconstructed: PyTree, true: PyTree, scales: tuple) -> Array:
    """Relative reconstruction error of a state.

    **Arguments:**

    - `reconstructed`: `(y, solver_state)` as the backward pass rebuilt them.
    - `true`: `(y, solver_state)` as the solve had them.
    - `scales`: from `magnitudes`: the largest magnitude of each part among the
        exact states the backward pass has met (the end of the solve, checkpoints).

    **Returns:**

    The largest, over the two parts `y` and solver state, of the largest absolute
    error divided by the part's largest magnitude (in `scales` or in `true`), or the
    absolute error if that is zero. A reconstruction that is not finite gives `inf`.
    A solution that starts and ends near zero but is large in between is measured
    against small scales, and may read its round-off as drift.
    """
    reconstructed, true = jax.lax.stop_gradient((reconstructed, true))
    drifts = []
    scales = larger(scales, magnitudes(true))
    for got, want, scale in zip(reconstructed, true, scales, strict=True):
        got, want = _inexact_leaves(got), _inexact_leaves(want)
        if not want:
            continue
        error = _largest([jnp.abs(g - w) for g, w in zip(got, want, strict=True)])
        scale = scale.astype(error.dtype)
        relative = error / jnp.where(scale > 0, scale, 1)
        drifts.append(jnp.where(scale > 0, relative, error))
    if not drifts:
        return jnp.array(0.0)
    drift = _largest(drifts)
    return jnp.where(jnp.isnan(drift), jnp.inf, drift)


def drift_message(measured: str, solver_name: str, rtol: float, dtype) -> str:
    """What the warning and the error say; `measured` is, for example, "a relative
    error of 3.1e-02 after 10000 steps"; `dtype` is the state's."""
    if jnp.finfo(dtype).bits < 64:
        precision = 'use float64 (`jax.config.update("jax_enable_x64", True)`); '
    else:
        precision = ""
    return (
        f"`ReversibleAdjoint` with {solver_name} reconstructed the start of the solve "
        f"with {measured}, above `drift_rtol={rtol:.1e}`: round-off in the "
        "reconstruction has grown, and the gradient may be inaccurate. To fix it: "
        "restart the reconstruction from stored states with "
        "`ReversibleAdjoint(checkpoint_every=...)` (memory: one state per that many "
        f"steps); {precision}take fewer or smaller steps; "
        "use a solver whose inverse amplifies round-off less (`ReversibleHeun`, "
        "`AsynchronousLeapfrog(eta=1)`, or `Reversible(coupling=...)` closer to 1); "
        "or use `adjoint=diffrax.RecursiveCheckpointAdjoint()`. "
        "`reversible_adjoint.round_trip_error` measures the drift of a solve "
        "without differentiating it."
    )


def check_drift(
    x: PyTree,
    drift: Array,
    num_steps: Array,
    *,
    on_drift: Literal["warn", "raise", "ignore"],
    rtol: float,
    solver_name: str,
    dtype,
) -> PyTree:
    """Acts on a measured `drift` as `on_drift` says, and returns `x`, which the
    error of `on_drift="raise"` is attached to.

    Under `jax.vmap` the batch is checked as one: one warning, with the worst drift.
    """
    if on_drift == "ignore":
        return x
    # Not differentiable (and `unvmap_max` has no derivative): forward-over-reverse
    # (`jax.hessian`) differentiates the backward pass this runs in.
    drift = eqxi.unvmap_max(jax.lax.stop_gradient(drift))
    num_steps = eqxi.unvmap_max(num_steps)

    def warn(drift, num_steps):
        measured = (
            f"a relative error of {float(drift):.1e} after {int(num_steps)} steps"
        )
        message = drift_message(measured, solver_name, rtol, dtype)
        warnings.warn(ReconstructionDriftWarning(message))

    if on_drift == "warn":
        # The host is called only when the check fails.
        jax.lax.cond(
            drift > rtol,
            lambda: jax.debug.callback(warn, drift, num_steps),
            lambda: None,
        )
        return x
    assert on_drift == "raise"
    measured = "a relative error (`on_drift='warn'` reports its size)"
    message = drift_message(measured, solver_name, rtol, dtype)
    return eqx.error_if(x, drift > rtol, message)


def narrowest_dtype(y0) -> jnp.dtype:
    """The floating dtype of the least precise leaf of `y0`: the one whose round-off
    sets the scale of the drift."""
    dtypes = [
        jnp.result_type(x) for x in jtu.tree_leaves(y0) if eqx.is_inexact_array(x)
    ]
    if not dtypes:
        return jnp.result_type(float)
    return max(dtypes, key=lambda dtype: jnp.finfo(dtype).eps)


def solver_name(solver) -> str:
    """How the drift message names `solver`."""
    if isinstance(solver, Reversible):
        base = type(solver.solver).__name__
        return f"`Reversible({base}(), coupling={solver.coupling})`"
    return f"`{type(solver).__name__}`"


class DriftRecord(eqx.Module):
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
        return DriftRecord(zero, jnp.zeros((), jnp.int32), num_accepted, scales)

    def measure(self, reconstructed, true, restart=None):
        """Measures the drift of `reconstructed` against `true`, reconstructed since
        `self.restart`; the reconstruction then runs from `restart` (if given)."""
        scales = larger(self.scales, magnitudes(true))
        drift = relative_drift(reconstructed, true, scales).astype(self.worst.dtype)
        worse = drift > self.worst
        return DriftRecord(
            jnp.where(worse, drift, self.worst),
            jnp.where(
                worse, self.restart - (0 if restart is None else restart), self.steps
            ),
            self.restart if restart is None else restart,
            scales,
        )
