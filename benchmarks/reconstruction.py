"""Reconstruction drift: run N steps forward, then undo them with N `backward_step`s,
and report the relative error of the recovered start of the solve, for each reversible
solver, in float32 and float64, on an oscillatory and a dissipative problem. Then the
checkpoint trade-off of `ReversibleAdjoint(checkpoint_every=K)` (second table, below).

    python benchmarks/reconstruction.py [--steps 1000 10000] [--dt 0.01]
    python benchmarks/reconstruction.py --checkpoints-only [--checkpoint-steps 10000]

The error is `reversible_adjoint.round_trip_error`'s: max|reconstructed − true| over
the initial `y` and, separately, the initial solver state, each divided by that part's
largest magnitude at the start or the end of the solve, the worse of the two. It is
the quantity `ReversibleAdjoint`'s drift check compares with `drift_rtol` at the end of
every backward pass (by default `sqrt(eps)`: 3.5e-4 in float32, 1.5e-8 in float64).

This is the precision limit of `ReversibleAdjoint`: its gradients are exact up to this
reconstruction error. "forward max|y_N|" shows when the forward solve itself is
unstable (leapfrog-type schemes on dissipative problems; `Reversible` outside its
stable strip).

The second table, on the oscillatory problem over `--checkpoint-steps` constant steps
(default 10,000) of `dt`, in float32 (`t0`, `t1`, `dt0`, `y0`, `args` all float32
arrays), for each solver: the gradient of `sum(y_N ** 2)` with
respect to `y0` and the frequency `omega` (in `args`), computed with
`ReversibleAdjoint(checkpoint_every=K, on_drift="ignore")` for K in {None, 1000, 100,
10}, and with `diffrax.RecursiveCheckpointAdjoint()` (default, and
`checkpoints=max_steps`: storing every step) for comparison. Its columns: the relative
error of the gradient against `RecursiveCheckpointAdjoint()` in float64 on the same
solver; the worst drift (`round_trip_error(..., checkpoint_every=K)`, its largest
stretch); and the compiled temporary memory of the jitted gradient
(`memory_analysis().temp_size_in_bytes`). `ReversibleAdjoint` keeps the times of the
`max_steps` steps whatever K is: with this two-component state they are most of its
memory.
"""

import argparse
import time

import diffrax
import equinox as eqx
import jax
import jax.numpy as jnp
from _common import relative_error, temp_bytes

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
    # x'' = -omega^2 x, as a first-order system; `args` is omega (2: x'' = -4x).
    "oscillatory": lambda t, y, args: jnp.stack([y[1], -(args**2) * y[0]]),
    # y' = -y (each component).
    "dissipative": lambda t, y, args: -y,
}
OMEGA = 2.0
CHECKPOINT_EVERY = (None, 1000, 100, 10)


def _inputs(problem, num_steps, dt, dtype):
    term = diffrax.ODETerm(PROBLEMS[problem])
    y0 = jnp.array([1.0, 0.5], dtype=dtype)
    ts = (dt * jnp.arange(num_steps + 1)).astype(dtype)
    return term, y0, ts


def _args(dtype):
    return jnp.asarray(OMEGA, dtype=dtype)


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
        _args(dtype),
        stepsize_controller=diffrax.StepTo(ts),
        max_steps=num_steps,
    )
    return float(error)


@eqx.filter_jit
def _forward(term, solver, y0, args, ts):
    sol = diffrax.diffeqsolve(
        term,
        solver,
        ts[0],
        ts[-1],
        None,
        y0,
        args,
        stepsize_controller=diffrax.StepTo(ts),
        max_steps=len(ts) - 1,
        throw=False,
    )
    return jnp.max(jnp.abs(sol.ys[-1]))


def forward_size(solver, problem, num_steps, dt, dtype):
    """max|y_N| at the end of the same forward solve."""
    term, y0, ts = _inputs(problem, num_steps, dt, dtype)
    return float(_forward(term, solver, y0, _args(dtype), ts))


def _constant_inputs(num_steps, dt, dtype):
    """`(y0, omega, t0, t1, dt0)` for `num_steps` constant steps of `dt`, all in
    `dtype` (so that a float32 solve stays float32 with x64 enabled)."""
    _, y0, _ = _inputs("oscillatory", num_steps, dt, dtype)
    t1 = jnp.asarray(num_steps * dt, dtype=jnp.float64).astype(dtype)
    zero, step = jnp.asarray(0.0, dtype=dtype), jnp.asarray(dt, dtype=dtype)
    return y0, _args(dtype), zero, t1, step


def _grad_fn(solver, adjoint, num_steps):
    """The jitted gradient of `sum(y_N ** 2)` with respect to `(y0, omega)` on the
    oscillatory problem, with constant steps (`max_steps=num_steps`)."""
    term = diffrax.ODETerm(PROBLEMS["oscillatory"])

    def loss(y0, omega, t0, t1, dt0):
        sol = diffrax.diffeqsolve(
            term,
            solver,
            t0,
            t1,
            dt0,
            y0,
            omega,
            max_steps=num_steps,
            adjoint=adjoint,
        )
        return jnp.sum(sol.ys[-1] ** 2)

    return jax.jit(jax.grad(loss, argnums=(0, 1)))


