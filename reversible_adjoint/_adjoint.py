"""`ReversibleAdjoint`: O(1)-memory, exact gradients through `diffrax.diffeqsolve`.

`ReversibleAdjoint.loop` checks that the solve is supported (`_check_supported`), makes
the arrays that vector fields and `SaveAt(fn=...)` close over into PyTree leaves, and
calls `_reversible_loop`, a custom VJP around diffrax's own loop.

Forward: diffrax's own loop with the user's solver. Under differentiation the step size
controller is wrapped (`_step_record.py`) to record the times of accepted steps and
their tangents along the differentiated time inputs (`_time_tangents.py`; for a grid
that is a function of a step counter, only enough to compute them). Residuals: the
final `y` and solver state, that record, and the checkpoints if any. No state is kept
per step; the record holds `max_steps + 1` times (and their tangents), or, for
`ConstantStepSize` and `StepTo`, a few scalars.

Backward: `_backward.py`, which undoes the solve step by step, last to first, with the
solver's exact inverse (`AdjointTerm`, `_adjoint_term.py`), and pulls the cotangents
back through each step as it goes.

With an event, the custom VJP covers diffrax's `while` loop only; what diffrax does
after it (the root find for the event time, the values saved at the end) runs outside,
differentiated by JAX (`_event.py`).
"""

import functools as ft
from collections.abc import Callable
from typing import Any, Literal

import diffrax
import equinox as eqx
import equinox.internal as eqxi
import jax
import jax.lax as lax
import jax.numpy as jnp
import jax.tree_util as jtu

from ._adjoint_term import AdjointTerm, ForwardingTerm
from ._backward import Residuals, backward
from ._diffrax_internals import (
    WrapTerm,
    check_events_supported,
    is_sde,
    is_unsafe_sde,
    save_y,
)
from ._drift import default_drift_rtol, narrowest_dtype
from ._event import (
    finish,
    forward_event,
    run_loop_only,
    without_derivatives,
)
from ._refusals import max_steps_none, non_reversible_solver
from ._solver.base import AbstractReversibleSolver
from ._solver.leapfrog_midpoint import LeapfrogMidpoint
from ._solver.reversible_heun import ReversibleHeun
from ._solver.semi_implicit_euler import SemiImplicitEuler
from ._step_record import (
    DEFAULT_CHECKPOINTS,
    ReportingSolver,
    init_checkpoints,
    init_recording,
    predicts_grid,
)
from ._time_tangents import initial_tangents

_inner_loop = jax.named_call(eqxi.while_loop, name="inner-loop")
_outer_loop = jax.named_call(eqxi.while_loop, name="outer-loop")


def _is_subsaveat(x):
    return isinstance(x, diffrax.SubSaveAt)


def _is_none(x):
    return x is None


# diffrax's own reversible solvers, and the `AbstractReversibleSolver` that inverts
# them. Their `solver_state` layouts coincide, so the forward pass runs the user's
# instance unchanged and the backward pass inverts it with ours.
_DIFFRAX_REVERSIBLE = {
    diffrax.ReversibleHeun: ReversibleHeun,
    diffrax.LeapfrogMidpoint: LeapfrogMidpoint,
    diffrax.SemiImplicitEuler: SemiImplicitEuler,
}


def as_reversible(solver, terms) -> AbstractReversibleSolver:
    if isinstance(solver, AbstractReversibleSolver):
        return solver
    reversible = _DIFFRAX_REVERSIBLE.get(type(solver))
    if reversible is None:
        raise ValueError(non_reversible_solver(solver, terms))
    return reversible()


class _Static(eqx.Module):
    adjoint: Any
    solver: Any
    adjoint_term: AdjointTerm
    stepsize_controller: Any
    subs_treedef: Any = eqx.field(static=True)
    saveat_flags: dict
    max_steps: int = eqx.field(static=True)
    progress_meter: Any
    init_state: Any
    dt0: Any
    event: diffrax.Event | None = None


#
# The forward pass.
#


def _build_init_state(inputs, static):
    return eqx.tree_at(
        lambda s: (s.y, s.solver_state, s.tprev, s.tnext, s.controller_state),
        static.init_state,
        (
            inputs["y0"],
            inputs["solver_state"],
            inputs["tprev"],
            inputs["tnext"],
            inputs["controller_state"],
        ),
        is_leaf=_is_none,
    )


