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

import equinox as eqx
import equinox.internal as eqxi
import jax
import jax.numpy as jnp
import jax.tree_util as jtu
from jaxtyping import Array, PyTree

from ._solver.asynchronous_leapfrog import AsynchronousLeapfrog
from ._solver.reversible import Reversible


class ReconstructionDriftWarning(UserWarning):
    """Warns that `ReversibleAdjoint`'s gradient may be inaccurate: its backward pass
    reconstructed the solve with an error that, by the estimate below, moves the
    gradient by more than `drift_rtol` (relative), or the forward solve itself was not
    finite.

    The message names the solver and what to do, and is the same on every call of the
    same configuration, so that Python's default filters show it once (not once per
    training step). The numbers of the call that warned are attributes:

    - `drift`: the largest relative reconstruction error measured, at the start of
        the solve or at a checkpoint.
    - `steps`: over how many steps that error grew (the stretch reconstructed since
        the last exact state).
    - `amplification`: how much the gradient amplifies it (at least 1).
    - `gradient_error`: `drift * amplification`, the estimate of the gradient's
        relative error that is checked against `drift_rtol`.
    - `tolerance`: that `drift_rtol`.
    - `diverged`: whether the forward solve ended on a non-finite state (then the
        gradient is not finite, whatever the reconstruction does).

    Under `jax.vmap` a batch warns once, with its worst element's numbers (`steps`
    the largest). All are `None` on a warning made by hand.
    """

    def __init__(
        self,
        message: str,
        *,
        drift: float | None = None,
        steps: int | None = None,
        amplification: float | None = None,
        gradient_error: float | None = None,
        tolerance: float | None = None,
        diverged: bool | None = None,
    ):
        super().__init__(message)
        self.drift = drift
        self.steps = steps
        self.amplification = amplification
        self.gradient_error = gradient_error
        self.tolerance = tolerance
        self.diverged = diverged


def default_drift_rtol(dtype) -> float:
    """The default `drift_rtol` for a state of floating dtype `dtype`: an eighth of
    the square root of its machine epsilon (1.9e-9 in float64, 4.3e-5 in float32),
    the largest estimated relative error of the gradient accepted without a warning.
    The factor of eight covers the estimate being too small (by up to five times on
    the problems of `tests/test_drift_promise.py`), so that a gradient more than
    1e-8 (float64) or 1e-3 (float32) off warns.

    Healthy solves stay far below it: in `benchmarks/reconstruction.py`, 10,000 steps
    of reversible Heun or asynchronous leapfrog on an oscillator reconstruct to about
    1e-14 (float64) and 2e-6 to 5e-6 (float32) relative, while the failures it is
    meant to catch drift by far more: the `Reversible` wrapper over 10,000 steps in
    float32 by 1e-2, the Lorenz system over `[0, 2]` with `Reversible(Tsit5())` in
    float64 by 3e-4.
    """
    return float(jnp.finfo(dtype).eps) ** 0.5 / 8


def _inexact_leaves(tree):
    """The inexact array leaves of `tree` that hold any element."""
    return [x for x in jtu.tree_leaves(tree) if eqx.is_inexact_array(x) and x.size > 0]


def widest(dtypes):
    """The most precise of some floating dtypes (no promotion: works under
    `jax_numpy_dtype_promotion="strict"`)."""
    return max(dtypes, key=lambda dtype: jnp.finfo(dtype).bits)


def _largest(arrays):
    dtype = widest([x.dtype for x in arrays])
    return jnp.max(jnp.stack([jnp.max(x).astype(dtype) for x in arrays]))


def largest_magnitude(tree: PyTree) -> Array:
    """The largest magnitude of the inexact elements of `tree` (zero if none)."""
    leaves = _inexact_leaves(tree)
    return _largest([jnp.abs(x) for x in leaves]) if leaves else jnp.zeros(())


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


def _advice(solver, adjoint, dtype) -> str:
    """What to do about a drifting reconstruction: what would help this solver, in
    this precision, with these checkpoints."""
    every, slots = adjoint.checkpoint_layout()
    if every is not None:
        fixes = [
            f"store the state more often (`checkpoint_every` smaller than {every}; "
            "memory: one state per that many steps)"
        ]
    else:
        fixes = [
            "restart the reconstruction from more stored states "
            f"(`ReversibleAdjoint(checkpoints=...)`, now {slots}, or "
            "`checkpoint_every=...`; memory: one state each)"
        ]
    if jnp.finfo(dtype).bits < 64:
        fixes.append('use float64 (`jax.config.update("jax_enable_x64", True)`)')
    fixes.append("take smaller steps")
    if isinstance(solver, Reversible):
        if solver.coupling < 1:
            fixes.append(
                "use a coupling closer to 1 (`Reversible(..., coupling=...)`, now "
                f"{solver.coupling}), or a solver whose inverse amplifies round-off "
                "less (`ReversibleHeun`, `AsynchronousLeapfrog()`)"
            )
    elif isinstance(solver, AsynchronousLeapfrog) and solver.eta != 1:
        fixes.append(
            f"use `AsynchronousLeapfrog(eta=1)` (now `eta={solver.eta}`), whose "
            "inverse does not amplify round-off by `|1 - 2 eta|^-1` per step"
        )
    fixes.append("or use `adjoint=diffrax.RecursiveCheckpointAdjoint()`")
    return "; ".join(fixes) + "."


