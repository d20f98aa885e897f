"""`round_trip_error`: the reconstruction drift of a solve, measured without
differentiating it."""

import diffrax
import equinox as eqx
import jax.lax as lax
import jax.numpy as jnp
import jax.tree_util as jtu
from jaxtyping import Array, ArrayLike, PyTree

from ._adjoint import as_reversible
from ._diffrax_internals import WrapTerm
from ._drift import larger, magnitudes, relative_drift

_CONSTANT = diffrax.ConstantStepSize()


def _wrapped_by_diffrax(x):
    """The terms diffrax wraps in `WrapTerm` for the direction of time."""
    return isinstance(x, diffrax.AbstractTerm) and not isinstance(x, diffrax.MultiTerm)


def _step_time(t, y, args):
    return t


@eqx.filter_jit
def round_trip_error(
    terms: PyTree[diffrax.AbstractTerm],
    solver: diffrax.AbstractSolver,
    t0: ArrayLike,
    t1: ArrayLike,
    dt0: ArrayLike | None,
    y0: PyTree[ArrayLike],
    args: PyTree = None,
    *,
    stepsize_controller: diffrax.AbstractStepSizeController = _CONSTANT,
    max_steps: int = 4096,
    checkpoint_every: int | None = None,
    throw: bool = True,
) -> Array:
    """Solves forward with
    [`diffrax.diffeqsolve`](https://docs.kidger.site/diffrax/api/diffeqsolve/), undoes
    every step with the solver's exact inverse, and returns the relative error of the
    reconstructed initial state: the quantity
    [`reversible_adjoint.ReversibleAdjoint`][] checks against `drift_rtol` at the end of
    every backward pass, measured here without differentiating anything. Use it to
    choose a solver, a step size or a precision before training.

    **Arguments:**

    - `terms`, `solver`, `t0`, `t1`, `dt0`, `y0`, `args`, `stepsize_controller`,
        `max_steps`: as for `diffrax.diffeqsolve`. `solver` must be algebraically
        reversible, as for `ReversibleAdjoint`.
    - `throw`: as for `diffrax.diffeqsolve`: whether a solve that fails (e.g. runs
        out of `max_steps`) raises. With `False`, the steps taken are measured.
    - `checkpoint_every`: as for `ReversibleAdjoint`: the reconstruction restarts
        from the true state after every `checkpoint_every` steps, and the drift of
        each stretch is measured separately.

    **Returns:**

    Without checkpoints, a scalar: the largest, over the state `y` and the solver
    state, of the largest absolute reconstruction error divided by the largest
    magnitude of that part at the start or the end of the solve; `inf` if the
    reconstruction is not finite. With `checkpoint_every=K`, an array of
    `ceil(max_steps / K)` such errors: entry `j` is the drift of the reconstruction of
    steps `jK` to `(j + 1)K` (zero for stretches the solve did not reach).
    """
    reversible = as_reversible(solver, terms)
    solve = _solve(
        terms, solver, t0, t1, dt0, y0, args, stepsize_controller, max_steps, throw
    )
    if checkpoint_every is None:
        return _undo(reversible, solve, args)
    return _undo_in_stretches(
        reversible, solver, solve, args, checkpoint_every, max_steps
    )


class _Solve(eqx.Module):
    """A solve as diffrax's loop ran it: its terms wrapped for the time direction,
    the accepted step times (multiplied by the direction), how many, and the state at
    both ends."""

    terms: PyTree
    times: Array
    num_steps: Array
    start: tuple
    end: tuple


def _solve(terms, solver, t0, t1, dt0, y0, args, controller, max_steps, throw):
    saveat = diffrax.SaveAt(
        subs=[
            diffrax.SubSaveAt(steps=True, fn=_step_time),
            diffrax.SubSaveAt(t1=True),
        ],
        solver_state=True,
    )
    sol = diffrax.diffeqsolve(
        terms,
        solver,
        t0,
        t1,
        dt0,
        y0,
        args,
        saveat=saveat,
        stepsize_controller=controller,
        max_steps=max_steps,
        throw=throw,
    )
    assert sol.ys is not None  # saved by `saveat` above
    step_ends, _ = sol.ys
    num_steps = sol.stats["num_accepted_steps"]
    y1 = jtu.tree_map(lambda x: x[0], sol.ys[1])
    y0 = jtu.tree_map(lambda x, y: jnp.asarray(x, dtype=y.dtype), y0, y1)
    direction = jnp.where(t0 < t1, 1, -1)
    wrapped = jtu.tree_map(
        lambda term: WrapTerm(term, direction), terms, is_leaf=_wrapped_by_diffrax
    )
    times = direction * jnp.concatenate(
        [jnp.asarray(t0, dtype=step_ends.dtype)[None], step_ends]
    )
    first_end = jnp.where(num_steps > 0, times[1], times[0])
    state0 = solver.init(wrapped, times[0], first_end, y0, args)
    return _Solve(wrapped, times, num_steps, (y0, state0), (y1, sol.solver_state))


def _undo_step(reversible, solve, args, k, y, state):
    """Undoes accepted step `k`."""
    t0, t1, t_previous = (solve.times[i] for i in (k, k + 1, jnp.maximum(k - 1, 0)))
    return reversible.backward_step(
        solve.terms, t0, t1, y, args, state, False, t_previous=t_previous
    )


def _undo(reversible, solve, args):
    """Undoes every step from the end; the drift of the reconstructed start."""

    def body(i, state):
        return _undo_step(reversible, solve, args, solve.num_steps - 1 - i, *state)

    reconstructed = lax.fori_loop(0, solve.num_steps, body, solve.end)
    return relative_drift(reconstructed, solve.start, magnitudes(solve.end))


def _undo_in_stretches(reversible, solver, solve, args, every, max_steps):
    """Steps forward again over the same times, storing every `every`-th state, then
    undoes the steps stretch by stretch; the drift of each stretch."""
    size = -(-max_steps // every)
    checkpoints = jtu.tree_map(
        lambda x: jnp.zeros((size, *x.shape), x.dtype), solve.start
    )
    times = solve.times

    def step(k, carry):
        (y, state), checkpoints = carry
        checkpoints = jtu.tree_map(
            lambda c, x: c.at[k // every].set(
                jnp.where(k % every == 0, x, c[k // every])
            ),
            checkpoints,
            (y, state),
        )
        y, _, _, state, _ = solver.step(
            solve.terms, times[k], times[k + 1], y, args, state, False
        )
        return (y, state), checkpoints

    init = (solve.start, checkpoints)
    end, checkpoints = lax.fori_loop(0, solve.num_steps, step, init)

    def back(i, carry):
        (y, state), scales, drifts = carry
        k = solve.num_steps - 1 - i
        y, state = _undo_step(reversible, solve, args, k, y, state)
        start = k % every == 0
        j = k // every
        stored = jtu.tree_map(lambda c: c[j], checkpoints)
        drift = relative_drift((y, state), stored, scales)
        # The scale, as in the adjoint: the exact states met so far.
        grown = larger(scales, magnitudes(stored))
        scales = jtu.tree_map(lambda a, b: jnp.where(start, b, a), scales, grown)
        drifts = drifts.at[j].set(jnp.where(start, drift, drifts[j]))
        y, state = jtu.tree_map(lambda a, b: jnp.where(start, b, a), (y, state), stored)
        return (y, state), scales, drifts

    drifts = jnp.zeros(size, dtype=times.dtype)
    init = (end, magnitudes(end), drifts)
    _, _, drifts = lax.fori_loop(0, solve.num_steps, back, init)
    return drifts
