"""One step of the backward pass: reconstruct the step's inputs, and pull cotangents
back through it.

`AdjointTerm` serves any `AbstractReversibleSolver`: it calls `backward_step`, then
differentiates `step` at the reconstructed inputs. That costs two vector-field
evaluations per step (one to invert, one inside the `jax.vjp` of the step) plus one
transpose.

Solvers that declare `evaluation_reuse` get the fused form: the inverse's single
evaluation is made through `jax.vjp`, which returns the value *and* the linearisation.
The value reconstructs the step; the linearisation is handed to the step when it is
differentiated (`fused_step`, whose `evaluate` returns the stored value and pulls
cotangents back through the stored linearisation: `_replaying`). For asynchronous
leapfrog the linearisation is used in the same backward step. For reversible Heun the
inverse of step k evaluates where step k-1 did, so the linearisation serves step k-1:
it is either carried to the next (earlier) backward step, or used at once, as below.
Either way a backward step costs one linearisation and one transpose.

`Reversible`'s evaluations are steps of its base method (as far as their solutions
need), two per step, which its inverse makes at the same points as the step: each is
linearised once, and replayed in the same backward step: with a custom JVP
(`_replay`), as a vector field is, when its linearisation can be transposed (a
Runge–Kutta step from its tableau; `evaluation_transposable`), else with a custom VJP
(`_replay_vjp`), which forward mode cannot differentiate. A backward step costs two
base steps and the pullbacks of two, against four base steps and the pullbacks of two
unfused.

Carrying a linearisation from one iteration to the next costs a copy of its residuals
per step. Reversible Heun (`affine_in_evaluation`) avoids it when the backward pass
needs no dense output and the control is cheap to query again (no Brownian motion): the
steps' outputs are affine in their last evaluation, so once backward step k has the
cotangents of step k-1's outputs it computes the cotangent of that evaluation, and
applies the transpose of the linearisation it has just made, in the same iteration
("settling" step k-1's evaluation). Step k-1 is then differentiated with that
evaluation held constant.

A linearisation is carried across iterations of the backward `lax.while_loop` as the
array leaves of its `jax.vjp` pullback; each iteration rebuilds the callable from those
leaves and the structure it has just traced, which is identical because it is the same
function linearised at arrays of the same shapes.
"""

from collections.abc import Callable
from typing import Any, NamedTuple

import diffrax
import equinox as eqx
import jax
import jax.numpy as jnp
import jax.tree_util as jtu
from jaxtyping import PyTree

from ._cotangents import add as add_cotangents, filter_vjp, materialise
from ._diffrax_internals import is_sde
from ._solver.base import AbstractReversibleSolver, overrides_evaluation


class Differentiate(NamedTuple):
    """Which leaves of `args` and of `terms` a backward pass differentiates: `True`
    for every inexact array, or a PyTree of bools, a prefix of `args` (`terms`), as
    `equinox.partition` takes it. The others are held constant, and their
    cotangents are `None`."""

    args: Any = True
    terms: Any = True

    def point(self, t, y, args, terms):
        """`(t, y, args, terms)`, with what is held constant replaced by `None`."""
        return t, y, eqx.filter(args, self.args), eqx.filter(terms, self.terms)


def _linearise(solver, terms, t, y, args, differentiate):
    """Makes one evaluation, `solver.evaluation(terms, t, y, args)` (by default
    `terms.vf(t, y, args)`), and returns its value and its pullback with respect to
    `differentiate.point(t, y, args, terms)`: `t`, `y`, and the leaves of `args`
    and of `terms` that are differentiated. The pullback is an `equinox.Module` whose
    array leaves are the linearisation's residuals."""
    args, args_constant = eqx.partition(args, differentiate.args)
    terms, terms_constant = eqx.partition(terms, differentiate.terms)

    def evaluation(_t, _y, _args, _terms):
        _args = eqx.combine(_args, args_constant)
        _terms = eqx.combine(_terms, terms_constant)
        return solver.evaluation(_terms, _t, _y, _args)

    return eqx.filter_vjp(evaluation, t, y, args, terms)


