"""Asynchronous leapfrog (ALF), the integrator inside MALI, with its exact inverse.

A step is two half-steps around one evaluation of the vector field at the midpoint
`(s, k)`; the inverse is the same two half-steps taken backwards around an evaluation
at the same `(s, k)`. So the forward step and the inverse are written with the same
helpers (`_midpoint_time`, `_half_step`, and the pair `_update_velocity` /
`_restore_velocity`), and the backward pass of `ReversibleAdjoint` can linearise the
vector field once at `(s, k)` and use it both to reconstruct the step and to
differentiate it (`evaluation_reuse = "same_step"`).
"""

from collections.abc import Callable
from typing import Any, ClassVar

import diffrax
import equinox as eqx
import jax.lax as lax
import jax.tree_util as jtu
from jaxtyping import PyTree

from .._diffrax_internals import is_sde
from .base import AbstractReversibleSolver, warn_at_caller

# The solver state is `v`, the running estimate of the derivative (a value of
# `terms.vf`), at the start or end of the step.
_SolverState = PyTree


def _midpoint_time(t0, t1):
    # One expression for forward and inverse, so that both evaluate at the same `s`.
    return t0 + 0.5 * (t1 - t0)


def _half_step(terms, z, v, control):
    # z' = z + v·Δ/2. Forward with Δ = Δt, inverse with Δ = −Δt.
    half_control = jtu.tree_map(lambda c: 0.5 * c, control)
    return jtu.tree_map(lambda a, b: a + b, z, terms.prod(v, half_control))


def _update_velocity(eta, u, v0):
    # v1 = v0 + 2η(u − v0) = (1 − 2η)·v0 + 2η·u. At η = 1 this is the reflection
    # v1 = 2u − v0, its own inverse: `_restore_velocity` undoes it with the same
    # arithmetic.
    if eta == 1:
        return jtu.tree_map(lambda a, b: 2 * a - b, u, v0)
    return jtu.tree_map(lambda a, b: (1 - 2 * eta) * b + 2 * eta * a, u, v0)


def _restore_velocity(eta, u, v1):
    # The inverse of `_update_velocity`: v0 = (v1 − 2η·u) / (1 − 2η).
    if eta == 1:
        return jtu.tree_map(lambda a, b: 2 * a - b, u, v1)
    return jtu.tree_map(lambda a, b: (b - 2 * eta * a) / (1 - 2 * eta), u, v1)


def _error(terms, u, v0, control):
    # h·(u − v0): the difference between this step and an explicit Euler step that
    # uses v0 (divided by η), so O(h²) per step: an embedded first-order method.
    return terms.prod(jtu.tree_map(lambda a, b: a - b, u, v0), control)


def _check_ode(terms):
    if is_sde(terms):
        raise ValueError(
            "`AsynchronousLeapfrog` is a solver for ODEs, but these terms contain a "
            "Brownian motion (an SDE). Use `reversible_adjoint.ReversibleHeun()`, "
            "which is algebraically reversible and converges to the Stratonovich "
            "solution of an SDE."
        )


