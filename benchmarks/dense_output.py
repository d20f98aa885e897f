"""What `Reversible`'s dense output costs the backward pass of `ReversibleAdjoint` on
steps that contain a save time, measured side by side in one run.

`Reversible` interpolates inside a step with its base method's dense output (for
`Tsit5`, a polynomial in the base step's seven stages; for `Midpoint`, a cubic Hermite
one). Differentiating a save time inside a step differentiates that interpolation, and
the base step's stages through it. For each base method this script times the gradient
of a loss of the saved values with respect to the model's parameters, `y0` and the
save times, in three configurations:

- `t1 only`: `SaveAt(t1=True)`, no save time inside a step (no dense output at all);
- `ts, linear`: a save time inside every step, with linear interpolation between the
    step's ends (what `Reversible` did before it used its base method's dense output;
    a subclass here);
- `ts, base dense`: a save time inside every step, with `Reversible`'s dense output.

and prints the median times (interleaved repeats), the backward pass (gradient less the
forward solve alone), their ratios, and the compiled temporary memory
(`memory_analysis().temp_size_in_bytes`).

Problem: the benchmarks' neural ODE (`_common.make_problem("mlp")`: MLP vector field,
width 128, depth 2, batch 32 x state 64), float32, constant steps on [0, 1], loss
`mean(ys ** 2)`.

    python benchmarks/dense_output.py [--steps 200] [--repeats 9] [--cpu-time]

With `--cpu-time` the times are the process's CPU time rather than wall time: steadier
on a machine shared with other jobs, where the process is often waiting for a core.
Run it with XLA single-threaded, so that the CPU time is that of one computation, not
of a pool of threads: with
`XLA_FLAGS="--xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1"`.
"""

import argparse
import time

import diffrax
import equinox as eqx
import jax
import jax.numpy as jnp
from _common import make_problem, round_robin, temp_bytes

import reversible_adjoint as ra

BASES = {"Midpoint": diffrax.Midpoint, "Tsit5": diffrax.Tsit5}
CONFIGS = ("t1 only", "ts, linear", "ts, base dense")


class LinearDense(ra.Reversible):
    """`Reversible` with linear interpolation between the ends of each step."""

    @property
    def interpolation_cls(self):
        return diffrax.LocalLinearInterpolation

    def step(self, terms, t0, t1, y0, args, solver_state, made_jump):
        y1, y_error, _, z1, result = super().step(
            terms, t0, t1, y0, args, solver_state, made_jump
        )
        return y1, y_error, dict(y0=y0, y1=y1), z1, result

    def fused_step(self, evaluate, terms, t0, t1, y0, args, solver_state, made_jump):
        y1, y_error, _, z1, result = super().fused_step(
            evaluate, terms, t0, t1, y0, args, solver_state, made_jump
        )
        return y1, y_error, dict(y0=y0, y1=y1), z1, result


def make_fns(base, config, num_steps):
    """The jitted gradient and forward solve of `config`, and their arguments."""
    params, static, terms, y0 = make_problem("mlp", jnp.float32)
    solver = (LinearDense if config == "ts, linear" else ra.Reversible)(BASES[base]())
    # One save time in the middle of every step.
    ts = (jnp.arange(num_steps) + 0.5) / num_steps

    def loss(params, y0, ts):
        saveat = (
            diffrax.SaveAt(t1=True) if config == "t1 only" else diffrax.SaveAt(ts=ts)
        )
        sol = diffrax.diffeqsolve(
            terms,
            solver,
            0.0,
            1.0,
            1.0 / num_steps,
            y0,
            args=eqx.combine(params, static),
            saveat=saveat,
            adjoint=ra.ReversibleAdjoint(),
            max_steps=num_steps,
        )
        return jnp.mean(sol.ys**2)

    grad = jax.jit(jax.grad(loss, argnums=(0, 1, 2)))
    return grad, jax.jit(loss), (params, y0, ts)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--repeats", type=int, default=9)
    parser.add_argument("--cpu-time", action="store_true")
    cli = parser.parse_args()

    fns, memory = {}, {}
    for base in BASES:
        for config in CONFIGS:
            grad, forward, args = make_fns(base, config, cli.steps)
            compiled = grad.lower(*args).compile()
            memory[base, config] = temp_bytes(compiled)
            fns[base, config, "gradient"] = compiled
            fns[base, config, "forward"] = forward.lower(*args).compile()

    # Interleaved, rotating rounds: every configuration shares the machine's noise.
    clock = time.process_time if cli.cpu_time else time.perf_counter
    times = round_robin(fns, args, cli.repeats, rotate=True, clock=clock)

    print(
        f"Reversible(base), ReversibleAdjoint, {cli.steps} steps; median "
        f"{'CPU' if cli.cpu_time else 'wall'} time of {cli.repeats} interleaved repeats"
    )
    print(
        f"{'base':9s} {'config':15s} {'gradient (s)':>12s} {'backward (s)':>12s} "
        f"{'temp MiB':>9s} {'backward vs t1 only':>20s} {'vs linear':>10s}"
    )
    for base in BASES:
        backward = {
            c: times[base, c, "gradient"] - times[base, c, "forward"] for c in CONFIGS
        }
        for config in CONFIGS:
            print(
                f"{base:9s} {config:15s} {times[base, config, 'gradient']:12.3f} "
                f"{backward[config]:12.3f} {memory[base, config] / 2**20:9.2f} "
                f"{backward[config] / backward['t1 only']:19.2f}x "
                f"{backward[config] / backward['ts, linear']:9.2f}x"
            )


if __name__ == "__main__":
    main()