def _controller(inputs, static):
    if inputs["step_to"] is None:
        return static.stepsize_controller
    return inputs["step_to"]


def _run(inputs, static, stepsize_controller, init_state, solver=None):
    subs = jtu.tree_unflatten(static.subs_treedef, inputs["subs"])
    kwargs = dict(
        args=inputs["args"],
        terms=inputs["terms"],
        solver=static.solver if solver is None else solver,
        stepsize_controller=stepsize_controller,
        event=static.event,
        saveat=diffrax.SaveAt(subs=subs, **static.saveat_flags),
        t0=inputs["t0"],
        t1=inputs["t1"],
        dt0=static.dt0,
        max_steps=static.max_steps,
        init_state=init_state,
        inner_while_loop=ft.partial(_inner_loop, kind="lax"),
        progress_meter=static.progress_meter,
    )
    outer_while_loop = ft.partial(_outer_loop, kind="lax")
    if static.event is None:
        return static.adjoint._loop(outer_while_loop=outer_while_loop, **kwargs)
    # With an event: the `while` loop only. What diffrax does after it (the root
    # find, the values saved at the end) runs outside this custom VJP (`_event.py`).
    final_state = run_loop_only(static.adjoint._loop, outer_while_loop, **kwargs)
    return final_state, {}


@eqx.filter_custom_vjp
def _reversible_loop(inputs, *, static):
    init_state = _build_init_state(inputs, static)
    return _run(inputs, static, _controller(inputs, static), init_state)


def _is_virtual_brownian_tree(x):
    return isinstance(x, diffrax.VirtualBrownianTree)


def _predicts_grid(controller, controller_state, static):
    """Whether the backward pass computes the step times (`PredictedRecord`) instead
    of reading a record of every one (`StepRecord`): when each is a function of a step
    counter (`predicts_grid`), and there is no event (with one, `t1` may be
    infinite, and `ConstantStepSize` then adds `dt0` to the previous time instead of
    counting steps)."""
    return static.event is None and predicts_grid(controller, controller_state)


@_reversible_loop.def_fwd
def _reversible_loop_fwd(perturbed, inputs, *, static):
    tangents, t1_tangent = initial_tangents(inputs, perturbed)
    moves_grid = t1_tangent.shape[0] > 0 or (
        inputs["step_to"] is not None and perturbed["step_to"].ts
    )
    trees = jtu.tree_leaves(inputs["terms"], is_leaf=_is_virtual_brownian_tree)
    if moves_grid and any(_is_virtual_brownian_tree(x) for x in trees):
        raise ValueError(
            "Cannot differentiate an SDE solve with respect to `t0`, `t1`, `dt0` or "
            "the step times (`StepTo(ts=...)`) when its Brownian motion is a "
            "`diffrax.VirtualBrownianTree`: the tree is not differentiable with "
            "respect to time (diffrax's own adjoints raise too). Gradients with "
            "respect to `y0`, `args`, the terms and `SaveAt(ts=...)` are available; "
            "for time gradients, use a Brownian path that is differentiable in time."
        )
    every, slots = static.adjoint.checkpoint_layout()
    if every is None and slots == 0:
        checkpoints, solver = None, static.solver
    else:
        checkpoints = init_checkpoints(
            every, slots, static.max_steps, inputs["y0"], inputs["solver_state"]
        )
        solver = ReportingSolver(static.solver)
    controller = _controller(inputs, static)
    controller, controller_state = init_recording(
        controller,
        inputs["t1"],
        inputs["tprev"],
        inputs["controller_state"],
        static.max_steps,
        tangents,
        t1_tangent,
        checkpoints,
        predict=_predicts_grid(controller, inputs["controller_state"], static),
    )
    init_state = _build_init_state(inputs, static)
    init_state = eqx.tree_at(lambda s: s.controller_state, init_state, controller_state)
    final_state, aux_stats = _run(inputs, static, controller, init_state, solver)
    recording = final_state.controller_state
    final_state = eqx.tree_at(
        lambda s: s.controller_state, final_state, recording.inner, is_leaf=_is_none
    )
    residuals = Residuals(
        y=final_state.y,
        solver_state=final_state.solver_state,
        record=recording.record,
        final_tangents=recording.time_tangents,
        t1_tangent=t1_tangent,
        checkpoints=recording.checkpoints,
        event_tnext=final_state.event_tnext,
    )
    return (final_state, aux_stats), residuals


