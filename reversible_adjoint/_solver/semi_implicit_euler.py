"""Semi-implicit Euler, with its exact inverse.

A step is two explicit sub-updates ("kicks"), each moving one half of the state
`y = (y_1, y_2)` by a vector field of the other half:

    y1_1 = y0_1 + f_1(t0, y0_2)·Δ_1
    y1_2 = y0_2 + f_2(t0, y1_1)·Δ_2

Each kick is undone by the same kick with the increment negated, since it does not
change the half it reads. The inverse undoes them in reverse order:

    y0_2 = y1_2 − f_2(t0, y1_1)·Δ_2
    y0_1 = y1_1 − f_1(t0, y0_2)·Δ_1

evaluating at the same points as the forward step.
"""

import operator
from collections.abc import Callable
from typing import ClassVar

import diffrax
import jax.tree_util as jtu
from jaxtyping import PyTree

from .base import AbstractReversibleSolver


def _kick(term, t, y_to, y_from, args, control):
    # y_to' = y_to + f(t, y_from)·Δ. Forward with Δ, inverse with −Δ.
    increment = term.vf_prod(t, y_from, args, control)
    return jtu.tree_map(operator.add, y_to, increment)


def _negate(control):
    return jtu.tree_map(operator.neg, control)


class SemiImplicitEuler(AbstractReversibleSolver):
    """Semi-implicit (symplectic) Euler method, with its exact inverse.

    First-order explicit method for partitioned systems `y = (y_1, y_2)` with
    `dy_1 = f_1(t, y_2)·dx_1`, `dy_2 = f_2(t, y_1)·dx_2`, given as two terms
    `(term_1, term_2)`. Symplectic for separable Hamiltonians (`f_1 = ∂H/∂p`,
    `f_2 = −∂H/∂q`): energy errors stay bounded over long times. One step:

        y1_1 = y0_1 + f_1(t0, y0_2)·Δ_1
        y1_2 = y0_2 + f_2(t0, y1_1)·Δ_2

    and its inverse undoes the two updates in reverse order, each with its increment
    negated. Uses linear interpolation for `SaveAt(ts=...)`. Has no error estimate, so
    it does not support adaptive step sizes (as with diffrax, a `PIDController`
    raises); use `ConstantStepSize` or `StepTo`. The solver state is `None`.

    Cost: two vector-field evaluations per step forward (one per term). With
    [`reversible_adjoint.ReversibleAdjoint`][], per step backward: two evaluations to
    invert the step, plus one `jax.vjp` of the step (two evaluations and their
    transposes).

    Stability: on the harmonic oscillator `q' = ωp, p' = −ωq` it is stable, and
    conserves a modified energy, for `hω < 2`, and unstable beyond. Each sub-update is
    a shear, so a step preserves phase-space volume, as does the exact flow of any
    system of this form: none is dissipative, and the backward pass's reconstruction
    round-off grows only as fast as the flow separates nearby trajectories (slowly on
    the oscillator; like `exp(ωt)` on the saddle `q' = ωp, p' = ωq`).

    This computes the same numbers as `diffrax.SemiImplicitEuler`.
    `ReversibleAdjoint` also accepts `diffrax.SemiImplicitEuler()` directly.

    ??? cite "Reference"

        ```bibtex
        @book{hairer2006geometric,
            title={Geometric Numerical Integration: Structure-Preserving Algorithms
                   for Ordinary Differential Equations},
            author={Hairer, Ernst and Lubich, Christian and Wanner, Gerhard},
            edition={2},
            series={Springer Series in Computational Mathematics},
            volume={31},
            publisher={Springer},
            year={2006},
        }
        ```
    """

    term_structure: ClassVar = (diffrax.AbstractTerm, diffrax.AbstractTerm)
    interpolation_cls: ClassVar[Callable[..., diffrax.LocalLinearInterpolation]] = (
        diffrax.LocalLinearInterpolation
    )

    def order(self, terms):
        return 1

    def init(self, terms, t0, t1, y0, args) -> None:
        return None

    def step(
        self, terms, t0, t1, y0, args, solver_state: None, made_jump
    ) -> tuple[PyTree, None, dict[str, PyTree], None, diffrax.RESULTS]:
        del solver_state, made_jump
        term_1, term_2 = terms
        y0_1, y0_2 = y0
        y1_1 = _kick(term_1, t0, y0_1, y0_2, args, term_1.contr(t0, t1))
        y1_2 = _kick(term_2, t0, y0_2, y1_1, args, term_2.contr(t0, t1))
        y1 = (y1_1, y1_2)
        dense_info = dict(y0=y0, y1=y1)
        return y1, None, dense_info, None, diffrax.RESULTS.successful

    def backward_step(
        self, terms, t0, t1, y1, args, solver_state: None, made_jump, t_previous
    ) -> tuple[PyTree, None]:
        del solver_state, made_jump, t_previous
        term_1, term_2 = terms
        y1_1, y1_2 = y1
        y0_2 = _kick(term_2, t0, y1_2, y1_1, args, _negate(term_2.contr(t0, t1)))
        y0_1 = _kick(term_1, t0, y1_1, y0_2, args, _negate(term_1.contr(t0, t1)))
        return (y0_1, y0_2), None

    def func(self, terms, t0, y0, args):
        term_1, term_2 = terms
        y0_1, y0_2 = y0
        return term_1.vf(t0, y0_2, args), term_2.vf(t0, y0_1, args)


SemiImplicitEuler.__init__.__doc__ = """**Arguments:** None"""
