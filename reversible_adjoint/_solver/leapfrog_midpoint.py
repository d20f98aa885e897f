"""Leapfrog/midpoint, with its exact inverse.

A two-step method: the step from `t0` to `t1` reads the point before, `(t₋₁, y₋₁)`,
from its solver state and jumps over `(t0, y0)`:

    y1 = y₋₁ + f(t0, y0)·(t1 − t₋₁)          state: (t₋₁, y₋₁) -> (t0, y0)

so the inverse is the same update with the increment negated,

    y₋₁ = y1 − f(t0, y0)·(t1 − t₋₁)          state: (t0, y0) -> (t₋₁, y₋₁)

evaluated at the same point `(t0, y0)`, which the state carries exactly. What the state
after the step cannot tell is `t₋₁`: on a non-uniform grid (`StepTo`, and even
`ConstantStepSize`, whose steps differ by round-off) it is not `t0 − (t1 − t0)`. The
inverse therefore reads `t₋₁` from its `t_previous` argument, the recorded start time of
the previous accepted step, which `ReversibleAdjoint` passes to every solver.
"""

import operator
from collections.abc import Callable
from typing import ClassVar

import diffrax
import jax.numpy as jnp
import jax.tree_util as jtu
from jaxtyping import PyTree

from .base import AbstractReversibleSolver

_SolverState = tuple[PyTree, PyTree]


def _leapfrog(terms, t, y, y_from, args, control):
    # y_to = y_from + f(t, y)·Δ: the forward step with Δ = contr(t₋₁, t1) jumps from
    # y₋₁ to y1; the inverse with −Δ jumps back.
    increment = terms.vf_prod(t, y, args, control)
    return jtu.tree_map(operator.add, y_from, increment)


class LeapfrogMidpoint(AbstractReversibleSolver):
    r"""Leapfrog/midpoint method, with its exact inverse.

    Second-order explicit two-step method. The solver state holds the previous point
    `(t₋₁, y₋₁)` (initially `(t0, y0)`, so the first step is an explicit Euler step),
    and one step is

        y1 = y₋₁ + f(t0, y0)·(t1 − t₋₁)

    Its inverse is the same update with the increment negated, evaluated at the same
    point `(t0, y0)`. Uses linear interpolation for `SaveAt(ts=...)`. Has no error
    estimate, so it does not support adaptive step sizes (as with diffrax, a
    `PIDController` raises); use `ConstantStepSize` or `StepTo`.

    Cost: one vector-field evaluation per step forward. With
    [`reversible_adjoint.ReversibleAdjoint`][], per step backward: one evaluation to
    invert the step, plus one `jax.vjp` of the step (one evaluation and one transpose).

    Stability: on the linear test equation `y' = σy` the step is the recurrence
    `μ² − 2hσ·μ − 1 = 0`, stable only for `hσ` on the imaginary segment `i(−1, 1)`. On
    dissipative problems the parasitic root `μ ≈ −(1 + |hσ|)` grows, weakly for small
    steps: the solution picks up a sign-alternating component that grows like
    `exp(|σ|t)`, and reconstruction round-off in the backward pass grows likewise.

    !!! warning

        On dissipative problems keep `|σ|·(t1 − t0)` moderate, or use float64: on
        `y' = −y` with 1000 steps of 0.01, reconstructing `y0` is off by about 1e-13
        in float64 but 1e-4 in float32, and over 10000 such steps the forward solution
        itself is lost to the parasitic mode.

    This computes the same numbers as `diffrax.LeapfrogMidpoint`, and the two share
    their `solver_state` layout `(t₋₁, y₋₁)`. `ReversibleAdjoint` also accepts
    `diffrax.LeapfrogMidpoint()` directly.

    ??? cite "Reference"

        ```bibtex
        @article{shampine2009stability,
            title={Stability of the leapfrog/midpoint method},
            author={L. F. Shampine},
            journal={Applied Mathematics and Computation},
            volume={208},
            number={1},
            pages={293-298},
            year={2009},
        }
        ```
    """

    term_structure: ClassVar = diffrax.AbstractTerm
    interpolation_cls: ClassVar[Callable[..., diffrax.LocalLinearInterpolation]] = (
        diffrax.LocalLinearInterpolation
    )

    def order(self, terms):
        return 2

    def init(self, terms, t0, t1, y0, args) -> _SolverState:
        del terms, t1, args
        return t0, y0

    def step(
        self, terms, t0, t1, y0, args, solver_state: _SolverState, made_jump
    ) -> tuple[PyTree, None, dict[str, PyTree], _SolverState, diffrax.RESULTS]:
        del made_jump
        tm1, ym1 = solver_state
        control = terms.contr(tm1, t1)
        y1 = _leapfrog(terms, t0, y0, ym1, args, control)
        dense_info = dict(y0=y0, y1=y1)
        return y1, None, dense_info, (t0, y0), diffrax.RESULTS.successful

    def backward_step(
        self,
        terms,
        t0,
        t1,
        y1,
        args,
        solver_state: _SolverState,
        made_jump,
        t_previous,
    ) -> tuple[PyTree, _SolverState]:
        """Inverts one step; see
        [`reversible_adjoint.AbstractReversibleSolver.backward_step`][].

        `t_previous` is the start time of the step before this one (`t0` itself for
        the first step): the time `step` read from its state.
        """
        del made_jump
        t0_state, y0 = solver_state
        # Same dtype as the forward state carries, so that the backward loop's carry
        # keeps its type.
        tm1 = jnp.asarray(t_previous).astype(jnp.result_type(t0_state))
        control = jtu.tree_map(operator.neg, terms.contr(tm1, t1))
        ym1 = _leapfrog(terms, t0, y0, y1, args, control)
        return y0, (tm1, ym1)

    def func(self, terms, t0, y0, args):
        return terms.vf(t0, y0, args)


LeapfrogMidpoint.__init__.__doc__ = """**Arguments:** None"""