@_reversible_loop.def_bwd
def _reversible_loop_bwd(residuals, grad_out, perturbed, inputs, *, static):
    controller = _controller(inputs, static)
    return backward(
        residuals, grad_out, perturbed, inputs, static=static, controller=controller
    )


#
# The public class.
#


def _is_leaf_term(x):
    """A term that is not a container of other terms: it has a vector field of its
    own."""
    return isinstance(x, diffrax.AbstractTerm) and not isinstance(
        x, (diffrax.MultiTerm, WrapTerm)
    )


class _RecordInputs(ForwardingTerm):
    """A term that reports the `(t, y, args)` its vector field is called with."""

    term: diffrax.AbstractTerm
    report: Callable = eqx.field(static=True)

    def vf(self, t, y, args):
        self.report((t, y, args))
        return self.term.vf(t, y, args)


class _HoistedTerm(ForwardingTerm):
    """A user's own term whose `vf` closes over arrays being differentiated: `vf` is
    replaced by its closure-converted form, which holds them as PyTree leaves."""

    term: diffrax.AbstractTerm
    converted_vf: Callable

    def vf(self, t, y, args):
        return self.converted_vf(t, y, args)

    def is_vf_expensive(self, t0, t1, y, args):
        return self.term.is_vf_expensive(t0, t1, y, args)


def _has_tracers(tree):
    return any(isinstance(x, jax.core.Tracer) for x in jtu.tree_leaves(tree))


def _hoist_closures(terms, solver, t0, t1, y0, args, solver_state):
    """Makes the arrays that vector fields close over (e.g. `lambda t, y, args: -a * y`
    with `a` being differentiated) leaves of `terms`, so that the custom VJP
    differentiates them, as `RecursiveCheckpointAdjoint` would.

    Each vector field is traced with the inputs the solver's `step` gives it, which
    need not be `y` (`SemiImplicitEuler` gives each of its two terms the other half).
    `ODETerm`s and `ControlTerm`s get their `vector_field` converted; a user's own
    term, whose `vf` may close over arrays anywhere, is wrapped with a converted `vf`
    if it closes over any array being traced.
    """
    leaves, treedef = jtu.tree_flatten(terms, is_leaf=_is_leaf_term)
    inputs = {}

    def as_struct(x):
        if eqx.is_array(x):
            return jax.ShapeDtypeStruct(jnp.shape(x), jnp.result_type(x))
        return x

    def recording(i, leaf):
        if not _is_leaf_term(leaf):
            return leaf
        report = lambda tya: inputs.setdefault(i, jtu.tree_map(as_struct, tya))
        return _RecordInputs(leaf, report)

    recording_terms = jtu.tree_unflatten(
        treedef, [recording(i, x) for i, x in enumerate(leaves)]
    )
    eqx.filter_eval_shape(
        lambda: solver.step(recording_terms, t0, t1, y0, args, solver_state, False)
    )

    def hoist(i, term):
        if i not in inputs:
            return term
        if isinstance(term, (diffrax.ODETerm, diffrax.ControlTerm)):
            vector_field = eqx.filter_closure_convert(term.vector_field, *inputs[i])
            return eqx.tree_at(lambda tm: tm.vector_field, term, vector_field)
        converted = eqx.filter_closure_convert(term.vf, *inputs[i])
        # (A function that closes over nothing is not converted: no `consts`.)
        closed_over = getattr(converted, "consts", ())
        return _HoistedTerm(term, converted) if _has_tracers(closed_over) else term

    return jtu.tree_unflatten(treedef, [hoist(i, x) for i, x in enumerate(leaves)])


def _hoist_save_closures(saveat, t0, y0, args):
    """The `SubSaveAt`s of `saveat`, flattened, each with the arrays its `fn` closes
    over (e.g. the time direction, or a model) hoisted into its PyTree, so that they
    are differentiated like everything else; and their tree structure."""
    subs, treedef = jtu.tree_flatten(saveat.subs, is_leaf=_is_subsaveat)
    subs = [
        sub
        if sub.fn is save_y
        else eqx.tree_at(
            lambda s: s.fn, sub, eqx.filter_closure_convert(sub.fn, t0, y0, args)
        )
        for sub in subs
    ]
    return subs, treedef