class _Linearisation(NamedTuple):
    """One evaluation made by a fused inverse: its value and its pullback."""

    value: PyTree
    pullback: Any


def _residuals(pullback, constants):
    """The arrays a pullback closes over (its linearisation's residuals), with `None`
    for those that are among `constants`: the parameters, which are the same in every
    linearisation and need not be carried from one backward step to the next."""
    constant_ids = {id(x) for x in jtu.tree_leaves(constants)}
    leaves = jtu.tree_leaves(eqx.filter(pullback, eqx.is_array))
    return [None if id(x) in constant_ids else x for x in leaves]


def _with_residuals(pullback, residuals):
    """`pullback`, with its residuals replaced by `residuals` (from `_residuals`) of a
    linearisation of the same function at another point."""
    dynamic, static = eqx.partition(pullback, eqx.is_array)
    leaves, treedef = jtu.tree_flatten(dynamic)
    leaves = [
        new if old is None else old for old, new in zip(residuals, leaves, strict=True)
    ]
    return eqx.combine(jtu.tree_unflatten(treedef, leaves), static)


def _replay(point, value, pullback):
    """Returns `value`, an evaluation made at `point = (t, y, args, terms)`,
    differentiated through `pullback`, its stored linearisation there. The parts of
    `value` that are not inexact arrays (a step's `RESULTS`) are returned as they
    are.

    Written as a custom JVP: the tangent of the value is the transpose of the pullback
    applied to the point's tangent, which reverse mode transposes back into the
    pullback itself (the compiled backward pass is the same as with a custom VJP).
    Unlike a custom VJP, it can in turn be differentiated in forward mode, as
    forward-over-reverse (`jax.hessian`, Hessian-vector products) needs. It needs a
    pullback that `jax.linear_transpose` can transpose: see
    `AbstractReversibleSolver.evaluation_transposable`."""
    dynamic = eqx.filter(point, eqx.is_inexact_array)
    diff_value, nondiff_value = eqx.partition(value, eqx.is_inexact_array)
    residuals, pullback_static = eqx.partition(pullback, eqx.is_array)

    @jax.custom_jvp
    def replay(dynamic, diff_value, residuals):
        del dynamic, residuals
        return diff_value

    @replay.defjvp
    def replay_jvp(primals, tangents):
        _, diff_value, residuals = primals
        dynamic_dot, _, _ = tangents
        pullback = eqx.combine(residuals, pullback_static)
        transpose = jax.linear_transpose(pullback, diff_value)
        (value_dot,) = transpose(dynamic_dot)
        return diff_value, value_dot

    return eqx.combine(replay(dynamic, diff_value, residuals), nondiff_value)


def _replay_vjp(point, value, pullback):
    """As `_replay`, for an evaluation whose pullback cannot be transposed (a base
    step whose stages run in diffrax's checkpointed loop, a custom VJP): a custom VJP,
    which applies `pullback` as it is, in reverse mode only."""
    dynamic = eqx.filter(point, eqx.is_inexact_array)
    diff_value, nondiff_value = eqx.partition(value, eqx.is_inexact_array)

    @eqx.filter_custom_vjp
    def replay(dynamic, diff_value, pullback):
        del dynamic, pullback
        return diff_value

    @replay.def_fwd
    def replay_fwd(perturbed, dynamic, diff_value, pullback):
        del perturbed, dynamic, pullback
        return diff_value, None

    @replay.def_bwd
    def replay_bwd(residuals, ct_value, perturbed, dynamic, diff_value, pullback):
        del residuals, perturbed, dynamic
        ct_value = jtu.tree_map(
            lambda c, v: None if v is None else (jnp.zeros_like(v) if c is None else c),
            ct_value,
            diff_value,
            is_leaf=lambda x: x is None,
        )
        return pullback(ct_value)

    return eqx.combine(replay(dynamic, diff_value, pullback), nondiff_value)


