"""Events (`diffrax.Event`) with `ReversibleAdjoint`.

diffrax's loop is a `while` loop over steps, then a few operations on the state it
ends in: with an event and a `root_finder`, the root find that locates the event time
`t*` inside the last step and the value there (the last step's dense output at `t*`),
then in any case the values saved at the end (`SaveAt(t1=True)`, the `ts` of a solve
with `t0 == t1`; with a root finder, the values saved after `t*` are deleted first).

`ReversibleAdjoint` splits the solve there. Its custom VJP runs the `while` loop only,
whose backward pass it knows how to undo (`_backward.py`), and stops at the end of the
step in which an event triggers. The operations after the loop run outside the custom
VJP, as diffrax's own code, on the state the loop ended in; JAX differentiates them,
the root find through the implicit function theorem (`optimistix`'s
`ImplicitAdjoint`), exactly as `RecursiveCheckpointAdjoint` differentiates them. Their
cotangents reach the custom VJP as cotangents of the loop's final state, among them
those of the last step's start and end (`event_tprev`, `event_tnext`) and dense output
(`event_dense_info`), which the backward pass pulls back through the last step.

Inside the loop the event only decides when to stop (a sign change, or a boolean): a
discrete decision, with no derivative. The loop therefore evaluates each `cond_fn`
with nothing in it differentiated (`forward_event`), and with the keyword arguments
that diffrax gives it in the user's solve (not the wrapped step size controller the
loop runs).

The same holds for SDEs (`MultiTerm(ODETerm(...), ControlTerm(..., brownian_path))`
with the solvers and Brownian paths `ReversibleAdjoint` supports for SDEs). The root
find reads the last step's times and dense output; the dense output is an output of
the step like its end state, a function of the state the step starts from, of the
parameters and of its Brownian increment `W(t_N) − W(t_{N−1})`, which the backward pass
queries again when it pulls the cotangents back through the step. The interpolant
(linear for reversible Heun; for `Reversible(base)`, the base method's, on stage
increments that already include the Brownian increment) queries no Brownian path
inside the step, so the root find reads no noise that the step did not use.

This relies on diffrax 0.7's `loop` calling its `outer_while_loop` once, on the
initial state, and doing nothing after it that depends on that call's inputs:
`run_loop_only` captures the state that loop ends in, and `finish` hands a given state
to diffrax's code after the loop.
"""

import dataclasses
from collections.abc import Callable

import diffrax
import equinox as eqx
import jax.lax as lax
import jax.tree_util as jtu


class _Condition(eqx.Module):
    """One `cond_fn` of an `Event` as the loop inside the custom VJP calls it:
    closure-converted (so that whatever it closes over is a leaf), with nothing in it
    differentiated, and called with the keyword arguments of the user's solve."""

    fn: Callable

    def __call__(self, t, y, args, **kwargs):
        del kwargs
        return self.fn(t, y, args)


def _stop_gradient(tree):
    return jtu.tree_map(
        lambda x: lax.stop_gradient(x) if eqx.is_inexact_array(x) else x, tree
    )


def forward_event(event: diffrax.Event, t, y, args, solve_kwargs) -> diffrax.Event:
    """The event that the loop inside the custom VJP runs: each `cond_fn` as a
    `_Condition`, called at `(t, y, args)` like these examples and with
    `solve_kwargs` (the keyword arguments diffrax gives a `cond_fn` in the user's
    solve); no root finder (the root find runs after the loop, in `finish`)."""

    def convert(cond_fn):
        def condition(_t, _y, _args):
            return cond_fn(_t, _y, _args, **solve_kwargs)

        converted = eqx.filter_closure_convert(condition, t, y, args)
        return _Condition(_stop_gradient(converted))

    cond_fn = jtu.tree_map(convert, event.cond_fn, is_leaf=callable)
    # `dataclasses.replace` keeps the event's other fields (`direction`, from diffrax
    # 0.7.1), whichever diffrax is installed.
    return dataclasses.replace(event, cond_fn=cond_fn, root_finder=None)


def without_derivatives(init_state):
    """`init_state` with the event's initial values (`cond_fn` at `t0`, the times
    and dense output of the last step, which are `t0` and zeros before any step)
    not differentiated: the loop inside the custom VJP compares the first with later
    values only by sign, and the custom VJP gives the cotangents of the others, when
    no step is taken, to the initial time."""
    return eqx.tree_at(
        lambda s: (s.event_tprev, s.event_tnext, s.event_dense_info, s.event_values),
        init_state,
        replace_fn=_stop_gradient,
        is_leaf=lambda x: x is None,
    )


def run_loop_only(loop: Callable, outer_while_loop: Callable, **kwargs):
    """Runs diffrax's `loop(**kwargs)` and returns the state its `while` loop ended
    in, before the operations that follow it (which are then unused, and compiled
    away)."""
    ends = []

    def capture(cond_fun, body_fun, init_val, **loop_kwargs):
        final = outer_while_loop(cond_fun, body_fun, init_val, **loop_kwargs)
        ends.append(final)
        return final

    loop(outer_while_loop=capture, **kwargs)
    (final_state,) = ends
    return final_state


def finish(loop: Callable, loop_state, **kwargs):
    """diffrax's `loop(**kwargs)` with its `while` loop replaced by `loop_state`, the
    state that loop ended in: the root find and the values saved at the end, as
    diffrax computes them, differentiated by JAX. Returns what `loop` returns."""

    def ended(cond_fun, body_fun, init_val, **loop_kwargs):
        del cond_fun, body_fun, init_val, loop_kwargs
        return loop_state

    return loop(outer_while_loop=ended, **kwargs)