_NONDIFF_CONTROLLER = (
    "`ReversibleAdjoint` differentiates with respect to `t0`, `t1`, `dt0`, "
    "`SaveAt(ts=...)`, `StepTo(ts=...)`, `y0`, `args` and the terms, but not with "
    "respect to the parameters of other step size controllers (such as "
    "`PIDController(dtmax=...)`). Use `adjoint=diffrax.RecursiveCheckpointAdjoint()` "
    "for that."
)


_JUMPS = (
    "`adjoint=ReversibleAdjoint()` does not support {}: a jump re-initialises the "
    "solver state (reversible Heun re-evaluates its cached vector field), which cannot "
    "then be reconstructed in reverse. Use `step_ts=...` if the vector field is "
    "continuous there, or split the solve at each jump into separate `diffeqsolve` "
    "calls, or use `adjoint=diffrax.RecursiveCheckpointAdjoint()`."
)


def _check_supported(
    terms, solver, reversible, stepsize_controller, event, saveat, max_steps, made_jump
):
    """Raises a clear error, at trace time, for what `ReversibleAdjoint` does not
    support, naming the alternative."""
    if event is not None:
        # Events on SDEs are supported where the SDE is: what is refused for SDEs is
        # refused with or without an event, by the checks below.
        check_events_supported()
    if saveat.dense:
        raise NotImplementedError(
            "`adjoint=ReversibleAdjoint()` does not support `SaveAt(dense=True)`: "
            "dense output stores every step, which is O(number of steps) memory "
            "and defeats the purpose of this adjoint. Save the times you need with "
            "`SaveAt(ts=...)` (their gradients are exact, times included), or use "
            "`adjoint=diffrax.RecursiveCheckpointAdjoint()`."
        )
    if max_steps is None:
        raise ValueError(max_steps_none(stepsize_controller))
    if is_unsafe_sde(terms):
        raise ValueError(
            "`adjoint=ReversibleAdjoint()` does not support `UnsafeBrownianPath`: "
            "the backward pass re-queries the Brownian motion over each step, "
            "which needs a path that returns the same increment twice. Use "
            "`diffrax.VirtualBrownianTree` instead."
        )
    if is_sde(terms) and isinstance(solver, diffrax.AbstractItoSolver):
        raise NotImplementedError(
            f"`{type(solver).__name__}` converges to the Itô solution of an SDE, "
            "but `adjoint=ReversibleAdjoint()` supports Stratonovich SDEs only "
            "(the algebraically reversible schemes are Stratonovich). Write the "
            "SDE in Stratonovich form and use `ReversibleHeun`, or use "
            "`adjoint=diffrax.RecursiveCheckpointAdjoint()`."
        )
    if is_sde(terms) and isinstance(reversible, LeapfrogMidpoint):
        raise NotImplementedError(
            "`adjoint=ReversibleAdjoint()` does not support "
            f"`{type(solver).__name__}` on an SDE: its step takes the Brownian "
            "increment over two steps, from a time held in the solver state, and "
            "the backward pass differentiates the solver state, whereas the "
            "Brownian motion cannot be differentiated with respect to time. Use "
            "`reversible_adjoint.ReversibleHeun()`, which converges to the "
            "Stratonovich solution, or "
            "`adjoint=diffrax.RecursiveCheckpointAdjoint()`."
        )
    if made_jump is not False:
        raise NotImplementedError(_JUMPS.format("`diffeqsolve(..., made_jump=...)`"))
    if isinstance(stepsize_controller, diffrax.ClipStepSizeController) and (
        stepsize_controller.jump_ts is not None
    ):
        raise NotImplementedError(_JUMPS.format("`jump_ts`"))