def _replaying(replays, args, terms, transposable, differentiate):
    """The `evaluate` that `fused_step` is given to differentiate a step: its `i`-th
    call returns the `i`-th of `replays`, pairs `(value, pullback)` in the order in
    which the step evaluates, differentiated through `pullback` (or held constant if it
    is `None`) with respect to what `differentiate` flags: by `_replay` if the
    pullbacks can be transposed (`transposable`), else by `_replay_vjp`."""
    replays = iter(replays)
    replay = _replay if transposable else _replay_vjp

    def evaluate(t, y):
        value, pullback = next(replays)
        if pullback is None:
            return value
        return replay(differentiate.point(t, y, args, terms), value, pullback)

    return evaluate


class ForwardingTerm(diffrax.AbstractTerm):
    """A term that wraps `term` and forwards its control and its product to it; the
    subclasses change how its vector field is evaluated."""

    term: eqx.AbstractVar[diffrax.AbstractTerm]

    def vf(self, t, y, args):
        return self.term.vf(t, y, args)

    def contr(self, t0, t1, **kwargs):
        return self.term.contr(t0, t1, **kwargs)

    def prod(self, vf, control):
        return self.term.prod(vf, control)


class _KnownControl(ForwardingTerm):
    """`term`, with its control over the step `(t0, t1)` already known.

    The control of an SDE is a Brownian increment, and querying a
    `VirtualBrownianTree` costs as much as a vector-field evaluation, or more. A
    backward step needs it twice, to invert the step and to differentiate it, so it is
    queried once and handed to both. A request for any other interval (recognised by
    the identity of the time arguments) is passed on to `term`.
    """

    term: diffrax.AbstractTerm
    t0: Any
    t1: Any
    control: PyTree

    def contr(self, t0, t1, **kwargs):
        if not kwargs and t0 is self.t0 and t1 is self.t1:
            return self.control
        if not kwargs and t0 is self.t1 and t1 is self.t0:
            return jtu.tree_map(lambda c: -c, self.control)
        return self.term.contr(t0, t1, **kwargs)


class EndCotangents(NamedTuple):
    """Cotangents that [`reversible_adjoint.AdjointTerm.init`][] contributes, of the
    end of the solve and of the inputs (`None` where there are none): of the final
    `solver_state`, of the end `t1` of the last step, of `args` and of the parameters
    inside `terms`."""

    solver_state: PyTree
    t1: PyTree
    args: PyTree
    terms: PyTree


class StepCotangents(NamedTuple):
    """Cotangents of the inputs of one step, returned by the `pullback` of a
    [`reversible_adjoint.BackwardStep`][] (`None` for non-differentiable leaves, and
    for `t0` and `t1` unless `with_time`)."""

    y0: PyTree
    solver_state0: PyTree
    t0: PyTree
    t1: PyTree
    args: PyTree
    terms: PyTree


class BackwardStep(NamedTuple):
    """One step undone by [`reversible_adjoint.AdjointTerm`][].

    - `y0`, `solver_state0`: the step's inputs, reconstructed.
    - `dense_info`: the step's dense output (`None` unless `with_dense`).
    - `pullback`: maps `(ct_y1, ct_solver_state1, ct_dense_info=None, ct_y0=None)` to
        [`reversible_adjoint.StepCotangents`][]. Its arguments are zero
        or an array at every inexact leaf; `ct_dense_info` is only passed when
        `with_dense`; `ct_y0` is a cotangent of `y0` from elsewhere (a value saved
        there), which is included in the returned one.
    - `carry`: to pass to the next call, which undoes the step before.
    """

    y0: PyTree
    solver_state0: PyTree
    dense_info: PyTree
    pullback: Callable
    carry: PyTree


_NO_END_COTANGENTS = EndCotangents(None, None, None, None)


