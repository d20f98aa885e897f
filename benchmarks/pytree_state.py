"""Compile time, run time and program size of the `Reversible` wrapper on pytree
states, against the plain base solver with `RecursiveCheckpointAdjoint`, measured side
by side in one run.

    python benchmarks/pytree_state.py          # full run
    python benchmarks/pytree_state.py --quick  # under a minute
    python benchmarks/pytree_state.py --bases Tsit5 --states tuple2 --output DIR

States (float32; 20 constant steps on [0, 1]; the gradient of the sum of squares of
the end state with respect to four coefficients in `args`):
- `tuple2`, `tuple8`: a reaction–diffusion system of 2 or 8 fields in a ring, each an
  8×8 array on a periodic grid (Laplacian with `jnp.roll`), the state a tuple of them
  (`tuple2` is issue 26's `(u, v)`);
- `dict2`, `dict8`: 2 or 8 coupled vectors of 16 entries, the state a dict of them,
  with an elementwise vector field (no `jnp.roll`).

Methods, for each base method (`Midpoint`, `Bosh3`, `Tsit5`, `Dopri5`): the plain base
with `RecursiveCheckpointAdjoint` (the reference), and `Reversible(base)` with
`RecursiveCheckpointAdjoint` and with `ReversibleAdjoint`. Figures: the equations of
the gradient's jaxpr (sub-jaxprs included), the instructions of its compiled HLO, the
compile time (the median of `--compiles` compilations, each traced afresh), the run
time (the median of `--repeats` round-robin repeats, every method of a base and state
in each round), their ratios to the reference's, and the relative error of the
`ReversibleAdjoint` gradient against `RecursiveCheckpointAdjoint` on the same solver.

Goal (issue 26): `Reversible(base)` with `ReversibleAdjoint` compiles and runs in at
most 3 times the plain base's time with `RecursiveCheckpointAdjoint` (it makes two base
steps per step), for every base and state. With `--output DIR`, the rows are also
written to `DIR/pytree_state.json`.
"""

import argparse
import json
import pathlib
import platform

import diffrax
import jax
import jax.extend
import jax.numpy as jnp
import numpy as np
from _common import compile_and_measure, relative_error, round_robin

import reversible_adjoint as ra

NUM_STEPS = 20
GOAL = 3.0
BASES = {
    "Midpoint": diffrax.Midpoint,
    "Bosh3": diffrax.Bosh3,
    "Tsit5": diffrax.Tsit5,
    "Dopri5": diffrax.Dopri5,
}
METHODS = ("base + RCA", "Reversible + RCA", "Reversible + ReversibleAdjoint")


def _laplacian(u):
    return (
        jnp.roll(u, 1, 0) + jnp.roll(u, -1, 0) + jnp.roll(u, 1, 1) + jnp.roll(u, -1, 1)
    ) - 4 * u


def _ring(t, y, a):
    n = len(y)
    return tuple(
        a[0] * _laplacian(y[i])
        + a[1] * y[i] * (1 - y[i] ** 2)
        - a[2] * y[(i + 1) % n]
        + a[3] * y[i - 1]
        for i in range(n)
    )


def _coupled(t, y, a):
    n = len(y)
    x = [y[f"x{i}"] for i in range(n)]
    return {
        f"x{i}": a[0] * x[(i + 1) % n]
        - a[1] * x[i] ** 3
        + a[2] * jnp.sin(x[i - 1])
        - a[3] * x[i]
        for i in range(n)
    }


def make_problem(state):
    """`(vector field, y0, args)` of the state `"tuple2"`, `"tuple8"`, `"dict2"` or
    `"dict8"`."""
    kind, n = state[:-1], int(state[-1])
    args = jnp.array([0.1, 0.5, 0.3, 0.2], jnp.float32)
    if kind == "tuple":
        grid = jnp.arange(64, dtype=jnp.float32).reshape(8, 8)
        y0 = tuple(0.8 * jnp.cos(0.7 * (i + 1) * grid + i) for i in range(n))
        return _ring, y0, args
    entries = jnp.arange(16, dtype=jnp.float32)
    y0 = {f"x{i}": 0.8 * jnp.sin(0.3 * (i + 1) * entries + i) for i in range(n)}
    return _coupled, y0, args


def make_grad(state, base, method):
    """The jitted gradient of the loss with respect to `args`, and its arguments."""
    vf, y0, args = make_problem(state)
    solver = BASES[base]() if method == "base + RCA" else ra.Reversible(BASES[base]())
    adjoint = (
        ra.ReversibleAdjoint()
        if method == "Reversible + ReversibleAdjoint"
        else diffrax.RecursiveCheckpointAdjoint()
    )

    def loss(args, y0):
        sol = diffrax.diffeqsolve(
            # A vector field of its own each time, so that every compilation is traced
            # afresh (diffrax caches its traced solve by the vector field).
            diffrax.ODETerm(lambda t, y, a: vf(t, y, a)),
            solver,
            0.0,
            1.0,
            1.0 / NUM_STEPS,
            y0,
            args=args,
            adjoint=adjoint,
            max_steps=NUM_STEPS,
        )
        return sum(jnp.sum(x**2) for x in jax.tree_util.tree_leaves(sol.ys))

    return jax.jit(jax.grad(loss)), (args, y0)


