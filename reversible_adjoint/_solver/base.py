"""`AbstractReversibleSolver`: a diffrax solver whose step can be undone exactly.

A reversible solver adds one method to `diffrax.AbstractSolver`, `backward_step`, the
algebraic inverse of `step`. That is all `ReversibleAdjoint` needs: its backward pass
rebuilds every step's inputs from its outputs and differentiates the step there.

Solvers whose inverse evaluates the vector field at a point where the forward pass also
evaluated it can declare so (`evaluation_reuse`) and split `backward_step` around that
evaluation (`fused_backward_step`). The backward pass then linearises the vector field
once per step and uses that one linearisation twice: to reconstruct the step, and to
pull cotangents back through the step that evaluated there (see `_adjoint_term.py`).
What is reused can be larger than one vector-field evaluation (`evaluation`): for
`Reversible`, each of the two steps of its base method.
"""

import sys
import warnings
from collections.abc import Callable
from typing import Any, ClassVar, Literal

import diffrax
from jaxtyping import PyTree


class AbstractReversibleSolver(diffrax.AbstractSolver):
    """Abstract base class for algebraically reversible solvers.

    Subclasses implement everything a `diffrax.AbstractSolver` does (`init`, `step`,
    `func`, `order`, ...) plus `backward_step`, the exact inverse of `step` (or its
    fused form, below): given the
    outputs of a step from `t0` to `t1`, it returns the step's inputs, to round-off.
    Such a solver can be used with any adjoint; with
    [`reversible_adjoint.ReversibleAdjoint`][] its gradients cost O(1) memory in the
    number of steps.

    **Fusing (optional).** If `backward_step` evaluates exactly where `step` did, the
    backward pass can make each such evaluation once and use it twice. An evaluation
    is `evaluation(terms, t, y, args)`: by default one vector-field evaluation,
    `terms.vf(t, y, args)`. A subclass whose inverse reuses its evaluations sets the
    class variable `evaluation_reuse` and implements `fused_backward_step`:

    - `evaluation_reuse = "same_step"`: `backward_step` evaluates where the `step` it
        inverts evaluated (asynchronous leapfrog, `Reversible`).
    - `evaluation_reuse = "previous_step"`: `backward_step` evaluates where the
        previous `step` evaluated (reversible Heun). Such a solver also implements
        `last_evaluation`, which reads that point off a step's output state. The
        backward pass carries each linearisation to the next backward step, unless
        the solver also sets `affine_in_evaluation = True` (below).
    - `evaluation_reuse = None` (default): no reuse; the backward pass inverts the
        step, then differentiates `step` as written.

    With the default `evaluation`, `step` must evaluate the vector field exactly once
    (through `terms.vf`) when `made_jump=False`, in both fused cases.

    **Larger evaluations (optional).** A solver whose inverse reuses more than one
    vector-field evaluation overrides `evaluation`; its `t` is then whatever the
    evaluation depends on besides `y`. `Reversible` does: its evaluation is a step of
    its base method, as far as its solution needs, and `t` the base step's
    `(t_start, t_end, control)`. Such a solver implements `fused_step`, its `step`
    with every evaluation made by a given function, and its `step` is `fused_step`
    with `evaluation`. It may make several
    evaluations per step (with `"same_step"`): `fused_backward_step` then makes each
    of them once, in any order, and returns their `aux` as a tuple in the order in
    which `fused_step` makes them. The backward pass linearises each evaluation once
    (`jax.vjp`), and replays it in `fused_step`: the stored value, differentiated
    through the stored linearisation. If the linearisation is plain JAX, which
    `jax.linear_transpose` can transpose (no custom VJP inside), the solver says so
    with `evaluation_transposable = True`, and the replay is a custom JVP, which
    forward-over-reverse (`jax.hessian`) can differentiate; otherwise it is a custom
    VJP, reverse-mode only, and a solver that supports forward-over-reverse through
    its evaluation some other way (as `Reversible` does, for a base method stepped by
    its own `step`, when given `scan_kind="lax"` or `"bounded"`) leaves
    `evaluation_reuse = None` there.

    A `"previous_step"` solver may also set `affine_in_evaluation = True` if its
    `step`'s outputs (`y1`, solver state) are affine in the step's evaluation, through
    `terms.prod` and with coefficients that do not depend on `y0` or the input solver
    state (they may depend on the times, the control and `args`), as
    `y1 = y0 + ½(v0 + v1)·Δ` is in `v1`. The backward pass then pulls cotangents back
    through each evaluation as soon as it has linearised there, instead of carrying the
    linearisation to the next backward step (when there is no `SaveAt(ts=...)` and no
    Brownian motion). This is not checked: a step that is not affine in its evaluation
    must leave it `False`.

    **Multistep solvers.** `backward_step` is always given `t_previous`, the start
    time of the step before the one being inverted (for the first step, `t0` itself,
    as `init` would have it). One-step solvers ignore it; a solver whose state holds
    the start time of the previous step (as diffrax's `LeapfrogMidpoint` does) needs
    it, because on a non-uniform grid that time cannot be recovered from the state.

    The class flags default to `evaluation_reuse = None` and
    `affine_in_evaluation = False`: no fusing; the backward pass calls
    `backward_step`, then differentiates `step`. `evaluation_transposable` defaults
    to whether `evaluation` is the default one (a vector-field evaluation).
    """

    evaluation_reuse: ClassVar[Literal["same_step", "previous_step"] | None] = None
    affine_in_evaluation: ClassVar[bool] = False

    @property
    def evaluation_transposable(self) -> bool:
        """Whether the linearisation of `evaluation` can be transposed by
        `jax.linear_transpose`, so that the fused backward pass can be differentiated
        in forward mode (see "Larger evaluations" above). `True` for the default
        `evaluation`, one vector-field evaluation."""
        return not overrides_evaluation(self)

    def backward_step(
        self,
        terms: PyTree[diffrax.AbstractTerm],
        t0: Any,
        t1: Any,
        y1: PyTree,
        args: PyTree,
        solver_state: PyTree,
        made_jump: Any,
        t_previous: Any,
    ) -> tuple[PyTree, PyTree]:
        """Inverts one step of the solver.

        **Arguments:**

        - `terms`: the terms of the differential equation, as passed to `step`.
        - `t0`: the start of the step.
        - `t1`: the end of the step.
        - `y1`: the value `step` returned at `t1`.
        - `args`: extra arguments to the vector field.
        - `solver_state`: the solver state `step` returned at `t1`.
        - `made_jump`: whether `step` was called with `made_jump=True`. Reversible
            solvers discard information across a jump, so this is always `False` when
            called by `ReversibleAdjoint`.
        - `t_previous`: the start time of the step before this one (`t0` itself for
            the first step of the solve). Only multistep solvers need it; see above.

        **Returns:**

        A 2-tuple `(y0, solver_state0)` such that
        `step(terms, t0, t1, y0, args, solver_state0, made_jump)` returns `y1` and
        `solver_state` to round-off. `ReversibleAdjoint` passes `t_previous` as a
        keyword argument.

        Subclasses implement this, or `fused_backward_step`, from which this follows
        with a plain evaluation of the vector field.
        """
        del made_jump, t_previous
        if (
            type(self).fused_backward_step
            is AbstractReversibleSolver.fused_backward_step
        ):
            raise NotImplementedError(
                f"`{type(self).__name__}` must implement `backward_step`, the exact "
                "inverse of `step` (or `fused_backward_step`)."
            )
        evaluate = lambda t, y: (self.evaluation(terms, t, y, args), None)
        y0, solver_state0, _ = self.fused_backward_step(
            evaluate, terms, t0, t1, y1, args, solver_state
        )
        return y0, solver_state0

    def evaluation(
        self, terms: PyTree[diffrax.AbstractTerm], t: Any, y: PyTree, args: PyTree
    ) -> PyTree:
        """One evaluation, what `evaluation_reuse` reuses: by default the vector field
        `terms.vf(t, y, args)`. A solver that overrides it also implements
        `fused_step`; see "Larger evaluations" above.
        """
        return terms.vf(t, y, args)

    def fused_step(
        self,
        evaluate: Callable[[Any, PyTree], PyTree],
        terms: PyTree[diffrax.AbstractTerm],
        t0: Any,
        t1: Any,
        y0: PyTree,
        args: PyTree,
        solver_state: PyTree,
        made_jump: Any,
    ) -> tuple[PyTree, PyTree, dict[str, PyTree], PyTree, diffrax.RESULTS]:
        """As `step`, with every evaluation made by `evaluate`.

        **Arguments:**

        - `evaluate`: called as `evaluate(t, y)` for each evaluation, in place of
            `self.evaluation(terms, t, y, args)`. `ReversibleAdjoint` passes one that
            returns a stored value and differentiates it through a stored
            linearisation.
        - `terms`, `t0`, `t1`, `y0`, `args`, `solver_state`, `made_jump`: as for
            `step`.

        **Returns:**

        What `step` returns.

        The default serves solvers whose evaluation is the vector field: it calls `step`
        with `terms.vf` replaced by `evaluate`. A solver that overrides `evaluation`
        implements this instead.
        """
        if overrides_evaluation(self):
            raise NotImplementedError(
                f"`{type(self).__name__}` overrides `evaluation` but does not "
                "implement `fused_step`."
            )
        terms = _EvaluatedTerm(terms, evaluate)
        return self.step(terms, t0, t1, y0, args, solver_state, made_jump)

    def fused_backward_step(
        self,
        evaluate: Callable[[Any, PyTree], tuple[PyTree, Any]],
        terms: PyTree[diffrax.AbstractTerm],
        t0: Any,
        t1: Any,
        y1: PyTree,
        args: PyTree,
        solver_state: PyTree,
    ) -> tuple[PyTree, PyTree, Any]:
        """As `backward_step`, with its evaluations made by `evaluate`.

        Only needed when `evaluation_reuse` is set.

        **Arguments:**

        - `evaluate`: called as `evaluate(t, y)` once per evaluation (exactly once
            with the default `evaluation`); returns a pair `(value, aux)` where
            `value` is `self.evaluation(terms, t, y, args)`.
        - `terms`, `t0`, `t1`, `y1`, `args`, `solver_state`: as for `backward_step`.
            (A fused inverse is not given `t_previous`: the solvers that fuse are
            one-step methods.)

        **Returns:**

        A 3-tuple `(y0, solver_state0, aux)`: the `aux` of the one evaluation, or, for
        several, a tuple of theirs in the order in which `fused_step` makes them.
        """
        raise NotImplementedError(
            f"{type(self).__name__} sets `evaluation_reuse` but does not implement "
            "`fused_backward_step`."
        )

    def last_evaluation(
        self, terms: PyTree[diffrax.AbstractTerm], t1: Any, solver_state: PyTree
    ) -> tuple[Any, PyTree]:
        """The point `(t, y)` at which the step that returned `solver_state` evaluated
        the vector field. Only needed when `evaluation_reuse = "previous_step"`.
        """
        raise NotImplementedError(
            f"{type(self).__name__} sets `evaluation_reuse='previous_step'` but does "
            "not implement `last_evaluation`."
        )


