"""`round_trip_error`: the reconstruction drift of a solve, measured without
differentiating it."""

import diffrax
import equinox as eqx
import jax.lax as lax
import jax.numpy as jnp
import jax.tree_util as jtu
from diffrax._term import WrapTerm
from jaxtyping import Array, ArrayLike, PyTree

from ._adjoint import as_reversible
from ._drift import relative_drift

_CONSTANT = diffrax.ConstantStepSize()


def _is_leaf_term(x):
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
) -> Array:
    """Solves forward with [`diffrax.diffeqsolve`][], undoes every step with the
    solver's exact inverse, and returns the relative error of the reconstructed
    initial state: the quantity [`reversible_adjoint.ReversibleAdjoint`][] checks
    against `drift_rtol` at the end of every backward pass, measured here without
    differentiating anything. Use it to choose a solver, a step size or a precision
    before training.

    **Arguments:**

    - `terms`, `solver`, `t0`, `t1`, `dt0`, `y0`, `args`, `stepsize_controller`,
        `max_steps`: as for `diffrax.diffeqsolve`. `solver` must be algebraically
        reversible, as for `ReversibleAdjoint`.

    **Returns:**

    A scalar: the largest, over the state `y` and the solver state, of the largest
    absolute reconstruction error divided by the largest magnitude of that part at
    the start or the end of the solve; `inf` if the reconstruction is not finite.

    The forward solve records the time of every accepted step (`max_steps` scalars),
    not the states.
    """
    reversible = as_reversible(solver)
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
        stepsize_controller=stepsize_controller,
        max_steps=max_steps,
        throw=False,
    )
    step_ends, _ = sol.ys
    num_steps = sol.stats["num_accepted_steps"]
    y1 = jtu.tree_map(lambda x: x[0], sol.ys[1])
    state1 = sol.solver_state
    y0 = jtu.tree_map(lambda x, y: jnp.asarray(x, dtype=y.dtype), y0, y1)

    # The solve as diffrax's loop ran it: times multiplied by the direction, and
    # terms wrapped to match.
    direction = jnp.where(t0 < t1, 1, -1)
    wrapped = jtu.tree_map(
        lambda term: WrapTerm(term, direction), terms, is_leaf=_is_leaf_term
    )
    time_dtype = step_ends.dtype
    times = direction * jnp.concatenate(
        [jnp.asarray(t0, dtype=time_dtype)[None], step_ends]
    )
    first_end = jnp.where(num_steps > 0, times[1], times[0])
    state0 = solver.init(wrapped, times[0], first_end, y0, args)

    def undo(i, carry):
        y, state = carry
        k = num_steps - 1 - i
        kwargs = {}
        if reversible.needs_previous_time:
            kwargs["t_previous"] = times[jnp.maximum(k - 1, 0)]
        return reversible.backward_step(
            wrapped, times[k], times[k + 1], y, args, state, False, **kwargs
        )

    y_rec, state_rec = lax.fori_loop(0, num_steps, undo, (y1, state1))
    return relative_drift((y_rec, state_rec), (y0, state0), (y1, state1))
