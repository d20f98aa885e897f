"""`Reversible`: the McCallum–Foster wrapper that makes any explicit Runge–Kutta
method algebraically reversible.

The state is the solution `y` and an auxiliary `z` (initially `z0 = y0`). Writing
`Ψ_h(t, y)` for the increment of one step of the base method from `t` to `t + h`:

    forward                                   inverse
    y1 = λ·y0 + (1 − λ)·z0 + Ψ_h(t0, z0)      z0 = z1 + Ψ_{−h}(t1, y1)
    z1 = z0 − Ψ_{−h}(t1, y1)                  y0 = (y1 − (1 − λ)·z0 − Ψ_h(t0, z0)) / λ

The inverse never inverts the base method: it evaluates the same two base steps, at
the same points, in the opposite order. `_increment` is therefore the one place where
the base method is called, and both directions go through it: each base step is an
`evaluation` (in the sense of `AbstractReversibleSolver`), which `fused_step` and
`fused_backward_step` make through the function they are given. `ReversibleAdjoint`
makes each once, linearised, to reconstruct the step, and replays it to differentiate
the step (`evaluation_reuse = "same_step"`). The step's error estimate and the
forward base step's `dense_info` are computed apart (`_error_and_dense_info`), from
what the evaluation passes on, so that a linearisation leaves out what only they need.

Design notes.
- `Ψ_{−h}(t1, ·)` is a step of the base method from `t1` back to `t0`. diffrax's
    Runge–Kutta steps (and `_explicit_rk.py`) take `t1 < t0` as a negative
    increment: `terms.contr(t1, t0)` is `t0 − t1` for an `ODETerm`, `W(t0) − W(t1)`
    for a Brownian control, and `WrapTerm` (time-reversed solves) maps both orders
    consistently.
- Each base step starts afresh (one stepped by its own `step`, from a fresh
    `solver.init` with `made_jump=False`). A first-same-as-last (FSAL) method
    therefore evaluates its first stage instead of reusing the previous step's last
    one: the cached evaluation would be part of the solver state, and it was made at
    a point (the end of a base step) that the inverse never revisits. The wrapper's
    `solver_state` is `z` alone, which the inverse rebuilds exactly.
- The base method's stages. diffrax runs a Runge–Kutta method's stages in an
    `equinox.internal.while_loop` of kind `scan_kind`. The default, `None`, is
    `"checkpointed"`, a `custom_vjp` whose pullback evaluates every stage again and
    which forward mode cannot differentiate; `"lax"`, the same loop, reverse mode
    cannot differentiate; `"bounded"` both can, but it costs reverse mode time and
    memory. A base method with one explicit Butcher tableau (every explicit
    Runge–Kutta method in diffrax) is therefore stepped not by its `step` but by
    `_explicit_rk.py`, which runs the stages of the tableau in a `lax.scan`: the same
    stages, solution, error estimate and `dense_info` as diffrax's step, to round-off,
    in plain JAX, which both modes differentiate, whose linearisation keeps every
    stage's residuals and can be transposed, and whose pullback evaluates nothing
    again (`benchmarks/scan_kind.py` compares it with diffrax's own loops). The stages
    are a loop, not a Python loop traced once per stage: unrolled, XLA fuses the chain
    of stages of an elementwise vector field (on a pytree state, say) into each output
    separately, and the compiled program grows much faster than the work
    (`benchmarks/pytree_state.py`; `_explicit_rk.py` has the numbers). The forward
    and backward base steps both go through it, so the inverse stays the algebraic
    inverse of the step. `evaluation` makes the stages the solution needs; the others
    (the last of a first-same-as-last method, which serves the error estimate and the
    dense output only) are made by `_error_and_dense_info`, for the forward base step
    only, and only if wanted: the compiled program leaves them out of a constant-step
    solve without dense output, and a linearised evaluation does not hold them. Any
    other base (`Euler`, which has no stage loop; an explicit method with a `step` of
    its own) is stepped by its `step`.
- `scan_kind`. diffrax's `ForwardMode` and `DirectAdjoint` switch a solver that is an
    `AbstractRungeKutta` with `scan_kind=None` to `"lax"` and `"bounded"`.
    `Reversible` is registered as a virtual subclass of `AbstractRungeKutta` and has a
    `scan_kind` field of its own, so that switch reaches it, and `_base_for_stepping`
    passes it on to a base method left at `None` (which matters to a base stepped by
    its own `step`). A base stepped from its tableau ignores it.
- Fusing. `ReversibleAdjoint` replays a linearised base step in the backward step
    that made it. A base step from a tableau has a linearisation that can be transposed
    (`evaluation_transposable`), so the replay is a custom JVP, which forward mode
    can differentiate too (forward-over-reverse: `jax.hessian`); such a base is
    always fused. A base stepped by its own `step` is replayed with a custom VJP,
    which is reverse-mode only; so `evaluation_reuse` is `"same_step"` there only
    when the base's `scan_kind` (after `_base_for_stepping`) is `None` or
    `"checkpointed"`, and `"lax"` or `"bounded"` asks for forward-differentiable
    stepping, and gets the unfused backward step, which `jax.hessian` can
    differentiate. `Euler` has no `scan_kind`, and is never fused.
- `Ψ` is `Σ b_i·k_i` for a base method stepped from its tableau, and (base step's
    output) − (its input) for another. Either way its round-off is the same on the
    forward and backward passes, because both compute it at the same arguments.
- Dense output. `step` returns the forward base step's `dense_info` (from
    `_error_and_dense_info`) as part of its own (`_ReversibleInterpolation`
    turns it into the dense output of the step from `y0` to `y1`). It is an output of
    `step` like `y1`, so `ReversibleAdjoint`, which differentiates `step`, carries the
    save times' cotangents through the base step's stages with no code of its own.
    A base method whose dense output is linear passes nothing (linear interpolation
    between `y0` and `y1`).
"""