def _loop_inputs(adjoint, reversible, solve, args, event, init_state, progress_meter):
    """The inputs of the custom VJP `_reversible_loop` (what it differentiates), and
    its static part, from the solve as diffrax gives it to `ReversibleAdjoint.loop`
    (`solve`: `terms`, `solver`, `t0`, `t1`, `dt0`, `saveat`, `stepsize_controller`,
    `max_steps`)."""
    terms, solver, saveat = solve["terms"], solve["solver"], solve["saveat"]
    t0, t1, dt0 = solve["t0"], solve["t1"], solve["dt0"]
    stepsize_controller = solve["stepsize_controller"]
    if event is not None:
        forward = forward_event(event, init_state.tprev, init_state.y, args, solve)
        loop_init_state = without_derivatives(init_state)
    else:
        forward, loop_init_state = None, init_state
    if isinstance(stepsize_controller, diffrax.StepTo):
        step_to, stepsize_controller = stepsize_controller, None
    else:
        step_to = None
        stepsize_controller = eqxi.nondifferentiable(
            stepsize_controller, msg=_NONDIFF_CONTROLLER
        )
    terms = _hoist_closures(
        terms,
        solver,
        t0,
        init_state.tnext,
        init_state.y,
        args,
        init_state.solver_state,
    )
    subs, subs_treedef = _hoist_save_closures(saveat, t0, init_state.y, args)
    inputs = dict(
        y0=init_state.y,
        solver_state=init_state.solver_state,
        tprev=init_state.tprev,
        tnext=init_state.tnext,
        controller_state=init_state.controller_state,
        t0=t0,
        t1=t1,
        args=args,
        terms=terms,
        subs=subs,
        # `StepTo(ts=...)`: the step times are `ts` themselves, so they are
        # differentiated directly. Other controllers are not differentiated.
        step_to=step_to,
    )
    rest_of_state = eqx.tree_at(
        lambda s: (s.y, s.solver_state, s.tprev, s.tnext, s.controller_state),
        loop_init_state,
        (None, None, None, None, None),
        is_leaf=_is_none,
    )
    static = _Static(
        adjoint=adjoint,
        solver=solver,
        adjoint_term=AdjointTerm(reversible),
        stepsize_controller=stepsize_controller,
        subs_treedef=subs_treedef,
        saveat_flags=dict(
            dense=False,
            solver_state=saveat.solver_state,
            controller_state=saveat.controller_state,
            made_jump=saveat.made_jump,
        ),
        max_steps=solve["max_steps"],
        progress_meter=progress_meter,
        init_state=rest_of_state,
        dt0=None if dt0 is None else lax.stop_gradient(dt0),
        event=forward,
    )
    return inputs, static


