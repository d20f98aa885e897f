"""Reconstruction drift: run N steps forward, then N `backward_step`s, and report the
largest error in the recovered initial value, for each reversible solver, in float32
and float64, on an oscillatory and a dissipative problem.

    python benchmarks/reconstruction.py [--steps 1000 10000] [--dt 0.01]

This is the precision limit of `ReversibleAdjoint`: its gradients are exact up to this
reconstruction error. "forward |y_N|" shows when the forward solve itself is unstable
(leapfrog-type schemes on dissipative problems; `Reversible` outside its stable strip).
"""

import argparse

import diffrax
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


def round_trip(solver, problem, num_steps, dt, dtype):
    term = diffrax.ODETerm(PROBLEMS[problem])
    y0 = jnp.array([1.0, 0.5], dtype=dtype)
    ts = (dt * jnp.arange(num_steps + 1)).astype(dtype)
    kwargs = lambda k: dict(t_previous=ts[jnp.maximum(k - 1, 0)]) if solver.needs_previous_time else {}

    def forward(i, carry):
        y, state = carry
        y, _, _, state, _ = solver.step(term, ts[i], ts[i + 1], y, None, state, False)
        return y, state

    def backward(i, carry):
        y, state = carry
        k = num_steps - 1 - i
        return solver.backward_step(term, ts[k], ts[k + 1], y, None, state, False, **kwargs(k))

    @jax.jit
    def run(y0):
        state0 = solver.init(term, ts[0], ts[1], y0, None)
        y_final, state_final = jax.lax.fori_loop(0, num_steps, forward, (y0, state0))
        y_back, _ = jax.lax.fori_loop(0, num_steps, backward, (y_final, state_final))
        return jnp.max(jnp.abs(y_back - y0)), jnp.max(jnp.abs(y_final))

    return [float(x) for x in run(y0)]


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, nargs="+", default=[1000, 10000])
    parser.add_argument("--dt", type=float, default=0.01)
    options = parser.parse_args()
    print(f"Round-trip error max|y0_reconstructed - y0|, y0 = (1, 0.5), dt = {options.dt}\n")
    print("| solver | problem | steps | float32 | float64 | forward max abs y_N (float64) |")
    print("|---|---|---:|---:|---:|---:|")
    for name, make in SOLVERS.items():
        for problem in PROBLEMS:
            for n in options.steps:
                e32, _ = round_trip(make(), problem, n, options.dt, jnp.float32)
                e64, size = round_trip(make(), problem, n, options.dt, jnp.float64)
                print(f"| {name} | {problem} | {n} | {e32:.1e} | {e64:.1e} | {size:.1e} |", flush=True)


if __name__ == "__main__":
    main()