import abc
import functools
import math
from typing import Literal

import diffrax
import equinox as eqx
import jax
import jax.numpy as jnp
import jax.tree_util as jtu
from jaxtyping import ArrayLike, PyTree

from .._diffrax_internals import is_sde
from . import _explicit_rk as explicit_rk
from ._explicit_rk import explicit_tableau, solution_stages
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


class _GivenControl(diffrax.AbstractTerm):
    """`term`, with the control over a base step given: the control over a step is
    queried once (a Brownian motion's query costs as much as a vector-field
    evaluation), both base steps use it (the backward one negated), and it is an input
    of each base step as an evaluation (`Reversible.evaluation`)."""

    term: diffrax.AbstractTerm
    control: PyTree

    def vf(self, t, y, args):
        return self.term.vf(t, y, args)

    def contr(self, t0, t1, **kwargs):
        del t0, t1, kwargs  # A base step asks for the control over itself only.
        return self.control

    def prod(self, vf, control):
        return self.term.prod(vf, control)

    def vf_prod(self, t, y, args, control):
        return self.term.vf_prod(t, y, args, control)

    def is_vf_expensive(self, t0, t1, y, args):
        return self.term.is_vf_expensive(t0, t1, y, args)


def _negate(control):
    return jtu.tree_map(lambda c: -c, control)


def _increment(solver, terms, t_start, t_end, y, args):
    """`Ψ`: the increment of one step of the base method from `(t_start, y)` to
    `t_end` (either side of `t_start`), what `Reversible._error_and_dense_info` needs,
    and the step's result. A method with one explicit Butcher tableau is stepped from
    the tableau, as far as its solution needs (`_explicit_rk.py`), and passes those
    stages on; any other by its own `step`, and passes its error estimate and
    `dense_info` on."""
    tableau = explicit_tableau(solver)
    if tableau is not None:
        ks = explicit_rk.stages(
            tableau, terms, t_start, t_end, y, args, stop=solution_stages(tableau)
        )
        increment = explicit_rk.increment(tableau, ks, y)
        return increment, ks, diffrax.RESULTS.successful
    state = solver.init(terms, t_start, t_end, y, args)
    y_end, y_error, dense_info, _, result = solver.step(
        terms, t_start, t_end, y, args, state, False
    )
    increment = jtu.tree_map(lambda a, b: a - b, y_end, y)
    return increment, (y_error, dense_info), result


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


def _chord(theta):
    # `(1 − θ)·a + θ·b`, which is `a` at `θ = 0` and `b` at `θ = 1` exactly (unlike
    # `a + θ·(b − a)`).
    return lambda a, b: (1 - theta) * a + theta * b


