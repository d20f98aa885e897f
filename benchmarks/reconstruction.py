"""Reconstruction drift: run N steps forward, then undo them with N `backward_step`s,
and report the relative error of the recovered start of the solve, for each reversible
solver, in float32 and float64, on an oscillatory and a dissipative problem.

    python benchmarks/reconstruction.py [--steps 1000 10000] [--dt 0.01]

The error is `reversible_adjoint.round_trip_error`'s: max|reconstructed − true| over
the initial `y` and, separately, the initial solver state, each divided by that part's
largest magnitude at the start or the end of the solve, the worse of the two. It is
the quantity `ReversibleAdjoint`'s drift check compares with `drift_rtol` at the end of
every backward pass (by default `sqrt(eps)`: 3.5e-4 in float32, 1.5e-8 in float64).

This is the precision limit of `ReversibleAdjoint`: its gradients are exact up to this
reconstruction error. "forward max|y_N|" shows when the forward solve itself is
unstable (leapfrog-type schemes on dissipative problems; `Reversible` outside its
stable strip).
"""

import argparse

import diffrax
import equinox as eqx
import jax
import jax.numpy as jnp

import reversible_adjoint as ra

jax.config.update("jax_enable_x64", True)

SOLVERS = {
    "ReversibleHeun": lambda: ra.ReversibleHeun(),
    "AsynchronousLeapfrog": lambda: ra.AsynchronousLeapfrog(),
    "Reversible(Midpoint)": lambda: ra.Reversible(diffrax.Midpoint()),
    "Reversible(Tsit5)": lambda: ra.Reversible(diffrax.Tsit5()),
    "LeapfrogMidpoint": lambda: ra.LeapfrogMidpoint(),
}
PROBLEMS = {
    # x'' = -4x, as a first-order system.
    "oscillatory": lambda t, y, args: jnp.stack([y[1], -4.0 * y[0]]),
    # y' = -y (each component).
    "dissipative": lambda t, y, args: -y,
}


def _inputs(problem, num_steps, dt, dtype):
    term = diffrax.ODETerm(PROBLEMS[problem])
    y0 = jnp.array([1.0, 0.5], dtype=dtype)
    ts = (dt * jnp.arange(num_steps + 1)).astype(dtype)
    return term, y0, ts


def round_trip(solver, problem, num_steps, dt, dtype):
    """The relative round-trip error over `num_steps` steps of `dt` (a `StepTo` grid
    in `dtype`)."""
    term, y0, ts = _inputs(problem, num_steps, dt, dtype)
    error = ra.round_trip_error(
        term,
        solver,
        ts[0],
        ts[-1],
        None,
        y0,
        stepsize_controller=diffrax.StepTo(ts),
        max_steps=num_steps,
    )
    return float(error)


@eqx.filter_jit
def _forward(term, solver, y0, ts):
    sol = diffrax.diffeqsolve(
        term,
        solver,
        ts[0],
        ts[-1],
        None,
        y0,
        stepsize_controller=diffrax.StepTo(ts),
        max_steps=len(ts) - 1,
        throw=False,
    )
    return jnp.max(jnp.abs(sol.ys[-1]))


def forward_size(solver, problem, num_steps, dt, dtype):
    """max|y_N| at the end of the same forward solve."""
    term, y0, ts = _inputs(problem, num_steps, dt, dtype)
    return float(_forward(term, solver, y0, ts))


def main():
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--steps", type=int, nargs="+", default=[1000, 10000])
    parser.add_argument("--dt", type=float, default=0.01)
    options = parser.parse_args()
    print(
        "Relative round-trip error (`reversible_adjoint.round_trip_error`), "
        f"y0 = (1, 0.5), dt = {options.dt}\n"
    )
    print(
        "| solver | problem | steps | float32 | float64 "
        "| forward max abs y_N (float64) |"
    )
    print("|---|---|---:|---:|---:|---:|")
    for name, make in SOLVERS.items():
        for problem in PROBLEMS:
            for n in options.steps:
                e32 = round_trip(make(), problem, n, options.dt, jnp.float32)
                e64 = round_trip(make(), problem, n, options.dt, jnp.float64)
                size = forward_size(make(), problem, n, options.dt, jnp.float64)
                row = f"| {name} | {problem} | {n} | {e32:.1e} | {e64:.1e} "
                print(f"{row}| {size:.1e} |", flush=True)


if __name__ == "__main__":
    main()