class ReversibleAdjoint(diffrax.AbstractAdjoint):
    """Backpropagate through
    [`diffrax.diffeqsolve`](https://docs.kidger.site/diffrax/api/diffeqsolve/) in O(1)
    memory by reconstructing the forward trajectory exactly, step by step, in reverse.

    Use it with an algebraically reversible solver
    ([`reversible_adjoint.ReversibleHeun`][], `diffrax.ReversibleHeun`, or any
    [`reversible_adjoint.AbstractReversibleSolver`][]). The forward pass is diffrax's
    own loop and keeps only the final state and the times of the accepted steps. The
    backward pass undoes one step at a time with the solver's exact inverse and
    differentiates it there, so the gradients are those of the discrete solve, the same
    as
    [`diffrax.RecursiveCheckpointAdjoint`](https://docs.kidger.site/diffrax/api/adjoints/)
    computes (to round-off), while memory does not grow with the number of steps.

    Apart from the step times, with an adaptive step size controller: one scalar per
    step (and one per time input differentiated). With `ConstantStepSize` or `StepTo`
    (and no event), whose `k`-th step time is a function of `k` (for
    `ConstantStepSize`, from diffrax 0.7.1), the backward pass computes each time
    instead, and memory is flat in the number of steps.

    Gradients are available with respect to `y0`, `args`, parameters inside `terms`,
    `t0`, `t1`, `dt0`, `SaveAt(ts=...)` and arrays used by `SaveAt(fn=...)`. Every
    step size controller without jumps works: `ConstantStepSize`, `StepTo`,
    `PIDController` (rejected steps included), `PIDController(step_ts=...)`.

    **Events.** `diffrax.Event`s work on ODEs and Stratonovich SDEs (with diffrax 0.7.2
    and later), with real or boolean conditions, with or without a `root_finder`. With
    one, the gradient flows through the event time (and the state there, and the
    parameters of `cond_fn`) by the implicit function theorem, as with
    `diffrax.RecursiveCheckpointAdjoint`; without,
    the solve stops at the end of the step in which the condition triggers, and which
    step that is has no derivative.

    **Drift check.** Reconstruction is exact in exact arithmetic only. In floating
    point its error grows with the number of steps, with how contractive the backward
    flow is, and for some solvers much faster (`Reversible(coupling=λ)` amplifies
    round-off by about `λ^-N` over `N` steps). The backward pass restarts its
    reconstruction from a few stored states (`checkpoints`, below) and from the start
    of the solve, exact states all, so it measures its own drift at each, at no extra
    cost. The gradient amplifies that drift, by thousands on long periodic solves:
    the check multiplies the worst relative drift by the amplification measured at the
    start of the solve (the maths page derives it), and compares this estimate of the
    gradient's relative error with `drift_rtol`. Above it, or if the forward solve
    itself ended on a non-finite state, `on_drift` says what happens: a
    [`reversible_adjoint.ReconstructionDriftWarning`][] (default), a run-time error, or
    nothing. Under `jax.vmap` the batch warns once, with its worst drift.

    **Checkpoints.** By default (`checkpoints=16`) the forward pass keeps `y` and the
    solver state after 16 of its accepted steps, evenly spaced: every step at first,
    then, each time all 16 are taken, every other one is dropped and the spacing
    doubles. Memory is 16 states whatever the number of steps, and round-off is
    amplified over at most an eighth of the steps, not all of them (on the
    Lotka–Volterra solve of diffrax's Hessian example, this takes the gradient's error
    from 1e-4 to 1e-10). `checkpoints=K` keeps `K`; `checkpoints=0` none (the drift
    then grows over the whole solve). `checkpoint_every=K` instead keeps a state after
    every `K`-th step (`ceil(max_steps / K)` states), so that round-off is amplified
    over at most `K` steps. Gradients are the same (to round-off) either way.

    Not supported, with a clear error at trace time: non-reversible solvers,
    `max_steps=None`, `SaveAt(dense=True)` (which stores every step),
    `UnsafeBrownianPath`, and controllers that make jumps (`jump_ts`).

    ??? cite "References"

        ```bibtex
        @article{kidger2021efficient,
            author={Kidger, Patrick and Foster, James and Li, Xuechen and Lyons, Terry},
            title={{E}fficient and {A}ccurate {G}radients for {N}eural {SDE}s},
            year={2021},
            journal={Advances in Neural Information Processing Systems}
        }

        @article{mccallum2024efficient,
            author={McCallum, Sam and Foster, James},
            title={Efficient, Accurate and Stable Gradients for Neural ODEs},
            year={2024},
            journal={arXiv:2410.11648}
        }
        ```
    """

    on_drift: Literal["warn", "raise", "ignore"] = eqx.field(
        default="warn", static=True
    )
    drift_rtol: float | None = eqx.field(default=None, static=True)
    checkpoint_every: int | None = eqx.field(default=None, static=True)
    checkpoints: int | None = eqx.field(default=None, static=True)

    def __check_init__(self):
        every = self.checkpoint_every
        if every is not None and not (isinstance(every, int) and every >= 1):
            raise ValueError(
                "`ReversibleAdjoint(checkpoint_every=...)` must be a positive integer "
                f"(or `None` for `checkpoints` spread over the solve), but got "
                f"{every!r}."
            )
        slots = self.checkpoints
        if slots is not None and not (isinstance(slots, int) and slots >= 0):
            raise ValueError(
                "`ReversibleAdjoint(checkpoints=...)` must be a non-negative integer "
                f"(0 for none, `None` for the default of {DEFAULT_CHECKPOINTS}), but "
                f"got {slots!r}."
            )
        if every is not None and slots is not None:
            raise ValueError(
                "`ReversibleAdjoint` takes `checkpoint_every=...` (a state every that "
                "many steps) or `checkpoints=...` (that many states spread over the "
                "solve), not both."
            )
        if self.on_drift not in ("warn", "raise", "ignore"):
            raise ValueError(
                "`ReversibleAdjoint(on_drift=...)` must be 'warn', 'raise' or "
                f"'ignore', but got {self.on_drift!r}."
            )
        if self.drift_rtol is not None and not self.drift_rtol > 0:
            raise ValueError(
                "`ReversibleAdjoint(drift_rtol=...)` must be positive (or `None` for "
                f"the default of the state's dtype), but got {self.drift_rtol!r}."
            )

    def checkpoint_layout(self) -> tuple[int | None, int]:
        """`(every, slots)`: the fixed spacing of the checkpoints (or `None`), and
        otherwise how many are spread over the solve (0 for none)."""
        if self.checkpoint_every is not None:
            return self.checkpoint_every, 0
        if self.checkpoints is None:
            return None, DEFAULT_CHECKPOINTS
        return None, self.checkpoints

    def rtol_for(self, y0) -> float:
        """The drift tolerance for a state like `y0`: `drift_rtol`, or by default
        the square root of the machine epsilon of its floating dtype."""
        if self.drift_rtol is not None:
            return self.drift_rtol
        return default_drift_rtol(narrowest_dtype(y0))

    def loop(
        self,
        *,
        args,
        terms,
        solver,
        stepsize_controller,
        event,
        saveat,
        t0,
        t1,
        dt0,
        max_steps,
        throw,
        init_state,
        passed_solver_state,
        passed_controller_state,
        progress_meter,
    ):
        del throw, passed_solver_state, passed_controller_state
        reversible = as_reversible(solver, terms)
        _check_supported(
            terms,
            solver,
            reversible,
            stepsize_controller,
            event,
            saveat,
            max_steps,
            init_state.made_jump,
        )
        # The solve as diffrax gives it to this loop (and to an event's `cond_fn`).
        solve = dict(
            terms=terms,
            solver=solver,
            t0=t0,
            t1=t1,
            dt0=dt0,
            saveat=saveat,
            stepsize_controller=stepsize_controller,
            max_steps=max_steps,
        )
        inputs, static = _loop_inputs(
            self, reversible, solve, args, event, init_state, progress_meter
        )
        final_state, aux_stats = _reversible_loop(inputs, static=static)
        if event is not None:
            # What diffrax does after its loop, differentiated by JAX (`_event.py`).
            final_state, aux_stats = finish(
                self._loop,
                final_state,
                args=args,
                event=event,
                init_state=init_state,
                inner_while_loop=ft.partial(_inner_loop, kind="lax"),
                progress_meter=progress_meter,
                **solve,
            )
        # Integer outputs (`result`, step counts) carry no derivative. Saying so keeps
        # JAX from linearising what diffrax does with them (e.g. `throw=True`).
        final_state = jtu.tree_map(
            lambda x: (
                x
                if eqx.is_inexact_array(x) or not eqx.is_array(x)
                else lax.stop_gradient(x)
            ),
            final_state,
        )
        return final_state, aux_stats