class AsynchronousLeapfrog(AbstractReversibleSolver, diffrax.AbstractAdaptiveSolver):
    """Asynchronous leapfrog method (ALF, the integrator inside MALI), with its exact
    inverse.

    Algebraically reversible second-order method for ODEs. It carries the solution `z`
    and a running estimate `v` of its derivative, initially `v0 = f(t0, z0)`. One step
    of size `h`, with damping `η` (`eta`):

        s  = t0 + h/2
        k  = z0 + v0·h/2
        u  = f(s, k)
        v1 = v0 + 2η·(u − v0)
        z1 = k + v1·h/2

    and its inverse takes the same half-steps backwards, evaluating `f` at the same
    point:

        k  = z1 − v1·h/2
        u  = f(s, k)
        v0 = (v1 − 2η·u) / (1 − 2η)
        z0 = k − v0·h/2

    Order 2 at `η = 1` (plain ALF), order 1 for `η < 1`. Has an embedded first-order
    error estimate `h·(u − v0)` for adaptive steps, and uses third-order Hermite
    interpolation on `(z0, v0, z1, v1)` for `SaveAt(ts=...)`, whose error is second
    order, like the method's.

    Cost: one vector-field evaluation per step forward; with
    [`reversible_adjoint.ReversibleAdjoint`][], one vector-field linearisation and one
    transpose per step backward (the inverse evaluates the vector field where the
    forward step did, so one `jax.vjp` serves both).

    Stability: on the linear test equation `y' = σy` the step at `η = 1` has the
    leapfrog characteristic polynomial `μ² − 2hσ·μ − 1`, stable only for `hσ` on the
    imaginary segment `i(−1, 1)`. On dissipative problems (`σ < 0`) the parasitic
    root is `μ ≈ −(1 + h|σ|)`, so a spurious oscillating mode grows like `exp(|σ|·T)`
    over a solve of length `T`, whatever the step size (`y' = −y`: harmless at
    `T = 10`, overflowing at `T = 100`). Damping (`η < 1`) makes the one-step map
    contract volume by `|1 − 2η|` and stabilises a stretch of the negative real axis
    (`hσ ∈ (−0.22, 0)` at `η = 0.9`, `(−0.66, 0)` at `η = 0.75`) while losing neutral
    stability on the imaginary axis (oscillatory modes then grow), and the inverse
    amplifies round-off by `1/|1 − 2η|` per step, so reconstruction error grows like
    `|1 − 2η|^(−N)` over `N` steps: use it only on short solves.

    ??? cite "Reference"

        ```bibtex
        @inproceedings{zhuang2021mali,
            title={{MALI}: A memory efficient and reverse accurate integrator for
                   {N}eural {ODE}s},
            author={Zhuang, Juntang and Dvornek, Nicha C. and Tatikonda, Sekhar and
                    Duncan, James S.},
            booktitle={International Conference on Learning Representations},
            year={2021}
        }
        ```
    """

    eta: float = eqx.field(default=1.0, static=True, converter=float)

    term_structure: ClassVar = diffrax.AbstractTerm
    interpolation_cls: ClassVar[
        Callable[..., diffrax.ThirdOrderHermitePolynomialInterpolation]
    ] = diffrax.ThirdOrderHermitePolynomialInterpolation
    evaluation_reuse: ClassVar = "same_step"

    def __check_init__(self):
        if not 0 < self.eta <= 1:
            raise ValueError(
                f"`AsynchronousLeapfrog(eta={self.eta})`: `eta` must lie in (0, 1]. "
                "Use `eta=1.0` (plain asynchronous leapfrog)."
            )
        if self.eta == 0.5:
            raise ValueError(
                "`AsynchronousLeapfrog(eta=0.5)` is not invertible: its inverse "
                "divides by `1 - 2 * eta = 0`. Use `eta=1.0` (plain asynchronous "
                "leapfrog)."
            )
        if self.eta != 1:
            warn_at_caller(
                f"`AsynchronousLeapfrog(eta={self.eta})`: with `eta < 1` the inverse "
                "amplifies round-off by `1 / |1 - 2 * eta|` per step, so the error of "
                "the reconstructed trajectory (and of gradients from "
                "`ReversibleAdjoint`) grows like `|1 - 2 * eta| ** (-N)` over `N` "
                "steps, and the method is only first order. Use it for short solves "
                "only, or use `eta=1.0`.",
            )

    def order(self, terms):
        return 2 if self.eta == 1 else 1

    def error_order(self, terms):
        # `h·(u − v0)` is O(h²) for every η (it compares the step with an embedded
        # Euler step), whereas diffrax's default would follow `order` (1 for η < 1).
        return 2

    def init(self, terms, t0, t1, y0, args) -> _SolverState:
        del t1
        _check_ode(terms)
        return terms.vf(t0, y0, args)

    def step(
        self, terms, t0, t1, y0, args, solver_state: _SolverState, made_jump
    ) -> tuple[PyTree, PyTree, dict[str, PyTree], _SolverState, diffrax.RESULTS]:
        _check_ode(terms)
        v0 = solver_state
        if made_jump is not False:
            v0 = lax.cond(made_jump, lambda: terms.vf(t0, y0, args), lambda: v0)
        control = terms.contr(t0, t1)
        k = _half_step(terms, y0, v0, control)
        u = terms.vf(_midpoint_time(t0, t1), k, args)
        v1 = _update_velocity(self.eta, u, v0)
        y1 = _half_step(terms, k, v1, control)
        y1_error = _error(terms, u, v0, control)
        dense_info = dict(
            y0=y0, y1=y1, k0=terms.prod(v0, control), k1=terms.prod(v1, control)
        )
        return y1, y1_error, dense_info, v1, diffrax.RESULTS.successful

    def fused_backward_step(
        self, evaluate, terms, t0, t1, y1, args, solver_state: _SolverState
    ) -> tuple[PyTree, _SolverState, Any]:
        _check_ode(terms)
        v1 = solver_state
        control = jtu.tree_map(lambda c: -c, terms.contr(t0, t1))
        k = _half_step(terms, y1, v1, control)
        u, aux = evaluate(_midpoint_time(t0, t1), k)
        v0 = _restore_velocity(self.eta, u, v1)
        y0 = _half_step(terms, k, v0, control)
        return y0, v0, aux

    def func(self, terms, t0, y0, args):
        return terms.vf(t0, y0, args)


AsynchronousLeapfrog.__init__.__doc__ = """**Arguments:**

- `eta`: the damping `η`, in `(0, 1]` and not `0.5`. The default `1.0` is plain
    asynchronous leapfrog (second order, and its inverse loses no precision to
    damping). Values below `1` are first order, and their inverse amplifies round-off
    by `1 / |1 - 2 * eta|` per step; a warning says so.
"""
