"""`Reversible`: the McCallum–Foster wrapper that makes any explicit Runge–Kutta
method algebraically reversible.

The state is the solution `y` and an auxiliary `z` (initially `z0 = y0`). Writing
`Ψ_h(t, y)` for the increment of one step of the base method from `t` to `t + h`:

    forward                                   inverse
    y1 = λ·y0 + (1 − λ)·z0 + Ψ_h(t0, z0)      z0 = z1 + Ψ_{−h}(t1, y1)
    z1 = z0 − Ψ_{−h}(t1, y1)                  y0 = (y1 − (1 − λ)·z0 − Ψ_h(t0, z0)) / λ

The inverse never inverts the base method: it evaluates the same two base steps, at
the same points, in the opposite order. `_increment` is therefore the one place where
the base method is called, and both directions go through it.

Design notes.
- `Ψ_{−h}(t1, ·)` is the base method's own `step` from `t1` back to `t0`. diffrax's
    Runge–Kutta steps take `t1 < t0` as a negative increment: `terms.contr(t1, t0)`
    is `t0 − t1` for an `ODETerm`, `W(t0) − W(t1)` for a Brownian control, and
    `WrapTerm` (time-reversed solves) maps both orders consistently.
- Each base step starts from a fresh `solver.init` with `made_jump=False`. A
    first-same-as-last (FSAL) method therefore re-evaluates its first stage instead of
    reusing the previous step's last one: the cached evaluation would be part of the
    solver state, and it was made at a point (the end of a base step) that the inverse
    never revisits. The wrapper's `solver_state` is `z` alone, which the inverse
    rebuilds exactly.
- The base method's stage loop. diffrax runs a Runge–Kutta method's stages in an
    `equinox.internal.while_loop` of kind `scan_kind`; the default, `None`, is
    `"checkpointed"`, a `custom_vjp` that forward mode cannot differentiate. diffrax's
    `ForwardMode` and `DirectAdjoint` switch a solver that is an `AbstractRungeKutta`
    with `scan_kind=None` to `"lax"` and `"bounded"`. `Reversible` is registered as a
    virtual subclass of `AbstractRungeKutta` and has a `scan_kind` field of its own, so
    that switch reaches it, and `_base_for_stepping` passes it on to a base method left
    at `None`. Reverse-mode adjoints leave it at `None`: the base then runs exactly as
    given (`"lax"` is the same loop undifferentiated, but cannot be reverse-mode
    differentiated; `"bounded"` can be both, but compiles to different code, whose
    output differs from the default's in the last bits, and costs reverse mode time,
    see `benchmarks/scan_kind.py`).
- `Ψ` is computed as (base step's output) − (its input). Round-off in that difference
    is the same on the forward and backward passes, because both evaluate it at the
    same arguments.
"""

import abc
import math
from collections.abc import Callable
from typing import ClassVar, Literal

import diffrax
import equinox as eqx
import jax.tree_util as jtu
from jaxtyping import PyTree

from .._diffrax_internals import is_sde
from .base import AbstractReversibleSolver, warn_at_caller

_SolverState = PyTree  # the auxiliary state `z`, shaped like `y`

_EXPLICIT_RK_EXAMPLES = (
    "`diffrax.Euler()`, `diffrax.Heun()`, `diffrax.Midpoint()`, `diffrax.Ralston()`, "
    "`diffrax.Bosh3()`, `diffrax.Tsit5()`, `diffrax.Dopri5()`, `diffrax.Dopri8()`"
)


def _check_base_solver(solver) -> None:
    name = type(solver).__name__
    if isinstance(solver, (AbstractReversibleSolver, diffrax.ReversibleHeun)):
        raise ValueError(
            f"`Reversible` wraps a non-reversible explicit Runge–Kutta method, but "
            f"`{name}` is already algebraically reversible: use it directly with "
            "`adjoint=reversible_adjoint.ReversibleAdjoint()`."
        )
    if isinstance(solver, diffrax.AbstractImplicitSolver):
        raise ValueError(
            f"`Reversible` needs an explicit Runge–Kutta method, but `{name}` is "
            f"implicit. Use an explicit one ({_EXPLICIT_RK_EXAMPLES}); note that the "
            "wrapped method is only stable in a thin strip along the imaginary axis "
            "whatever the base method, so for stiff problems keep "
            f"`{name}` with `adjoint=diffrax.RecursiveCheckpointAdjoint()` instead."
        )
    if not isinstance(solver, (diffrax.AbstractERK, diffrax.Euler)):
        raise ValueError(
            f"`Reversible` needs an explicit Runge–Kutta method, such as "
            f"{_EXPLICIT_RK_EXAMPLES}, but got `{name}`. For Stratonovich SDEs use "
            "`Reversible(diffrax.Heun())`, `Reversible(diffrax.Midpoint())` or "
            "`reversible_adjoint.ReversibleHeun()`; otherwise keep "
            f"`{name}` with `adjoint=diffrax.RecursiveCheckpointAdjoint()`."
        )