class _ReversibleInterpolation(diffrax.AbstractLocalInterpolation):
    """The dense output of one `Reversible` step from `(t0, y0)` to `(t1, y1)`.

    With `D` the dense output of the forward base step (from `(t0, z0)`) and
    `θ = (t − t0) / (t1 − t0)`:

        y(t) = (1 − θ)·y0 + θ·y1 + (D(t) − D(t0)) − θ·(D(t1) − D(t0))

    the chord from `y0` to `y1`, plus the base dense output less its own chord. Since
    `D(t0) = z0` and `D(t1) = z0 + Ψ_h(t0, z0)`, this is
    `y0 + θ·(1 − λ)·(z0 − y0) + (D(t) − z0)`: the step itself, taken to `t` with the
    base method's dense output. It has the order of that dense output, and is `y0` at
    `t0` and `y1` at `t1` exactly. `base=None` (a base method with linear dense
    output) leaves the chord alone.
    """

    t0: ArrayLike
    t1: ArrayLike
    y0: PyTree
    y1: PyTree
    base: diffrax.AbstractLocalInterpolation | None

    def __init__(self, *, t0, t1, y0, y1, base=None, base_interpolation_cls=None):
        self.t0 = t0
        self.t1 = t1
        self.y0 = y0
        self.y1 = y1
        if base is not None:
            base = base_interpolation_cls(t0=t0, t1=t1, **base)
        self.base = base

    def evaluate(self, t0, t1=None, left=True):
        del left
        if t1 is not None:
            return jtu.tree_map(
                lambda a, b: a - b, self.evaluate(t1), self.evaluate(t0)
            )
        t = t0
        span = self.t1 - self.t0
        theta = jnp.where(span == 0, 0, (t - self.t0) / jnp.where(span == 0, 1, span))
        if self.base is None:
            return jtu.tree_map(_chord(theta), self.y0, self.y1)
        # `D` at `t`, `t0` and `t1` in one batched evaluation, so that `D(t)` and
        # `D(t1)` are bitwise equal when `t = t1` (and then `y(t1) = y1` exactly).
        d = jax.vmap(self.base.evaluate)(jnp.stack([t, self.t0, self.t1]))
        partial = jtu.tree_map(lambda x: x[0] - x[1], d)
        chord = jtu.tree_map(lambda x: x[2] - x[1], d)
        return jtu.tree_map(
            lambda a, b, p, c: _chord(theta)(a, b) + (p - theta * c),
            self.y0,
            self.y1,
            partial,
            chord,
        )


