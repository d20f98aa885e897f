"""`AbstractReversibleSolver`: a diffrax solver whose step can be undone exactly.

A reversible solver adds one method to `diffrax.AbstractSolver`, `backward_step`, the
algebraic inverse of `step`. That is all `ReversibleAdjoint` needs: its backward pass
rebuilds every step's inputs from its outputs and differentiates the step there.

Solvers whose inverse evaluates the vector field at a point where the forward pass also
evaluated it can declare so (`evaluation_reuse`) and split `backward_step` around that
evaluation (`fused_backward_step`). The backward pass then linearises the vector field
once per step and uses that one linearisation twice: to reconstruct the step, and to
pull cotangents back through the step that evaluated there (see `_adjoint_term.py`).
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

    **Fusing (optional).** If `backward_step` makes exactly one vector-field evaluation,
    at a point where `step` also evaluated, a subclass may set the class variable
    `evaluation_reuse` and implement `fused_backward_step`:

    - `evaluation_reuse = "same_step"`: `backward_step` evaluates where the `step` it
        inverts evaluated (asynchronous leapfrog).
    - `evaluation_reuse = "previous_step"`: `backward_step` evaluates where the
        previous `step` evaluated (reversible Heun). Such a solver also implements
        `last_evaluation`, which reads that point off a step's output state. The
        backward pass carries each linearisation to the next backward step, unless
        the solver also sets `affine_in_evaluation = True` (below).
    - `evaluation_reuse = None` (default): no reuse; the backward pass inverts the
        step, then differentiates `step` as written.

    In both fused cases `step` must evaluate the vector field exactly once (through
    `terms.vf`) when `made_jump=False`.

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

    The two class flags default to `evaluation_reuse = None` and
    `affine_in_evaluation = False`: no fusing; the backward pass calls
    `backward_step`, then differentiates `step`.
    """

    evaluation_reuse: ClassVar[Literal["same_step", "previous_step"] | None] = None
    affine_in_evaluation: ClassVar[bool] = False

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
        evaluate = lambda t, y: (terms.vf(t, y, args), None)
        y0, solver_state0, _ = self.fused_backward_step(
            evaluate, terms, t0, t1, y1, args, solver_state
        )
        return y0, solver_state0

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
        """As `backward_step`, with its one vector-field evaluation done by `evaluate`.

        Only needed when `evaluation_reuse` is set.

        **Arguments:**

        - `evaluate`: called exactly once as `evaluate(t, y)`; returns a pair
            `(vf, aux)` where `vf` is `terms.vf(t, y, args)`.
        - `terms`, `t0`, `t1`, `y1`, `args`, `solver_state`: as for `backward_step`.
            (A fused inverse is not given `t_previous`: the solvers that fuse are
            one-step methods.)

        **Returns:**

        A 3-tuple `(y0, solver_state0, aux)`.
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