def _settle(solver, terms, t0, t1, y1, args, state1, ct_y1, ct_state1, lin, active):
    """Pulls the cotangents `(ct_y1, ct_state1)` of the outputs of a step from `t0` to
    `t1` back through that step's last evaluation, whose value and pullback are `lin`;
    `active=False` masks it out. The step's outputs are affine in that evaluation, so
    its cotangent does not depend on the step's inputs, and the outputs
    `(y1, state1)` stand in for them.

    Returns the `EndCotangents` (of `state1`, `t1`, `args`, `terms`) it contributes.
    """
    value, pullback = lin

    def outputs(_value):
        _y1, _, _, _state1, _ = solver.fused_step(
            lambda t, y: _value, terms, t0, t1, y1, args, state1, False
        )
        return _y1, _state1

    _, value_pullback = eqx.filter_vjp(outputs, value)
    (ct_value,) = value_pullback((ct_y1, ct_state1))
    ct_value = jtu.tree_map(lambda c: jnp.where(active, c, jnp.zeros_like(c)), ct_value)
    ct_t, ct_y, ct_args, ct_terms = pullback(ct_value)
    _, point_pullback = filter_vjp(
        lambda _t1, _state: solver.last_evaluation(terms, _t1, _state),
        (t1, state1),
        (True, True),
    )
    ct_t1, ct_state = point_pullback((ct_t, ct_y))
    return EndCotangents(ct_state, ct_t1, ct_args, ct_terms)


#
# How a backward step gets the step's vector-field evaluation: four modes.
#


class _Reconstruction(NamedTuple):
    """What a mode returns for one step: the step's inputs; the evaluations (pairs of
    a value and a pullback, in the order in which the step makes them) to replay when
    the step is differentiated, or `None` to evaluate again; the carry for the step
    before; and the linearisation this step's pullback settles (for the step before),
    if any."""

    y0: PyTree
    solver_state0: PyTree
    replay: tuple | None
    carry: PyTree
    settles: tuple | None


def _fused_inverse(solver, known, terms, t0, t1, y1, args, solver_state, diff):
    """`solver.fused_backward_step`, whose evaluations are linearisations with
    respect to what `diff` (a `Differentiate`) flags."""

    def evaluate(t, y):
        value, pullback = _linearise(solver, terms, t, y, args, diff)
        return value, _Linearisation(value, pullback)

    return solver.fused_backward_step(evaluate, known, t0, t1, y1, args, solver_state)


class _Unfused(eqx.Module):
    """No reuse: invert with `backward_step`, then differentiate `step`, which
    evaluates again."""

    def init(self, solver, terms, t0, t1, y1, args, state1, ct_y1, ct_state1, active):
        return None, _NO_END_COTANGENTS

    def reconstruct(self, solver, known, terms, t0, t1, y1, args, state1, carry, tp):
        y0, state0 = solver.backward_step(
            known, t0, t1, y1, args, state1, False, t_previous=tp
        )
        return _Reconstruction(y0, state0, None, None, None)


class _SameStep(eqx.Module):
    """`evaluation_reuse="same_step"`: the inverse evaluates where the step did, and
    its linearisations are replayed by the same step's pullback."""

    differentiate: Differentiate

    def init(self, solver, terms, t0, t1, y1, args, state1, ct_y1, ct_state1, active):
        return None, _NO_END_COTANGENTS

    def reconstruct(self, solver, known, terms, t0, t1, y1, args, state1, carry, tp):
        y0, state0, lin = _fused_inverse(
            solver, known, terms, t0, t1, y1, args, state1, self.differentiate
        )
        # One evaluation's linearisation, or a tuple of them in the step's order.
        replay = (lin,) if isinstance(lin, _Linearisation) else tuple(lin)
        return _Reconstruction(y0, state0, replay, None, None)


