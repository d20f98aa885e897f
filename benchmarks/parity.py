"""Worst relative gradient error of `ReversibleAdjoint` against
`diffrax.RecursiveCheckpointAdjoint` (same solver, same steps), per input, in float64.

Problem: a time-dependent vector field on a pytree state, with parameters in `args` and
inside the term; loss reads every saved value and time. Matrix: both reversible Heun
instances x {constant, PID (with rejections), PID with step_ts, StepTo} x
{SaveAt(ts, t1), SaveAt(t0, steps, t1), SaveAt(ts, fn)}.

    python benchmarks/parity.py
"""

import itertools

import diffrax
import equinox as eqx
import jax
import jax.numpy as jnp
from _common import max_relative_error, parity_problem, readout

import reversible_adjoint as ra

jax.config.update("jax_enable_x64", True)

INPUTS = ["y0", "args", "term", "t0", "t1", "ts", "dt0"]


def controller(name, t0, t1):
    if name == "constant":
        return diffrax.ConstantStepSize(), True
    if name == "pid":
        return diffrax.PIDController(rtol=1e-3, atol=1e-5), True
    if name == "pid+step_ts":
        return diffrax.PIDController(rtol=1e-3, atol=1e-5, step_ts=[0.4, 1.1]), True
    grid = jnp.concatenate([t0[None], jnp.linspace(0.3, 1.7, 9) ** 1.2, t1[None]])
    return diffrax.StepTo(grid), False


SAVEATS = {
    "ts,t1": lambda ts: diffrax.SaveAt(ts=ts, t1=True),
    "t0,steps,t1": lambda ts: diffrax.SaveAt(t0=True, steps=True, t1=True),
    "ts,fn": lambda ts: diffrax.SaveAt(ts=ts, fn=lambda t, y, args: t * y["x"] ** 2),
}


def gradients(adjoint, solver, controller_name, saveat_name, inputs):
    @eqx.filter_jit
    @eqx.filter_grad
    def grad(inputs):
        y0, args, term, t0, t1, ts, dt0 = inputs
        stepsize_controller, uses_dt0 = controller(controller_name, t0, t1)
        sol = diffrax.diffeqsolve(
            term,
            solver,
            t0,
            t1,
            dt0 if uses_dt0 else None,
            y0,
            args=args,
            saveat=SAVEATS[saveat_name](ts),
            stepsize_controller=stepsize_controller,
            adjoint=adjoint,
            max_steps=512,
        )
        return readout((sol.ys, sol.ts))

    return grad(inputs)


def main():
    term, y0, args, ts = parity_problem()
    worst = {name: 0.0 for name in INPUTS}
    solvers = {
        "ra.ReversibleHeun": ra.ReversibleHeun(),
        "diffrax.ReversibleHeun": diffrax.ReversibleHeun(),
    }
    controllers = ["constant", "pid", "pid+step_ts", "stepto"]
    print("| solver | controller | saveat | " + " | ".join(INPUTS) + " |")
    print("|---|---|---|" + "---:|" * len(INPUTS))
    for (solver_name, solver), controller_name, saveat_name in itertools.product(
        solvers.items(), controllers, SAVEATS
    ):
        dt0 = jnp.array(0.05 if controller_name == "constant" else 0.3)
        inputs = (y0, args, term, jnp.array(0.0), jnp.array(2.0), ts, dt0)
        want = gradients(
            diffrax.RecursiveCheckpointAdjoint(),
            solver,
            controller_name,
            saveat_name,
            inputs,
        )
        got = gradients(
            ra.ReversibleAdjoint(), solver, controller_name, saveat_name, inputs
        )
        cells = []
        for name, g, w in zip(INPUTS, got, want):
            error = max_relative_error(g, w)
            worst[name] = max(worst[name], error)
            cells.append(f"{error:.1e}")
        print(
            f"| {solver_name} | {controller_name} | {saveat_name} | "
            + " | ".join(cells)
            + " |"
        )
    print(
        "| **worst** | | | "
        + " | ".join(f"**{worst[name]:.1e}**" for name in INPUTS)
        + " |"
    )


if __name__ == "__main__":
    main()