ReversibleAdjoint.__init__.__doc__ = """**Arguments:**

- `on_drift`: what to do when the estimated relative error of the gradient due to
    reconstruction drift exceeds `drift_rtol`, or the forward solve diverged:
    `"warn"` (default) issues a [`reversible_adjoint.ReconstructionDriftWarning`][]
    naming the solver and what would help it (the same text on every call of one
    configuration, so Python shows it once; the numbers are its attributes);
    `"raise"` raises an error at run time (an `equinox` runtime error, as
    `diffeqsolve(..., throw=True)` does); `"ignore"` skips the check.
- `drift_rtol`: the largest estimated relative error of the gradient accepted: the
    worst relative reconstruction drift times how much the gradient amplifies it.
    `None` (default) uses an eighth of the square root of the machine epsilon of the
    state's floating dtype (1.9e-9 in float64, 4.3e-5 in float32), which healthy
    solves stay far below; see [`reversible_adjoint.round_trip_error`][] to measure
    a solve's drift.
- `checkpoints`: how many states the forward pass keeps, evenly spaced over its
    accepted steps however many there are (thinned as the solve grows), for the
    backward pass to restart its reconstruction from. `None` (default) keeps 16; `0`
    none (O(1) memory in states: the reconstruction runs through the whole solve).
- `checkpoint_every`: instead of `checkpoints`, keep the state after every
    `checkpoint_every`-th accepted step, bounding drift at the cost of
    `ceil(max_steps / checkpoint_every)` stored states.
"""