class _Carried(eqx.Module):
    """`evaluation_reuse="previous_step"`: the inverse of step k evaluates where step
    k-1 did; its linearisation is carried to the next backward step, which undoes
    step k-1 and replays it. (`init` makes the one for the last step.)"""

    differentiate: Differentiate

    def init(self, solver, terms, t0, t1, y1, args, state1, ct_y1, ct_state1, active):
        t, y = solver.last_evaluation(terms, t1, state1)
        value, pullback = _linearise(solver, terms, t, y, args, self.differentiate)
        return (value, _residuals(pullback, (args, terms))), _NO_END_COTANGENTS

    def reconstruct(self, solver, known, terms, t0, t1, y1, args, state1, carry, tp):
        y0, state0, (value0, pullback0) = _fused_inverse(
            solver, known, terms, t0, t1, y1, args, state1, self.differentiate
        )
        value, residuals = carry
        replay = ((value, _with_residuals(pullback0, residuals)),)
        carry0 = value0, _residuals(pullback0, (args, terms))
        return _Reconstruction(y0, state0, replay, carry0, None)


class _Settled(eqx.Module):
    """`evaluation_reuse="previous_step"` with a step affine in its last evaluation:
    backward step k settles step k-1's last evaluation with the linearisation it has
    just made (`_settle`), and step k-1 is then differentiated with that evaluation
    held constant; only its value is carried. (`init` settles the last step's.)"""

    differentiate: Differentiate

    def init(self, solver, terms, t0, t1, y1, args, state1, ct_y1, ct_state1, active):
        t, y = solver.last_evaluation(terms, t1, state1)
        value, pullback = _linearise(solver, terms, t, y, args, self.differentiate)
        cts = _settle(
            solver,
            terms,
            t0,
            t1,
            y1,
            args,
            state1,
            ct_y1,
            ct_state1,
            (value, pullback),
            active,
        )
        return value, cts

    def reconstruct(self, solver, known, terms, t0, t1, y1, args, state1, carry, tp):
        y0, state0, lin0 = _fused_inverse(
            solver, known, terms, t0, t1, y1, args, state1, self.differentiate
        )
        value0, _ = lin0
        return _Reconstruction(y0, state0, ((carry, None),), value0, lin0)


def _with_known_control(terms, t0, t1, with_time, differentiate):
    """Queries the control of a single term over `(t0, t1)` once, for the inverse and
    the differentiated step to share (`_KnownControl`). Returns the control, its
    pullback, and how to attach it to a term; for several terms (e.g.
    `SemiImplicitEuler`'s pair) each is queried itself, and these are `None`."""
    if not isinstance(terms, diffrax.AbstractTerm):
        return None, None, lambda _terms, _t0, _t1, _c: _terms
    control, control_pullback = filter_vjp(
        lambda _t0, _t1, _terms: _terms.contr(_t0, _t1),
        (t0, t1, terms),
        (with_time, with_time, differentiate.terms),
    )
    return control, control_pullback, _KnownControl