_SCAN_KINDS = (None, "lax", "checkpointed", "bounded")


def _is_none(x):
    return x is None


def _increment(solver, terms, t_start, t_end, y, args):
    """`Ψ`: the increment of one step of the base method from `(t_start, y)` to
    `t_end` (either side of `t_start`), with the step's error estimate and result."""
    state = solver.init(terms, t_start, t_end, y, args)
    y_end, y_error, _, _, result = solver.step(
        terms, t_start, t_end, y, args, state, False
    )
    increment = jtu.tree_map(lambda a, b: a - b, y_end, y)
    return increment, y_error, result


def _shift(z, increment, sign):
    # z1 = z0 − Ψ_{−h}(t1, y1) forward (sign −1); z0 = z1 + Ψ_{−h}(t1, y1) inverse (+1).
    return jtu.tree_map(lambda a, b: a + sign * b, z, increment)


def _couple(y0, z0, increment, coupling):
    # y1 = λ·y0 + (1 − λ)·z0 + Ψ_h(t0, z0)
    return jtu.tree_map(
        lambda y, z, d: coupling * y + (1 - coupling) * z + d, y0, z0, increment
    )


def _uncouple(y1, z0, increment, coupling):
    # y0 = (y1 − (1 − λ)·z0 − Ψ_h(t0, z0)) / λ, the inverse of `_couple` in y0.
    return jtu.tree_map(
        lambda y, z, d: (y - (1 - coupling) * z - d) / coupling, y1, z0, increment
    )