def overrides_evaluation(solver: AbstractReversibleSolver) -> bool:
    """Whether `solver`'s evaluation is larger than one vector-field evaluation."""
    return type(solver).evaluation is not AbstractReversibleSolver.evaluation


class _EvaluatedTerm(diffrax.AbstractTerm):
    """`term`, with its vector field evaluated by `evaluate(t, y)` (the default
    `fused_step`)."""

    term: diffrax.AbstractTerm
    evaluate: Callable

    def vf(self, t, y, args):
        del args  # `evaluate` closes over the step's own.
        return self.evaluate(t, y)

    def contr(self, t0, t1, **kwargs):
        return self.term.contr(t0, t1, **kwargs)

    def prod(self, vf, control):
        return self.term.prod(vf, control)


def warn_at_caller(message):
    """`warnings.warn(message)`, attributed to the first frame outside this package and
    the machinery that builds modules (equinox; jaxtyping and beartype when type
    checking is on), so that it points at the user's `Reversible(...)` line. (A fixed
    `stacklevel` cannot: the number of wrapper frames depends on type checking.)"""
    internal = ("reversible_adjoint", "equinox", "jaxtyping", "beartype")
    frame = sys._getframe(1)
    while frame.f_back is not None and frame.f_globals.get("__name__", "").startswith(
        internal
    ):
        frame = frame.f_back
    warnings.warn_explicit(
        message,
        UserWarning,
        frame.f_code.co_filename,
        frame.f_lineno,
        module=frame.f_globals.get("__name__"),
        registry=frame.f_globals.setdefault("__warningregistry__", {}),
        module_globals=frame.f_globals,
    )