def jaxpr_equations(jaxpr):
    """Equations of `jaxpr`, those of its sub-jaxprs included."""
    return sum(
        1
        + sum(
            jaxpr_equations(sub) for sub in jax.extend.core.jaxprs_in_params(e.params)
        )
        for e in jaxpr.eqns
    )


def hlo_instructions(compiled):
    """Instructions of a compiled program's HLO (fused computations included)."""
    return sum(" = " in line for line in compiled.as_text().splitlines())


def run(bases, states, repeats, compiles):
    rows = []
    for state in states:
        for base in bases:
            compiled, info, grads = {}, {}, {}
            for method in METHODS:
                compile_times = []
                for _ in range(compiles):
                    grad, args = make_grad(state, base, method)
                    compiled[method], compile_time, _ = compile_and_measure(grad, args)
                    compile_times.append(compile_time)
                info[method] = dict(
                    compile_time=float(np.median(compile_times)),
                    jaxpr=jaxpr_equations(jax.make_jaxpr(grad)(*args).jaxpr),
                    hlo=hlo_instructions(compiled[method]),
                )
                grads[method] = compiled[method](*args)
            times = round_robin(compiled, args, repeats, rotate=True)
            ref = info["base + RCA"], times["base + RCA"]
            error = relative_error(
                grads["Reversible + ReversibleAdjoint"], grads["Reversible + RCA"]
            )
            for method in METHODS:
                rows.append(
                    dict(
                        state=state,
                        base=base,
                        method=method,
                        **info[method],
                        time=times[method],
                        compile_ratio=info[method]["compile_time"]
                        / ref[0]["compile_time"],
                        time_ratio=times[method] / ref[1],
                        error=error if method.endswith("ReversibleAdjoint") else None,
                    )
                )
            print(f"  done: {state}, {base}", flush=True)
    return rows


def table(rows):
    lines = [
        "| state | base | solver + adjoint | jaxpr eqns | HLO instrs | compile (s) "
        "| run (ms) | compile / base | run / base | goal met | error vs RCA |",
        "|---|---|---|---:|---:|---:|---:|---:|---:|---|---:|",
    ]
    for r in rows:
        ours = r["method"] == "Reversible + ReversibleAdjoint"
        met = (
            ("yes" if max(r["compile_ratio"], r["time_ratio"]) <= GOAL else "**no**")
            if ours
            else ""
        )
        error = "" if r["error"] is None else f"{r['error']:.1e}"
        lines.append(
            f"| {r['state']} | {r['base']} | {r['method']} | {r['jaxpr']} | "
            f"{r['hlo']} | {r['compile_time']:.2f} | {r['time'] * 1e3:.3f} | "
            f"{r['compile_ratio']:.2f} | {r['time_ratio']:.2f} | {met} | {error} |"
        )
    return "\n".join(lines)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--bases", nargs="+", choices=list(BASES))
    parser.add_argument(
        "--states", nargs="+", choices=["tuple2", "tuple8", "dict2", "dict8"]
    )
    parser.add_argument("--repeats", type=int)
    parser.add_argument("--compiles", type=int)
    parser.add_argument("--output", type=pathlib.Path)
    cli = parser.parse_args()
    bases = cli.bases or (["Midpoint", "Tsit5"] if cli.quick else list(BASES))
    states = cli.states or (
        ["tuple2", "dict2"] if cli.quick else ["tuple2", "tuple8", "dict2", "dict8"]
    )
    repeats = cli.repeats or (1 if cli.quick else 7)
    compiles = cli.compiles or (1 if cli.quick else 3)

    print(
        f"{platform.processor() or platform.machine()}, jax {jax.__version__}, "
        f"diffrax {diffrax.__version__}, {jax.devices()[0].platform}; "
        f"{NUM_STEPS} constant steps, float32; compile: median of {compiles}, run: "
        f"median of {repeats} round-robin repeats"
    )
    rows = run(bases, states, repeats, compiles)
    print()
    print(table(rows))
    ours = [r for r in rows if r["method"] == "Reversible + ReversibleAdjoint"]
    worst = max(max(r["compile_ratio"], r["time_ratio"]) for r in ours)
    met = sum(max(r["compile_ratio"], r["time_ratio"]) <= GOAL for r in ours)
    print(
        f"\nGoal: Reversible + ReversibleAdjoint within {GOAL:g}x the plain base with "
        f"RCA, in compile and run time: met for {met} of {len(ours)} "
        f"(worst ratio {worst:.2f})."
    )
    if cli.output is not None:
        cli.output.mkdir(parents=True, exist_ok=True)
        (cli.output / "pytree_state.json").write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
