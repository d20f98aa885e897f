from collections.abc import Callable
from typing import Any, ClassVar

import diffrax
import jax.lax as lax
import jax.tree_util as jtu
from jaxtyping import PyTree

from .base import AbstractReversibleSolver

_SolverState = tuple[PyTree, PyTree]


def _leapfrog(terms, y, yhat, vf, control):
    # ŷ' = 2y − ŷ + vf·Δ. Forward with Δ, inverse with −Δ.
    increment = terms.prod(vf, control)
    return jtu.tree_map(lambda a, b, c: 2 * a - b + c, y, yhat, increment)


def _trapezoid(terms, y, vf_a, vf_b, control):
    # y' = y + ½(vf_a + vf_b)·Δ. Forward with Δ, inverse with −Δ.
    vf_sum = jtu.tree_map(lambda a, b: a + b, vf_a, vf_b)
    increment = terms.prod(vf_sum, control)
    return jtu.tree_map(lambda a, b: a + 0.5 * b, y, increment)


def _error(terms, vf0, vf1, control):
    vf_diff = jtu.tree_map(lambda a, b: b - a, vf0, vf1)
    return jtu.tree_map(lambda a: 0.5 * a, terms.prod(vf_diff, control))


class ReversibleHeun(
    AbstractReversibleSolver,
    diffrax.AbstractAdaptiveSolver,
    diffrax.AbstractStratonovichSolver,
):
    """Reversible Heun method, with its exact inverse.

    Algebraically reversible second-order method for ODEs; converges to the
    Stratonovich solution of SDEs with strong order 0.5 (1.0 for additive noise). It
    carries the solution `y`, an auxiliary `ŷ` and the vector field `v` evaluated at
    `ŷ`. One step:

        ŷ1 = 2·y0 − ŷ0 + v0·Δ
        v1 = f(t1, ŷ1)
        y1 = y0 + ½(v0 + v1)·Δ

    and its inverse is the same scheme with the increment `Δ` negated. Has an embedded
    first-order error estimate `½(v1 − v0)·Δ` for adaptive steps, and uses linear
    interpolation for `SaveAt(ts=...)`.

    Cost: one vector-field evaluation per step forward; with
    [`reversible_adjoint.ReversibleAdjoint`][], one vector-field linearisation and one
    transpose per step backward (the inverse evaluates the vector field where the
    previous forward step did, so one `jax.vjp` serves both).

    Stability: on the linear test equation `y' = σy` the step is the leapfrog
    recurrence, stable only for `hσ` on the imaginary segment `i(−1, 1)`. Strongly
    dissipative problems with large steps blow up; prefer small steps or another
    solver there.

    This computes the same numbers as `diffrax.ReversibleHeun`, and the two share their
    `solver_state` layout `(ŷ, v)`. `ReversibleAdjoint` also accepts
    `diffrax.ReversibleHeun()` directly.

    ??? cite "Reference"

        ```bibtex
        @article{kidger2021efficient,
            author={Kidger, Patrick and Foster, James and Li, Xuechen and Lyons, Terry},
            title={{E}fficient and {A}ccurate {G}radients for {N}eural {SDE}s},
            year={2021},
            journal={Advances in Neural Information Processing Systems}
        }
        ```
    """

    term_structure: ClassVar = diffrax.AbstractTerm
    interpolation_cls: ClassVar[Callable[..., diffrax.LocalLinearInterpolation]] = (
        diffrax.LocalLinearInterpolation
    )
    evaluation_reuse: ClassVar = "previous_step"
    affine_in_evaluation: ClassVar = True

    def order(self, terms):
        return 2

    def strong_order(self, terms):
        return 0.5

    def init(self, terms, t0, t1, y0, args) -> _SolverState:
        del t1
        return y0, terms.vf(t0, y0, args)

    def step(
        self, terms, t0, t1, y0, args, solver_state: _SolverState, made_jump
    ) -> tuple[PyTree, PyTree, dict[str, PyTree], _SolverState, diffrax.RESULTS]:
        yhat0, vf0 = solver_state
        if made_jump is not False:
            vf0 = lax.cond(made_jump, lambda: terms.vf(t0, y0, args), lambda: vf0)
        control = terms.contr(t0, t1)
        yhat1 = _leapfrog(terms, y0, yhat0, vf0, control)
        vf1 = terms.vf(t1, yhat1, args)
        y1 = _trapezoid(terms, y0, vf0, vf1, control)
        y1_error = _error(terms, vf0, vf1, control)
        dense_info = dict(y0=y0, y1=y1)
        return y1, y1_error, dense_info, (yhat1, vf1), diffrax.RESULTS.successful

    def fused_backward_step(
        self, evaluate, terms, t0, t1, y1, args, solver_state: _SolverState
    ) -> tuple[PyTree, _SolverState, Any]:
        yhat1, vf1 = solver_state
        control = jtu.tree_map(lambda c: -c, terms.contr(t0, t1))
        yhat0 = _leapfrog(terms, y1, yhat1, vf1, control)
        vf0, aux = evaluate(t0, yhat0)
        y0 = _trapezoid(terms, y1, vf1, vf0, control)
        return y0, (yhat0, vf0), aux

    def last_evaluation(self, terms, t1, solver_state: _SolverState):
        yhat1, _ = solver_state
        return t1, yhat1

    def func(self, terms, t0, y0, args):
        return terms.vf(t0, y0, args)


ReversibleHeun.__init__.__doc__ = """**Arguments:** None"""