def drift_message(solver, adjoint, rtol: float, dtype) -> str:
    """What the warning and the error say when the reconstruction drifted. The same
    on every call of a configuration: the numbers are the warning's attributes."""
    return (
        f"`ReversibleAdjoint` with {solver_name(solver)}: the backward pass "
        "reconstructed the solve with round-off that the gradient amplifies beyond "
        f"`drift_rtol={rtol:.1e}` (estimated relative error of the gradient; the "
        "warning's `drift`, `amplification`, `gradient_error` and `steps` say by how "
        "much), so the gradient may be inaccurate. To fix it: "
        + _advice(solver, adjoint, dtype)
        + " `reversible_adjoint.round_trip_error` measures the drift of a solve "
        "without differentiating it."
    )


def diverged_message(solver) -> str:
    """What the warning and the error say when the forward solve was not finite."""
    return (
        f"`ReversibleAdjoint` with {solver_name(solver)}: the forward solve diverged "
        "(its final state is not finite), so neither is its gradient. The "
        "reconstruction is not the cause: the solver is unstable on this problem at "
        "this step size. Take smaller steps (or an adaptive step size controller), or "
        "a solver that is stable here; `diffrax.RecursiveCheckpointAdjoint` would "
        "differentiate the same non-finite solve."
    )


def _host_warning(solver, adjoint, rtol, dtype):
    """The host callback that issues the warning, given the numbers."""
    drift_text = drift_message(solver, adjoint, rtol, dtype)
    diverged_text = diverged_message(solver)

    def warn(drift, steps, amplification, diverged):
        diverged = bool(diverged)
        warning = ReconstructionDriftWarning(
            diverged_text if diverged else drift_text,
            drift=float(drift),
            steps=int(steps),
            amplification=float(amplification),
            gradient_error=float(drift * amplification),
            tolerance=rtol,
            diverged=diverged,
        )
        warnings.warn(warning)

    return warn


def check_drift(
    x: PyTree,
    drift: Array,
    num_steps: Array,
    amplification: Array,
    diverged: Array,
    *,
    adjoint,
    solver,
    rtol: float,
    dtype,
) -> PyTree:
    """Acts as `adjoint.on_drift` says when `drift * amplification` (the estimated
    relative error of the gradient) exceeds `rtol`, or the forward solve `diverged`;
    returns `x`, which the error of `on_drift="raise"` is attached to.

    Under `jax.vmap` the batch is checked as one: one warning, with the worst drift.
    """
    on_drift = adjoint.on_drift
    if on_drift == "ignore":
        return x
    # Not differentiable (and `unvmap_max` has no derivative): forward-over-reverse
    # (`jax.hessian`) differentiates the backward pass this runs in.
    drift, amplification = jax.lax.stop_gradient((drift, amplification))
    estimate = eqxi.unvmap_max(drift * amplification)
    drift = eqxi.unvmap_max(drift)
    amplification = eqxi.unvmap_max(amplification)
    num_steps = eqxi.unvmap_max(num_steps)
    diverged = eqxi.unvmap_any(diverged)
    # NaN compares false: a NaN estimate is a failure too.
    failed = diverged | ~(estimate <= rtol)
    if on_drift == "warn":
        warn = _host_warning(solver, adjoint, rtol, dtype)
        # The host is called only when the check fails.
        jax.lax.cond(
            failed,
            lambda: jax.debug.callback(warn, drift, num_steps, amplification, diverged),
            lambda: None,
        )
        return x
    assert on_drift == "raise"
    x = eqx.error_if(x, diverged, diverged_message(solver))
    return eqx.error_if(x, failed, drift_message(solver, adjoint, rtol, dtype))


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
        present = [x.dtype for x in scales if x is not None]
        zero = jnp.zeros((), widest(present) if present else jnp.float32)
        steps = jnp.zeros((), jnp.result_type(num_accepted))
        return DriftRecord(zero, steps, num_accepted, scales)

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