class Reversible(AbstractReversibleSolver, diffrax.AbstractStratonovichSolver):
    """Makes any explicit Runge–Kutta method algebraically reversible (McCallum and
    Foster's reversible wrapper).

    `Reversible(diffrax.Tsit5())` steps a pair `(y, z)`, `z0 = y0`, with a coupling
    `λ ∈ (0, 1]`. With `Ψ_h(t, y)` the increment of one step of the base method:

        y1 = λ·y0 + (1 − λ)·z0 + Ψ_h(t0, z0)
        z1 = z0 − Ψ_{−h}(t1, y1)

    and the step is undone exactly by

        z0 = z1 + Ψ_{−h}(t1, y1)
        y0 = (y1 − (1 − λ)·z0 − Ψ_h(t0, z0)) / λ

    so [`reversible_adjoint.ReversibleAdjoint`][] can backpropagate through it in O(1)
    memory. The `solver_state` is `z`.

    ```python
    solver = reversible_adjoint.Reversible(diffrax.Tsit5())
    sol = diffrax.diffeqsolve(term, solver, t0, t1, dt0, y0, max_steps=4096,
                              adjoint=reversible_adjoint.ReversibleAdjoint())
    ```

    **Order.** The same as the base method's (`order`, `strong_order` and
    `error_order` are the base method's). Adaptive step sizes use the error estimate of
    the forward base step `Ψ_h(t0, z0)`, so they are available whenever the base method
    has one (not for `diffrax.Euler()`). Dense output (`SaveAt(ts=...)`) is linear
    interpolation between `y0` and `y1`, first order whatever the base method. For
    base methods of odd order the leading error term changes sign as `N·(1 − λ)`
    grows from small to large (`z` lags `y` by the base method's local error, and the
    coupling feeds that lag back into `y`); the order is unchanged, but step-halving
    studies across that transition can show an apparent order above the base's.
    On short solves (`N·(1 − λ)` well below 1), where the scheme is nearly
    time-symmetric (it is symmetric at `λ = 1`), a fifth-order base can show about
    sixth order: `Reversible(diffrax.Tsit5())` (`λ = 0.999`) on diffrax's order test
    (a random linear 10×10 system over [0, 4], 4 to 256 steps) converges like `h^6.0`
    to `h^6.1` (bare `Tsit5`: 5.8 and 6.0 on the two coarsest halvings, then 4.5
    to 4.9), and `Reversible(diffrax.Dopri5())` like `h^5.7` to `h^6.1` up to 32
    steps, then `h^5`; on small nonlinear problems over [0, 1],
    `Reversible(diffrax.Tsit5())` shows 5.1 to 5.6. This is not an order to rely on.

    **Autodiff.** Whatever the base method, the wrapper works with `ForwardMode` (so
    `jax.jvp` and `jax.jacfwd` too), `DirectAdjoint` (both modes),
    `RecursiveCheckpointAdjoint` and `ReversibleAdjoint`. diffrax runs a Runge–Kutta
    method's stages in a loop of kind `scan_kind`, whose default (`None`) reverse mode
    can differentiate but forward mode cannot; diffrax's `ForwardMode` and
    `DirectAdjoint` switch it to `"lax"` and `"bounded"`. They switch the wrapper's
    `scan_kind` field, which it passes on to a base method left at `None`: the wrapper
    behaves as its base method would. Reverse-mode adjoints leave it at `None`, and the
    base method runs as given. (Stepping the base with `"bounded"` always, which both
    modes can differentiate, would cost reverse mode 1.1 to 2 times the time and 1.6
    to 4.9 times the memory: `benchmarks/scan_kind.py`.) `BacksolveAdjoint` works
    when saving at `t1` only: with `SaveAt(ts=...)` it restarts its backward solve at
    each save time with the previous solve's `solver_state`, here a `z` that missed
    the jump it makes in `y`, and its gradients are wrong (as they are for diffrax's
    `ReversibleHeun`).

    **Cost.** Two base steps per step forward: `2s` vector-field evaluations for an
    `s`-stage base method (first-same-as-last reuse is not possible: `Tsit5` and
    `Dopri5` cost 7 evaluations per base step, 14 per step). Backward with
    `ReversibleAdjoint` (its generic path): two base steps to invert, then one
    `jax.vjp` of the step, that is `4s` evaluations and the transpose of `2s`.

    **Stability.** On `y' = σy`, with `w = hσ` and an exact base step, the one-step
    matrix has eigenvalues `e^w` (the solution) and `λ·e^(−w)` (a spurious mode), and
    determinant `λ`. It is stable for `ln λ ≤ Re(w) ≤ 0`: a strip along the imaginary
    axis, of width `−ln λ ≈ 1 − λ`, cut off at large `|w|` where the base method
    stops approximating `e^w` well. Oscillatory problems are fine; dissipative ones
    need `|h·Re σ| ≲ 1 − λ`, or the spurious mode grows like `(λ·e^(|Re w|))^N`.

    **Choosing the coupling.** Smaller `λ` widens the strip but the inverse divides by
    `λ` every step, amplifying reconstruction round-off by about `λ^(−N)` over `N`
    steps (`λ = 0.9`, 2000 steps: a factor of about `1e91`; `λ = 0.999`, 1000 steps:
    about `2.7`). `λ = 1` is the uncoupled scheme: no amplification, but unstable on
    any dissipative problem. A warning is raised for `λ < 0.99`. `λ^(−N)` is a bound,
    often loose; but stability alone is not enough either: when the spurious mode
    decays more slowly than the solution, round-off in `y_N` of relative size `ε` comes
    back as an error of about `ε·|y_N|/|y(T)|` in the reconstructed start. Check the
    round trip on your problem (see the "choosing a solver" notebook).

    **SDEs.** Stratonovich SDEs (e.g. `MultiTerm(ODETerm(...), ControlTerm(...,
    VirtualBrownianTree(...)))`) work when the base method converges to the
    Stratonovich solution: `Reversible(diffrax.Heun())` or
    `Reversible(diffrax.Midpoint())`. Other base methods are refused for SDEs.

    ??? cite "Reference"

        ```bibtex
        @article{mccallum2024efficient,
            author={McCallum, Sam and Foster, James},
            title={Efficient, Accurate and Stable Gradients for Neural ODEs},
            year={2024},
            journal={arXiv:2410.11648}
        }
        ```
    """

    solver: diffrax.AbstractSolver
    coupling: float
    scan_kind: None | Literal["lax", "checkpointed", "bounded"]

    interpolation_cls: ClassVar[Callable[..., diffrax.LocalLinearInterpolation]] = (
        diffrax.LocalLinearInterpolation
    )

    def __init__(
        self,
        solver: diffrax.AbstractSolver,
        coupling=0.999,
        scan_kind=None,
    ):
        """**Arguments:**

        - `solver`: the base method, an explicit Runge–Kutta method such as
            `diffrax.Tsit5()`. Implicit methods, stochastic Runge–Kutta methods and
            other solvers are refused with a `ValueError`.
        - `coupling`: `λ ∈ (0, 1]`. The default `0.999` suits solves of up to a few
            thousand steps; see "Choosing the coupling" above. Values below `0.99`
            warn.
        - `scan_kind`: how the base method's stages are looped over, when the base
            method leaves its own `scan_kind` at `None`; see "Autodiff" above. Leave it
            at `None`: diffrax's `ForwardMode` and `DirectAdjoint` set it themselves.
        """
        _check_base_solver(solver)
        if scan_kind not in _SCAN_KINDS:
            raise ValueError(
                "`Reversible(scan_kind=...)` must be one of None, 'lax', "
                f"'checkpointed' or 'bounded', but got {scan_kind!r}."
            )
        coupling = float(coupling)
        if not 0 < coupling <= 1:
            raise ValueError(
                f"`Reversible(coupling=...)` must lie in (0, 1], but got {coupling}. "
                "The default 0.999 suits most problems; larger (closer to 1) means "
                "more accurate reconstruction, smaller means a wider stability region."
            )
        if coupling < 0.99:
            warn_at_caller(
                f"`Reversible(coupling={coupling})`: reconstructing the forward "
                f"solve in reverse amplifies round-off by about coupling^(-N) over N "
                f"steps (here 10^{-1000 * math.log10(coupling):.0f} after 1000 steps), "
                "which can make `ReversibleAdjoint` gradients inaccurate. Prefer a "
                "coupling in [0.99, 1), or check the gradients against "
                "`diffrax.RecursiveCheckpointAdjoint()`."
            )
        self.solver = solver
        self.coupling = coupling
        self.scan_kind = scan_kind

    def _base_for_stepping(self):
        """The base method, with its stage loop's `scan_kind` set to this wrapper's
        when the base leaves it at `None` (and has a stage loop)."""
        base = self.solver
        if (
            self.scan_kind is not None
            and isinstance(base, diffrax.AbstractRungeKutta)
            and base.scan_kind is None
        ):
            base = eqx.tree_at(
                lambda s: s.scan_kind, base, self.scan_kind, is_leaf=_is_none
            )
        return base

    @property
    def term_structure(self):
        return self.solver.term_structure

    @property
    def term_compatible_contr_kwargs(self):
        return self.solver.term_compatible_contr_kwargs

    def order(self, terms):
        return self.solver.order(terms)

    def strong_order(self, terms):
        return self.solver.strong_order(terms)

    def error_order(self, terms):
        return self.solver.error_order(terms)

    def _check_terms(self, terms):
        if is_sde(terms) and not isinstance(
            self.solver, diffrax.AbstractStratonovichSolver
        ):
            raise ValueError(
                f"`Reversible({type(self.solver).__name__}())` cannot solve an SDE: "
                f"`{type(self.solver).__name__}` does not converge to the Stratonovich "
                "solution, and the reversible wrapper is a Stratonovich scheme. Use "
                "`Reversible(diffrax.Heun())` or `Reversible(diffrax.Midpoint())` (or "
                "`reversible_adjoint.ReversibleHeun()`), with the SDE in Stratonovich "
                "form."
            )

    def init(self, terms, t0, t1, y0, args) -> _SolverState:
        del t0, t1, args
        self._check_terms(terms)
        return y0

    def step(
        self, terms, t0, t1, y0, args, solver_state: _SolverState, made_jump
    ) -> tuple[PyTree, PyTree, dict[str, PyTree], _SolverState, diffrax.RESULTS]:
        # The state carries no cached vector field, so a jump needs no special care.
        del made_jump
        self._check_terms(terms)
        z0 = solver_state
        base = self._base_for_stepping()
        forward, y_error, result_forward = _increment(base, terms, t0, t1, z0, args)
        y1 = _couple(y0, z0, forward, self.coupling)
        backward, _, result_backward = _increment(base, terms, t1, t0, y1, args)
        z1 = _shift(z0, backward, -1)
        result = diffrax.RESULTS.where(
            result_forward == diffrax.RESULTS.successful,
            result_backward,
            result_forward,
        )
        dense_info = dict(y0=y0, y1=y1)
        return y1, y_error, dense_info, z1, result

    def backward_step(
        self, terms, t0, t1, y1, args, solver_state: _SolverState, made_jump, t_previous
    ) -> tuple[PyTree, _SolverState]:
        del made_jump, t_previous
        self._check_terms(terms)
        z1 = solver_state
        base = self._base_for_stepping()
        backward, _, _ = _increment(base, terms, t1, t0, y1, args)
        z0 = _shift(z1, backward, +1)
        forward, _, _ = _increment(base, terms, t0, t1, z0, args)
        y0 = _uncouple(y1, z0, forward, self.coupling)
        return y0, z0

    def func(self, terms, t0, y0, args):
        return self.solver.func(terms, t0, y0, args)


# diffrax's `ForwardMode` and `DirectAdjoint` make a Runge–Kutta method's stage loop
# forward-differentiable only if `isinstance(solver, AbstractRungeKutta)` and
# `solver.scan_kind is None`; they then replace `solver.scan_kind`. Registering the
# wrapper as a virtual subclass lets that switch reach its `scan_kind` field and,
# through `_base_for_stepping`, its base method. (diffrax 0.7 checks for
# `AbstractRungeKutta` nowhere else. Equinox's metaclass refuses `register`, to keep
# its abstract-attribute checks sound for real subclasses; a virtual subclass inherits
# nothing from the class it is registered with, so `abc.ABCMeta.register`, underneath
# it, is used directly.)
abc.ABCMeta.register(diffrax.AbstractRungeKutta, Reversible)