def _compiled_grad(solver, adjoint, num_steps, dt, dtype):
    """The gradient (as one flat vector) and the compiled temporary memory."""
    inputs = _constant_inputs(num_steps, dt, dtype)
    compiled = _grad_fn(solver, adjoint, num_steps).lower(*inputs).compile()
    memory = temp_bytes(compiled)
    grad_y0, grad_omega = compiled(*inputs)
    grad = jnp.concatenate([grad_y0.ravel(), grad_omega.ravel()])
    if grad.dtype != dtype:
        raise TypeError(f"the gradient is {grad.dtype}, not {jnp.dtype(dtype)}")
    return grad.astype(jnp.float64), memory


def worst_drift(solver, num_steps, dt, every):
    """The largest round-trip error, in float32, of the same constant-step solve with
    reconstruction restarted from a checkpoint every `every` steps (`None`: none)."""
    y0, omega, t0, t1, dt0 = _constant_inputs(num_steps, dt, jnp.float32)
    drift = ra.round_trip_error(
        diffrax.ODETerm(PROBLEMS["oscillatory"]),
        solver,
        t0,
        t1,
        dt0,
        y0,
        omega,
        max_steps=num_steps,
        checkpoint_every=every,
    )
    return float(jnp.max(drift))


def checkpoint_table(solver_names, num_steps, dt):
    print(
        "\nCheckpoint trade-off of `ReversibleAdjoint(checkpoint_every=K)`: "
        f"oscillatory problem, {num_steps} constant steps of dt = {dt} "
        "(`max_steps` the same), float32, gradient of sum(y_N ** 2) with respect to "
        "(y0, omega).\n"
        "- grad error: |g - g_ref| / |g_ref|, g_ref from "
        "`RecursiveCheckpointAdjoint()` in float64 on the same solver; "
        "/ RCA: divided by RCA's (float32) error;\n"
        "- worst drift: max of `round_trip_error(..., checkpoint_every=K)` in float32 "
        "(the largest stretch's; the whole solve's for K = None);\n"
        "- temp memory: `memory_analysis().temp_size_in_bytes` of the jitted gradient; "
        "x RCA(all): how many times smaller than storing every step.\n"
        "RCA: `RecursiveCheckpointAdjoint()`; RCA(all): "
        "`RecursiveCheckpointAdjoint(checkpoints=max_steps)`.\n"
    )
    print(
        "| solver | adjoint | grad error | / RCA | worst drift "
        "| temp memory (bytes) | x RCA(all) |"
    )
    print("|---|---|---:|---:|---:|---:|---:|")
    for name in solver_names:
        make = SOLVERS[name]
        reference, _ = _compiled_grad(
            make(), diffrax.RecursiveCheckpointAdjoint(), num_steps, dt, jnp.float64
        )
        rows = []
        baselines = {
            "RCA": diffrax.RecursiveCheckpointAdjoint(),
            "RCA(all)": diffrax.RecursiveCheckpointAdjoint(checkpoints=num_steps),
        }
        results = {}
        for label, adjoint in baselines.items():
            grad, memory = _compiled_grad(make(), adjoint, num_steps, dt, jnp.float32)
            results[label] = (relative_error(grad, reference), None, memory)
        for every in CHECKPOINT_EVERY:
            adjoint = ra.ReversibleAdjoint(checkpoint_every=every, on_drift="ignore")
            grad, memory = _compiled_grad(make(), adjoint, num_steps, dt, jnp.float32)
            drift = worst_drift(make(), num_steps, dt, every)
            label = f"Reversible(K={every})"
            results[label] = (relative_error(grad, reference), drift, memory)
            rows.append(label)
        rca_error, all_memory = results["RCA"][0], results["RCA(all)"][2]
        for label in [*rows, *baselines]:
            error, drift, memory = results[label]
            drift = "—" if drift is None else f"{drift:.1e}"
            ratio = f"{all_memory / memory:.1f}" if memory else "inf"
            row = f"| {name} | {label} | {error:.1e} | {error / rca_error:.2f} "
            print(f"{row}| {drift} | {memory} | {ratio} |", flush=True)


def round_trip_table(steps, dt):
    print(
        "Relative round-trip error (`reversible_adjoint.round_trip_error`), "
        f"y0 = (1, 0.5), dt = {dt}\n"
    )
    print(
        "| solver | problem | steps | float32 | float64 "
        "| forward max abs y_N (float64) |"
    )
    print("|---|---|---:|---:|---:|---:|")
    for name, make in SOLVERS.items():
        for problem in PROBLEMS:
            for n in steps:
                e32 = round_trip(make(), problem, n, dt, jnp.float32)
                e64 = round_trip(make(), problem, n, dt, jnp.float64)
                size = forward_size(make(), problem, n, dt, jnp.float64)
                row = f"| {name} | {problem} | {n} | {e32:.1e} | {e64:.1e} "
                print(f"{row}| {size:.1e} |", flush=True)


def main():
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--steps", type=int, nargs="+", default=[1000, 10000])
    parser.add_argument("--dt", type=float, default=0.01)
    parser.add_argument(
        "--checkpoints-only",
        action="store_true",
        help="print only the checkpoint trade-off table",
    )
    parser.add_argument(
        "--checkpoint-steps",
        type=int,
        default=10000,
        help="steps of the checkpoint trade-off table (default 10000)",
    )
    parser.add_argument(
        "--solvers",
        nargs="+",
        choices=list(SOLVERS),
        default=list(SOLVERS),
        help="solvers of the checkpoint trade-off table (default all)",
    )
    options = parser.parse_args()
    start = time.perf_counter()
    if not options.checkpoints_only:
        round_trip_table(options.steps, options.dt)
    checkpoint_table(options.solvers, options.checkpoint_steps, options.dt)
    print(f"\nWall time: {time.perf_counter() - start:.0f} s")


if __name__ == "__main__":
    main()
