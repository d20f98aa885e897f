"""The messages of two refusals of `ReversibleAdjoint` (`_adjoint.py`), each built
for the solver and the problem at hand, so that they advise only what works there:

- a solver that is not algebraically reversible (`non_reversible_solver`): an implicit
  one cannot be replaced by a reversible one on a stiff problem, nor wrapped; an
  explicit Runge–Kutta method can be wrapped by `Reversible`, on an SDE only if it
  converges to the Stratonovich solution; an Itô solver needs the SDE rewritten.
- `max_steps=None` (`max_steps_none`): with `StepTo` the number of steps is known at
  trace time, and the message names it; with `ConstantStepSize`, how to compute it
  (inside `diffeqsolve`, which is jitted, `t0`, `t1` and `dt0` are traced, so the
  number itself cannot be); with an adaptive controller, how to choose a bound.
"""

import diffrax

from ._diffrax_internals import is_sde

_ODE_SOLVERS = (
    "`reversible_adjoint.ReversibleHeun()`, "
    "`reversible_adjoint.AsynchronousLeapfrog()`, "
    "`reversible_adjoint.Reversible(<any explicit Runge-Kutta method>)`, "
    "`reversible_adjoint.LeapfrogMidpoint()`, `reversible_adjoint.SemiImplicitEuler()` "
    "(separable Hamiltonians), diffrax's own `diffrax.ReversibleHeun()`, "
    "`diffrax.LeapfrogMidpoint()` and `diffrax.SemiImplicitEuler()`, or any subclass "
    "of `reversible_adjoint.AbstractReversibleSolver`"
)
# Those that solve Stratonovich SDEs (the others refuse SDEs).
_SDE_SOLVERS = (
    "`reversible_adjoint.ReversibleHeun()` (or `diffrax.ReversibleHeun()`), "
    "`reversible_adjoint.Reversible(diffrax.Heun())` or "
    "`reversible_adjoint.Reversible(diffrax.Midpoint())`"
)
_KEEP = "keep `{name}` with `adjoint=diffrax.RecursiveCheckpointAdjoint()`"


def _spelled(solver) -> str:
    """How to write the solver's class in a message: `diffrax.Tsit5()` for diffrax's
    own, else its class name."""
    name = type(solver).__name__
    if getattr(diffrax, name, None) is type(solver):
        return f"diffrax.{name}()"
    return f"{name}()"


def _wrappable(solver) -> bool:
    """Whether `Reversible(solver)` accepts `solver` (`_solver/reversible.py`)."""
    return isinstance(solver, (diffrax.AbstractERK, diffrax.Euler)) and not isinstance(
        solver, diffrax.AbstractImplicitSolver
    )


def non_reversible_solver(solver, terms) -> str:
    """The message for `adjoint=ReversibleAdjoint()` with a solver that is not
    algebraically reversible: what works for that solver on that problem (`terms`:
    an ODE or an SDE)."""
    name = type(solver).__name__
    keep = _KEEP.format(name=name)
    start = (
        "`adjoint=ReversibleAdjoint()` needs an algebraically reversible solver, but "
        f"got `{name}`"
    )
    sde = is_sde(terms)
    solvers = _SDE_SOLVERS if sde else _ODE_SOLVERS
    if isinstance(solver, diffrax.AbstractImplicitSolver):
        return (
            f"{start}, an implicit solver. The reversible solvers are explicit and "
            "stable only in a thin strip along the imaginary axis, so none of them "
            "can take its place on a stiff problem, and `reversible_adjoint."
            f"Reversible` cannot wrap an implicit method. For a stiff problem, {keep} "
            "(diffrax's default adjoint). If the problem is not stiff, an explicit "
            f"reversible solver works with `ReversibleAdjoint`: {solvers}."
        )
    if sde and isinstance(solver, diffrax.AbstractItoSolver):
        return (
            f"{start}, which converges to the Itô solution of an SDE, whereas the "
            "reversible solvers (and `reversible_adjoint.Reversible(...)` of any "
            "method) are Stratonovich schemes. Write the SDE in Stratonovich form "
            f"(adding the Itô-Stratonovich correction to the drift) and use {solvers}; "
            f"or, to solve the Itô SDE, {keep}."
        )
    if _wrappable(solver) and (
        not sde or isinstance(solver, diffrax.AbstractStratonovichSolver)
    ):
        return (
            f"{start}. To keep its method, wrap it: `reversible_adjoint.Reversible("
            f"{_spelled(solver)})` makes it reversible (with adaptive steps if it has "
            f"an error estimate). Other reversible solvers: {solvers}. Otherwise, "
            f"{keep}."
        )
    if sde:
        reason = (
            f"`{name}` does not converge to the Stratonovich solution of an SDE, so "
            "wrapping it in `reversible_adjoint.Reversible` would not either"
            if _wrappable(solver)
            else f"`reversible_adjoint.Reversible` cannot wrap `{name}`"
        )
        return (
            f"{start}. {reason}. For a Stratonovich SDE use {solvers}. Otherwise, "
            f"{keep}."
        )
    return (
        f"{start}, which `reversible_adjoint.Reversible` cannot wrap (it wraps "
        f"explicit Runge-Kutta methods). Use {solvers}. Otherwise, {keep}."
    )


def max_steps_none(stepsize_controller) -> str:
    """The message for `diffeqsolve(..., max_steps=None)` with `ReversibleAdjoint`: the
    number of steps, where the step size controller fixes it, else how to bound it."""
    start = (
        "`adjoint=ReversibleAdjoint()` needs `diffeqsolve(..., max_steps=...)` to be "
        "an integer, not `None`"
    )
    fixed = (
        "Nothing is stored per step with {controller}: `max_steps` only bounds the "
        "solve's loop, which the backward pass undoes in reverse (and sizes the "
        "checkpoints of `ReversibleAdjoint(checkpoint_every=...)`, if any), so a "
        "larger value costs no memory without checkpoints."
    )
    if isinstance(stepsize_controller, diffrax.StepTo):
        steps = len(stepsize_controller.ts) - 1
        return (
            f"{start}. With `StepTo(ts=...)` this solve takes {steps} steps, one per "
            f"interval of `ts`: pass `max_steps={steps}`. "
            + fixed.format(controller="`StepTo`")
        )
    if isinstance(stepsize_controller, diffrax.ConstantStepSize):
        how = (
            "pass the number of steps it takes, `max_steps=math.ceil((t1 - t0) / "
            "dt0)`, computed from your `t0`, `t1` and `dt0` (diffrax takes exactly "
            "that many)"
        )
        return f"{start}. With `ConstantStepSize`, {how}. " + fixed.format(
            controller="constant steps"
        )
    name = type(stepsize_controller).__name__
    return (
        f"{start}. With an adaptive step size controller (`{name}`) it records the "
        "time of every accepted step, in a buffer of `max_steps` scalars, so it needs "
        "a bound on the number of steps: diffrax's default, `max_steps=4096`, or "
        "the `sol.stats['num_steps']` of a representative solve (rejected steps "
        "count too) with a margin. A solve that needs more steps stops with "
        "`max_steps_reached` (an error with `throw=True`, diffrax's default)."
    )