class AdjointTerm(eqx.Module):
    """One step of the backward pass of [`reversible_adjoint.ReversibleAdjoint`][].

    Given a step's outputs, it reconstructs the step's inputs with the solver's exact
    inverse and returns the step's pullback: the map from cotangents of the step's
    outputs (`y1`, solver state, dense output) to cotangents of its inputs (`y0`,
    solver state, `t0`, `t1`, `args`, and parameters inside `terms`). The adjoint uses
    the dense output's cotangent to emit the derivatives of the `SaveAt(ts=...)` values
    inside the step, their times included.

    Unlike diffrax's own `AdjointTerm`, which is the vector field of the continuous
    adjoint equations that `diffrax.BacksolveAdjoint` integrates with a solver of its
    own, this one differentiates the discrete step itself: the gradients it yields are
    those of the solve that was run, the same as
    [`diffrax.RecursiveCheckpointAdjoint`](https://docs.kidger.site/diffrax/api/adjoints/)
    computes.

    Any [`reversible_adjoint.AbstractReversibleSolver`][] works: by default the inverse
    is `solver.backward_step` and the pullback is that of `solver.step`, at the cost of
    two vector-field evaluations and one transpose per step. Solvers that declare
    `evaluation_reuse` (reversible Heun, asynchronous leapfrog) get a fused step: one
    vector-field linearisation serves the inverse and the pullback, for one evaluation
    and one transpose per step. [`reversible_adjoint.Reversible`][] reuses its two base
    steps the same way: two base steps and their two pullbacks per step.

    **Arguments:**

    - `solver`: the reversible solver whose steps are undone.
    - `differentiate`: which leaves of `args` and of the terms to differentiate: a
        pair `(args, terms)` of `True` (every inexact array, the default) or PyTrees
        of bools, prefixes of `args` and of the terms (as `equinox.partition` takes
        them). The others are held constant, and their cotangents are `None`.
        `ReversibleAdjoint` differentiates what the caller of the solve perturbs, so
        that an array in `args` that is not differentiated costs the backward pass
        nothing.
    """

    solver: AbstractReversibleSolver
    differentiate: Differentiate = eqx.field(
        default=Differentiate(), converter=lambda pair: Differentiate(*pair)
    )

    def _mode(self, terms, with_dense: bool):
        """How each backward step gets the step's evaluation (module docstring)."""
        reuse = self.solver.evaluation_reuse
        if reuse is None:
            return _Unfused()
        if reuse == "same_step":
            return _SameStep(self.differentiate)
        if reuse != "previous_step":
            raise ValueError(f"Unknown `evaluation_reuse={reuse!r}`.")
        if overrides_evaluation(self.solver):
            raise ValueError(
                f"`{type(self.solver).__name__}` overrides `evaluation`, which "
                "`evaluation_reuse='previous_step'` does not support: use "
                "`evaluation_reuse='same_step'` or `None`."
            )
        # Settle instead of carrying the linearisation when the step is affine in its
        # last evaluation, and the backward step needs no dense output and can query
        # the control again cheaply (no Brownian motion).
        if self.solver.affine_in_evaluation and not with_dense and not is_sde(terms):
            return _Settled(self.differentiate)
        return _Carried(self.differentiate)

    def init(
        self,
        terms,
        t0,
        t1,
        y1,
        args,
        solver_state,
        ct_y1,
        ct_solver_state,
        *,
        with_dense: bool,
        active,
    ):
        """Prepares the first backward step, which undoes the last step of the solve.

        **Arguments:**

        - `terms`, `args`: as passed to the solver.
        - `t0`, `t1`: the start and end times of the last step.
        - `y1`, `solver_state`: the end of the solve.
        - `ct_y1`, `ct_solver_state`: their cotangents (zeros, not `None`, at inexact
            leaves).
        - `with_dense`: as for `__call__`.
        - `active`: whether there is a last step at all (`False` for a solve with no
            steps).

        **Returns:**

        A pair `(carry, cts)`: `carry` (a PyTree of arrays) is threaded through
        `__call__`, and `cts` ([`reversible_adjoint.EndCotangents`][]) are cotangents of
        the end of the solve and of the inputs, to be added to the others (`None`
        where there are none: always, except for solvers whose last evaluation is
        settled here).
        """
        mode = self._mode(terms, with_dense)
        return mode.init(
            self.solver,
            terms,
            t0,
            t1,
            y1,
            args,
            solver_state,
            ct_y1,
            ct_solver_state,
            active,
        )

    def __call__(
        self,
        terms,
        t0,
        t1,
        y1,
        args,
        solver_state,
        carry,
        *,
        with_dense: bool,
        with_time: bool,
        t_previous,
        is_first,
    ) -> BackwardStep:
        """Undoes one step.

        **Arguments:**

        - `terms`, `args`: as passed to the solver.
        - `t0`, `t1`: the step's start and end times.
        - `y1`, `solver_state`: the step's outputs.
        - `carry`: from `init` or from the previous call.
        - `with_dense`: whether the pullback takes a cotangent for the dense output.
        - `with_time`: whether to differentiate with respect to `t0` and `t1` (if not,
            their cotangents are `None`).
        - `t_previous`: the start time of the previous step (`t0` for the first step).
            `backward_step` is given it, and a settling step uses it to settle the
            previous step's evaluation.
        - `is_first`: whether this is the first step of the solve (which has no
            previous step to settle).

        **Returns:**

        A [`reversible_adjoint.BackwardStep`][]: the reconstructed inputs, the dense
        output, the step's pullback, and the carry for the step before.
        """
        solver = self.solver
        differentiate = self.differentiate
        mode = self._mode(terms, with_dense)
        control, control_pullback, with_control = _with_known_control(
            terms, t0, t1, with_time, differentiate
        )
        known = with_control(terms, t0, t1, control)
        rec = mode.reconstruct(
            solver, known, terms, t0, t1, y1, args, solver_state, carry, t_previous
        )
        y0, solver_state0 = rec.y0, rec.solver_state0

        # The control is an input of the differentiated step: its cotangent goes back
        # through `control_pullback`, once.
        def _step(_y0, _solver_state0, _t0, _t1, _args, _terms, _control):
            _known = with_control(_terms, _t0, _t1, _control)
            inputs = (_known, _t0, _t1, _y0, _args, _solver_state0, False)
            if rec.replay is None:
                step = solver.step(*inputs)
            else:
                evaluate = _replaying(
                    rec.replay,
                    _args,
                    _terms,
                    solver.evaluation_transposable,
                    differentiate,
                )
                step = solver.fused_step(evaluate, *inputs)
            _y1, _, _dense_info, _solver_state1, _ = step
            if with_dense:
                return _y1, _solver_state1, _dense_info
            return _y1, _solver_state1

        outputs, step_pullback = filter_vjp(
            _step,
            (y0, solver_state0, t0, t1, args, terms, control),
            (
                True,
                True,
                with_time,
                with_time,
                differentiate.args,
                differentiate.terms,
                True,
            ),
        )
        dense_info = outputs[2] if with_dense else None

        def pullback(ct_y1, ct_solver_state1, ct_dense_info=None, ct_y0=None):
            if with_dense:
                cts = step_pullback((ct_y1, ct_solver_state1, ct_dense_info))
            else:
                cts = step_pullback((ct_y1, ct_solver_state1))
            *cts, ct_control = cts
            ct_y0_step, ct_state0, ct_t0, ct_t1, ct_args, ct_terms = cts
            ct_y0 = add_cotangents(ct_y0_step, ct_y0)
            if control_pullback is not None:
                c_t0, c_t1, c_terms = control_pullback(ct_control)
                ct_t0 = add_cotangents(ct_t0, c_t0)
                ct_t1 = add_cotangents(ct_t1, c_t1)
                ct_terms = add_cotangents(ct_terms, c_terms)
            if rec.settles is not None:
                # Settle the previous step's last evaluation, made at `(t0, ...)`.
                s = _settle(
                    solver,
                    terms,
                    t_previous,
                    t0,
                    y0,
                    args,
                    solver_state0,
                    materialise(ct_y0, y0),
                    materialise(ct_state0, solver_state0),
                    rec.settles,
                    jnp.logical_not(is_first),
                )
                ct_state0 = add_cotangents(ct_state0, s.solver_state)
                ct_t0 = add_cotangents(ct_t0, s.t1 if with_time else None)
                ct_args = add_cotangents(ct_args, s.args)
                ct_terms = add_cotangents(ct_terms, s.terms)
            return StepCotangents(ct_y0, ct_state0, ct_t0, ct_t1, ct_args, ct_terms)

        return BackwardStep(y0, solver_state0, dense_info, pullback, rec.carry)