@functools.cache
def _interpolation_cls(base_interpolation_cls):
    # One object per base method's interpolation, so that it compares equal across
    # calls where diffrax keeps it as static data (`SaveAt(dense=True)`).
    return functools.partial(
        _ReversibleInterpolation, base_interpolation_cls=base_interpolation_cls
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
    has one (not for `diffrax.Euler()`). For base methods of odd order the leading
    error term changes sign as `N·(1 − λ)` grows from small to large (`z` lags `y` by
    the base method's local error, and the coupling feeds that lag back into `y`); the
    order is unchanged, but step-halving studies across that transition can show an
    apparent order above the base's.
    On short solves (`N·(1 − λ)` well below 1), where the scheme is nearly
    time-symmetric (it is symmetric at `λ = 1`), a fifth-order base can show about
    sixth order: `Reversible(diffrax.Tsit5())` (`λ = 0.999`) on diffrax's order test
    (a random linear 10×10 system over [0, 4], 4 to 256 steps) converges like `h^6.0`
    to `h^6.1` (bare `Tsit5`: 5.8 and 6.0 on the two coarsest halvings, then 4.5
    to 4.9), and `Reversible(diffrax.Dopri5())` like `h^5.7` to `h^6.1` up to 32
    steps, then `h^5`; on small nonlinear problems over [0, 1],
    `Reversible(diffrax.Tsit5())` shows 5.1 to 5.6. This is not an order to rely on.

    **Dense output.** A save time inside a step (`SaveAt(ts=...)`) is interpolated
    with the base method's own dense output `D` of the forward base step, which starts
    from `z0` (`Tsit5`'s and `Dopri5`'s polynomials in their stages, diffrax's cubic
    Hermite interpolation for `Heun`, `Midpoint`, `Ralston` and `Bosh3`, linear for
    `Euler`): with `θ = (t − t0)/(t1 − t0)`,

        y(t) = (1 − θ)·y0 + θ·y1 + (D(t) − D(t0)) − θ·(D(t1) − D(t0))

    the chord from `y0` to `y1` plus `D` less its own chord, equal to
    `y0 + θ·(1 − λ)·(z0 − y0) + (D(t) − z0)`. It is `y0` and `y1` exactly at the ends
    of the step, and as accurate as the base method's dense output: on
    `y' = t·[[0, −1], [1, 0]]·y` over [0, 2] with 16 to 128 constant steps,
    `Reversible(diffrax.Tsit5())` is off by 1.6e-7 to 4.8e-12 at save times inside
    steps, as `Tsit5` is (linear interpolation: 5e-3 to 1e-4). `ReversibleAdjoint`
    differentiates it exactly, `SaveAt(ts)` times included; on a step that contains
    a save time, that costs the backward pass the pullback of the interpolation
    through the base step's stages (with a save time in every step, 6 to 20% more
    time than linear interpolation: `benchmarks/dense_output.py`). For SDEs it is the
    dense output diffrax gives the base method (`Heun`, `Midpoint`: cubic Hermite on
    stage increments that include the Brownian increment); between the ends of a step
    the Brownian path is unknown to any interpolation, and save times inside steps
    converge at strong order 0.5, like the base method's own and like linear
    interpolation.

    **Autodiff.** Whatever the base method, the wrapper works with `ForwardMode` (so
    `jax.jvp` and `jax.jacfwd` too), `DirectAdjoint` (both modes),
    `RecursiveCheckpointAdjoint` and `ReversibleAdjoint`. A base method with one
    explicit Butcher tableau (all of diffrax's explicit Runge–Kutta methods) is
    stepped from its tableau, with its stages in a `lax.scan`, which both modes can
    differentiate; it gives what the method's own `step` gives, to round-off. (diffrax
    runs the stages in a loop of kind `scan_kind`, whose default forward mode cannot
    differentiate; its `ForwardMode` and `DirectAdjoint` switch that to `"lax"` and
    `"bounded"`, and switch the wrapper's `scan_kind` field too, which it passes on to
    a base method left at `None`, for a base stepped by its own `step`.) With
    `ReversibleAdjoint` the backward step is fused (see "Cost"), and
    forward-over-reverse (`jax.hessian`, Hessian-vector products) differentiates it.
    For a base stepped by its own `step` (not one of diffrax's explicit Runge–Kutta
    methods), the fused backward step replays each base step in reverse mode only,
    and forward-over-reverse needs the unfused one, which `scan_kind="lax"` or
    `"bounded"` (on the wrapper or on the base) selects, at the cost of two more base
    steps per backward step. `BacksolveAdjoint` works when saving at `t1` only: with
    `SaveAt(ts=...)` it restarts its backward solve at each save time with the
    previous solve's `solver_state`, here a `z` that missed the jump it makes in `y`,
    and its gradients are wrong (as they are for diffrax's `ReversibleHeun`).

    **Cost.** Two base steps per step forward: `2s` vector-field evaluations for an
    `s`-stage base method (first-same-as-last reuse is not possible; the last stage of
    such a method, the seventh of `Tsit5` and `Dopri5`, serves only the error estimate
    and the dense output, so a solve with constant steps and no save time inside a
    step leaves it out: 12 evaluations per step). Backward with `ReversibleAdjoint`,
    fused: the two base steps that reconstruct a step are made once each, with
    `jax.vjp`, and their linearisations pull the cotangents back through the step,
    evaluating no stage again; so a backward step costs two base steps and the
    pullbacks of two, where inverting and then differentiating the step would cost two
    more base steps. On the MLP neural ODE of `benchmarks/adjoints.py` (2000 steps,
    CPU) a gradient cost 3.8 forward passes with `Midpoint` and 4.8 with `Tsit5`, as
    much time as `RecursiveCheckpointAdjoint` storing every step, in O(1) memory.
    `Euler`, and a base stepped by its own `step` whose `scan_kind` is `"lax"` or
    `"bounded"`, are not fused (see "Autodiff").

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
        - `scan_kind`: passed on to a base method that leaves its own at `None`: how
            the stages of a base stepped by its own `step` are looped over. For such
            a base, `"lax"` or `"bounded"` also turns off `ReversibleAdjoint`'s fused
            backward step, for forward-over-reverse (`jax.hessian`); see "Autodiff"
            above.
            Otherwise leave it at `None`: diffrax's `ForwardMode` and `DirectAdjoint`
            set it themselves.
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
    def evaluation_reuse(self):  # pyright: ignore
        # Fused (`ReversibleAdjoint` reuses each base step it makes to reconstruct a
        # step when differentiating it), except for a base stepped by its own `step`
        # with a forward-differentiable `scan_kind`, which asks for a backward pass
        # that forward mode can differentiate; see "Autodiff".
        if self.evaluation_transposable:
            return "same_step"
        base = self._base_for_stepping()
        if isinstance(base, diffrax.AbstractRungeKutta) and base.scan_kind in (
            None,
            "checkpointed",
        ):
            return "same_step"
        return None

    @property
    def evaluation_transposable(self):
        # A base step from its tableau is plain JAX: its linearisation can be
        # transposed, and the fused backward pass differentiated in forward mode.
        return explicit_tableau(self._base_for_stepping()) is not None

    @property
    def interpolation_cls(self):  # pyright: ignore
        return _interpolation_cls(self.solver.interpolation_cls)

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

    def evaluation(self, terms, t, y, args):
        """One step of the base method, the unit that `ReversibleAdjoint` reuses (see
        [`reversible_adjoint.AbstractReversibleSolver`][]): from `(t_start, y)` to
        `t_end`, driven by `control`, where `t = (t_start, t_end, control)`. Returns
        `Ψ`, what `_error_and_dense_info` needs to give the step's error estimate and
        `dense_info` (the stages of a base method stepped from its tableau, stacked),
        and the result."""
        t_start, t_end, control = t
        base = self._base_for_stepping()
        terms = _GivenControl(terms, control)
        return _increment(base, terms, t_start, t_end, y, args)

    def _error_and_dense_info(self, terms, t, y, args, increment, passed):
        """The error estimate and `dense_info` of the base step that `evaluation` made
        at `(t, y)`, from its output. Apart from the evaluation, so that a replayed
        evaluation's linearisation leaves out what only they need."""
        tableau = explicit_tableau(self._base_for_stepping())
        if tableau is None:
            return passed  # The base step's own.
        t_start, t_end, control = t
        terms = _GivenControl(terms, control)
        return explicit_rk.error_and_dense_info(
            tableau, terms, t_start, t_end, y, args, passed, increment
        )

    def step(
        self, terms, t0, t1, y0, args, solver_state: _SolverState, made_jump
    ) -> tuple[PyTree, PyTree, dict[str, PyTree], _SolverState, diffrax.RESULTS]:
        evaluate = lambda t, y: self.evaluation(terms, t, y, args)
        return self.fused_step(
            evaluate, terms, t0, t1, y0, args, solver_state, made_jump
        )

    def fused_step(
        self, evaluate, terms, t0, t1, y0, args, solver_state: _SolverState, made_jump
    ) -> tuple[PyTree, PyTree, dict[str, PyTree], _SolverState, diffrax.RESULTS]:
        """`step`, with its two base steps made by `evaluate` (see
        [`reversible_adjoint.AbstractReversibleSolver.fused_step`][])."""
        # The state carries no cached vector field, so a jump needs no special care.
        del made_jump
        self._check_terms(terms)
        z0 = solver_state
        control = terms.contr(t0, t1)
        forward, passed, result_forward = evaluate((t0, t1, control), z0)
        y_error, forward_dense = self._error_and_dense_info(
            terms, (t0, t1, control), z0, args, forward, passed
        )
        y1 = _couple(y0, z0, forward, self.coupling)
        backward, _, result_backward = evaluate((t1, t0, _negate(control)), y1)
        z1 = _shift(z0, backward, -1)
        result = diffrax.RESULTS.where(
            result_forward == diffrax.RESULTS.successful,
            result_backward,
            result_forward,
        )
        if self.solver.interpolation_cls is diffrax.LocalLinearInterpolation:
            forward_dense = None
        dense_info = dict(y0=y0, y1=y1, base=forward_dense)
        return y1, y_error, dense_info, z1, result

    def fused_backward_step(
        self, evaluate, terms, t0, t1, y1, args, solver_state: _SolverState
    ) -> tuple[PyTree, _SolverState, tuple]:
        """Inverts one step (`backward_step` follows from this; see
        [`reversible_adjoint.AbstractReversibleSolver.fused_backward_step`][]): the
        same two base steps as `fused_step`, at the same points, in the opposite
        order."""
        self._check_terms(terms)
        z1 = solver_state
        control = terms.contr(t0, t1)
        (backward, *_), aux_backward = evaluate((t1, t0, _negate(control)), y1)
        z0 = _shift(z1, backward, +1)
        (forward, *_), aux_forward = evaluate((t0, t1, control), z0)
        y0 = _uncouple(y1, z0, forward, self.coupling)
        return y0, z0, (aux_forward, aux_backward)  # In `fused_step`'s order.

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
