"""Memory, speed and gradient accuracy of `ReversibleAdjoint` against diffrax's own
adjoints, measured side by side in one run.

    python benchmarks/adjoints.py         # full run: about 10 minutes on 2 CPU cores
    python benchmarks/adjoints.py --quick # under a minute (the test suite's smoke test)
    python benchmarks/adjoints.py --max-steps 2000 --problems mlp  # part of the run
    python benchmarks/adjoints.py --problems mlp --steps 2000 \
        --solvers "Reversible(Midpoint)" "Reversible(Tsit5)" \
        --compiles 3  # the wrapper's goals, compile times the medians of three

(`bash benchmarks/gpu.sh` runs it on a GPU.)

Problems (float32 unless stated):
- `mlp`: a neural ODE, MLP vector field (width 128, depth 2), batch 32 x state 64;
- `large`: the same with batch 256 x state 256 (memory and compile time only);
- `sde`: a neural SDE, MLP drift and diagonal diffusion, batch 32 x state 64, on a
  `VirtualBrownianTree`.
Methods: `ReversibleAdjoint` with each reversible solver, and, on the same solver,
`RecursiveCheckpointAdjoint` (default, and `checkpoints=max_steps`: store every step),
`BacksolveAdjoint` (not on the SDE, where it needs about 1 GB and 40 s per gradient),
and `DirectAdjoint` up to 1,000 steps (these two not with the `Reversible` wrapper).
Figures: median gradient and forward time (timed round-robin, so that all methods
share the machine's noise), gradient/forward ratio, compile time, compiled temporary
memory (`memory_analysis().temp_size_in_bytes`), and the relative error of the gradient
against `RecursiveCheckpointAdjoint` computed in float64.

Prints markdown tables and the library's performance goals with the measured
figures; writes PNG plots and `results.json` to `benchmarks/results/` (or `--output`).
"""

import argparse
import json
import pathlib
import platform

import diffrax
import jax
import jax.numpy as jnp
import numpy as np
from _common import compile_and_measure, make_fns, relative_error, round_robin

import reversible_adjoint as ra

jax.config.update("jax_enable_x64", True)  # float64 for the error column only

SOLVERS = {
    "ReversibleHeun": lambda: ra.ReversibleHeun(),
    "AsynchronousLeapfrog": lambda: ra.AsynchronousLeapfrog(),
    "Reversible(Midpoint)": lambda: ra.Reversible(diffrax.Midpoint()),
    "Reversible(Tsit5)": lambda: ra.Reversible(diffrax.Tsit5()),
}
BASELINES = {
    "RecursiveCheckpointAdjoint": lambda n: diffrax.RecursiveCheckpointAdjoint(),
    "RecursiveCheckpointAdjoint(checkpoints=max_steps)": lambda n: (
        diffrax.RecursiveCheckpointAdjoint(checkpoints=n)
    ),
    "BacksolveAdjoint": lambda n: diffrax.BacksolveAdjoint(),
    "DirectAdjoint": lambda n: diffrax.DirectAdjoint(),
}
SHORT = {
    "ReversibleAdjoint": "Reversible",
    "ReversibleAdjoint(checkpoints=0)": "Reversible(ckpt=0)",
    "RecursiveCheckpointAdjoint": "RCA",
    "RecursiveCheckpointAdjoint(checkpoints=max_steps)": "RCA(all)",
    "BacksolveAdjoint": "Backsolve",
    "DirectAdjoint": "Direct",
}


def methods_for(problem, solver_name, num_steps, quick):
    methods = {"ReversibleAdjoint": lambda n: ra.ReversibleAdjoint()}
    wrapper = solver_name.startswith("Reversible(")
    if not (quick or wrapper):
        # The previous release's default: no checkpoints, the drift of the whole solve.
        methods["ReversibleAdjoint(checkpoints=0)"] = lambda n: ra.ReversibleAdjoint(
            checkpoints=0
        )
    for name, make in BASELINES.items():
        if name == "DirectAdjoint" and (num_steps > 1000 or quick):
            continue  # its cost grows with max_steps; it does not fit here
        if name == "BacksolveAdjoint" and problem == "sde":
            continue  # materialises the diffusion's Jacobian: ~1 GB, ~40 s per gradient
        if (quick or wrapper) and name not in (
            "RecursiveCheckpointAdjoint",
            "RecursiveCheckpointAdjoint(checkpoints=max_steps)",
        ):
            continue  # The wrapper is compared with the checkpointing adjoints only.
        methods[name] = make
    return methods


def run(problem, solver_names, step_counts, repeats, quick, timed=True, compiles=1):
    rows = []
    for num_steps in step_counts:
        for solver_name in solver_names:
            solver = SOLVERS[solver_name]()
            methods = methods_for(problem, solver_name, num_steps, quick)
            compiled, info = {}, {}
            for method, make_adjoint in methods.items():
                compile_times = []
                for _ in range(compiles):  # Traced afresh each time.
                    grad, forward, args = make_fns(
                        problem, solver, make_adjoint(num_steps), num_steps, jnp.float32
                    )
                    compiled[method], compile_time, memory = compile_and_measure(
                        grad, args
                    )
                    compile_times.append(compile_time)
                compile_time = float(np.median(compile_times))
                info[method] = dict(compile_time=compile_time, memory=memory)
            if timed:
                compiled["forward"], _, _ = compile_and_measure(forward, args)
                times = round_robin(compiled, args, repeats)
            # Gradient error in float64 against RecursiveCheckpointAdjoint.
            errors = {}
            if problem != "large":
                grads = {}
                for method, make_adjoint in methods.items():
                    grad64, _, args64 = make_fns(
                        problem, solver, make_adjoint(num_steps), num_steps, jnp.float64
                    )
                    grads[method] = grad64(*args64)
                if "RecursiveCheckpointAdjoint" in grads:
                    errors = {
                        m: relative_error(g, grads["RecursiveCheckpointAdjoint"])
                        for m, g in grads.items()
                    }
            for method in methods:
                row = dict(
                    problem=problem,
                    steps=num_steps,
                    solver=solver_name,
                    method=method,
                    **info[method],
                )
                if timed:
                    row.update(
                        time=times[method],
                        forward=times["forward"],
                        ratio=times[method] / times["forward"],
                    )
                row["error"] = errors.get(method)
                rows.append(row)
            print(f"  done: {problem}, {num_steps} steps, {solver_name}", flush=True)
    return rows


#
# Reporting.
#


def table(rows, timed=True):
    header = (
        "| steps | solver | adjoint | grad time (ms) | forward (ms) | grad/forward | "
        "compile (s) | temp memory (MiB) | error (float64) |"
    )
    lines = [header, "|---:|---|---|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        t = (
            f"{r['time'] * 1e3:.1f} | {r['forward'] * 1e3:.1f} | {r['ratio']:.2f}"
            if "time" in r
            else "- | - | -"
        )
        error = "-" if r["error"] is None else f"{r['error']:.1e}"
        lines.append(
            f"| {r['steps']} | {r['solver']} | {r['method']} | {t} | "
            f"{r['compile_time']:.2f} | {r['memory'] / 2**20:.2f} | {error} |"
        )
    return "\n".join(lines)


def goals(rows):
    """The library's performance goals on the MLP problem, at 2,000 and 10,000 steps,
    against the measured figures."""
    lines = [
        "| steps | solver | figure | goal | measured | met |",
        "|---:|---|---|---|---:|---|",
    ]
    for steps, solver in sorted(
        {(r["steps"], r["solver"]) for r in rows if r["problem"] == "mlp"}
    ):
        if steps not in (2000, 10000) or solver not in (
            "ReversibleHeun",
            "AsynchronousLeapfrog",
        ):
            continue
        by = {
            r["method"]: r
            for r in rows
            if r["problem"] == "mlp" and r["steps"] == steps and r["solver"] == solver
        }
        ours = by["ReversibleAdjoint"]
        store_all = by["RecursiveCheckpointAdjoint(checkpoints=max_steps)"]
        # Figures without a goal (`None`): the gradient is at the floor of any exact
        # reverse pass (`benchmarks/floor.py`), so how far it is below diffrax's
        # checkpointing adjoints is measured, not aimed at.
        checks = [
            (
                "grad time / RCA default",
                "-",
                ours["time"] / by["RecursiveCheckpointAdjoint"]["time"],
                None,
            ),
            (
                "grad time / RCA store-all",
                "-",
                ours["time"] / store_all["time"],
                None,
            ),
            ("grad / forward time", "<= 4.3", ours["ratio"], lambda x: x <= 4.3),
            (
                "store-all memory / ours",
                ">= 20 (at 2,000)",
                store_all["memory"] / ours["memory"],
                lambda x: x >= 20 or steps != 2000,
            ),
        ]
        if "ReversibleAdjoint(checkpoints=0)" in by:
            # The default's 16 checkpoints (the drift guard) against none.
            without = by["ReversibleAdjoint(checkpoints=0)"]
            checks.append(
                (
                    "grad time / checkpoints=0",
                    "<= 1.05",
                    ours["time"] / without["time"],
                    lambda x: x <= 1.05,
                )
            )
            checks.append(
                (
                    "memory / checkpoints=0",
                    "-",
                    ours["memory"] / without["memory"],
                    None,
                )
            )
        if "BacksolveAdjoint" in by:
            # diffrax's exact O(1)-memory path for reversible Heun.
            checks.append(
                (
                    "grad time / BacksolveAdjoint",
                    "<= 1",
                    ours["time"] / by["BacksolveAdjoint"]["time"],
                    lambda x: x <= 1,
                )
            )
        for name, goal, value, ok in checks:
            met = "-" if ok is None else ("yes" if ok(value) else "NO")
            lines.append(
                f"| {steps} | {solver} | {name} | {goal} | {value:.2f} | {met} |"
            )
    # The reversible wrapper at 2,000 steps: goals for `Reversible(Midpoint)`, figures
    # for `Reversible(Tsit5)`.
    for solver in ("Reversible(Midpoint)", "Reversible(Tsit5)"):
        by = {
            r["method"]: r
            for r in rows
            if r["problem"] == "mlp" and r["steps"] == 2000 and r["solver"] == solver
        }
        if "RecursiveCheckpointAdjoint(checkpoints=max_steps)" not in by:
            continue
        ours = by["ReversibleAdjoint"]
        store_all = by["RecursiveCheckpointAdjoint(checkpoints=max_steps)"]
        midpoint = solver == "Reversible(Midpoint)"
        checks = [
            ("grad / forward time", "<= 4.8", ours["ratio"], 4.8),
            ("grad time / RCA store-all", "<= 1", ours["time"] / store_all["time"], 1),
        ]
        for name, goal, value, bound in checks:
            met = ("yes" if value <= bound else "NO") if midpoint else "-"
            lines.append(
                f"| 2000 | {solver} | {name} | {goal if midpoint else '-'} | "
                f"{value:.2f} | {met} |"
            )
    # Compile time hardly depends on the number of steps, and one compile is a noisy
    # measurement: compare the medians over all step counts.
    for solver in SOLVERS:
        compile_times = {
            method: [
                r["compile_time"]
                for r in rows
                if r["problem"] == "mlp"
                and r["solver"] == solver
                and r["method"] == method
            ]
            for method in ("ReversibleAdjoint", "RecursiveCheckpointAdjoint")
        }
        if all(compile_times.values()):
            compile_times = {
                method: np.median(times) for method, times in compile_times.items()
            }
            ratio = (
                compile_times["ReversibleAdjoint"]
                / compile_times["RecursiveCheckpointAdjoint"]
            )
            lines.append(
                f"| all | {solver} | compile time / RCA default (medians) | <= 1 | "
                f"{ratio:.2f} | {'yes' if ratio <= 1 else 'NO'} |"
            )
    # Memory flat in steps.
    for solver in ("ReversibleHeun", "AsynchronousLeapfrog"):
        mem = {
            r["steps"]: r["memory"]
            for r in rows
            if r["problem"] == "mlp"
            and r["solver"] == solver
            and r["method"] == "ReversibleAdjoint"
        }
        if len(mem) > 1:
            lo, hi = min(mem), max(mem)
            growth = (mem[hi] - mem[lo]) / (hi - lo)
            lines.append(
                f"| {lo}-{hi} | {solver} | memory growth per step (bytes) | "
                f"flat (one time scalar) | {growth:.1f} | "
                f"{'yes' if growth <= 16 else 'NO'} |"
            )
    return "\n".join(lines)


def plot(rows, output):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    mlp = [r for r in rows if r["problem"] == "mlp"]
    fig, axes = plt.subplots(2, 3, figsize=(16, 9))
    # Colour and marker by adjoint, line style by solver.
    colours = {m: f"C{i}" for i, m in enumerate(SHORT)}
    markers = dict(zip(SHORT, "osD^v"))
    lines = {
        "ReversibleHeun": "-",
        "AsynchronousLeapfrog": "--",
        "Reversible(Midpoint)": ":",
        "Reversible(Tsit5)": "-.",
    }
    series = sorted({(r["solver"], r["method"]) for r in mlp})
    for solver, method in series:
        rs = sorted(
            (r for r in mlp if r["solver"] == solver and r["method"] == method),
            key=lambda r: r["steps"],
        )
        style = dict(
            color=colours[method],
            marker=markers[method],
            linestyle=lines[solver],
            label=f"{SHORT[method]} + {solver}",
        )
        steps = [r["steps"] for r in rs]
        axes[0, 0].loglog(steps, [r["time"] * 1e3 for r in rs], **style)
        axes[0, 1].loglog(steps, [r["memory"] / 2**20 for r in rs], **style)
        axes[0, 2].semilogx(steps, [r["ratio"] for r in rs], **style)
        axes[1, 0].semilogx(steps, [r["compile_time"] for r in rs], **style)
        errs = [(r["steps"], r["error"]) for r in rs if r["error"]]
        if errs:
            axes[1, 1].loglog(*zip(*errs), **style)
    forwards = sorted({(r["solver"], r["steps"], r["forward"]) for r in mlp})
    for solver in sorted({s for s, _, _ in forwards}):
        pts = [(n, f) for s, n, f in forwards if s == solver]
        axes[0, 0].loglog(
            *zip(*[(n, f * 1e3) for n, f in pts]),
            ":",
            color="grey",
            label=f"forward ({solver})",
        )
    titles = [
        ("gradient time (ms, median)", axes[0, 0]),
        ("compiled temp memory (MiB)", axes[0, 1]),
        ("gradient / forward time", axes[0, 2]),
        ("compile time (s)", axes[1, 0]),
        ("gradient relative error vs RCA (float64)", axes[1, 1]),
    ]
    for title, ax in titles:
        ax.set_title(title)
        ax.set_xlabel("solver steps")
    axes[0, 1].legend(fontsize=7)
    last = {
        p: max(r["steps"] for r in rows if r["problem"] == p)
        for p in ("large", "sde")
        if any(r["problem"] == p for r in rows)
    }
    memory = [
        r for r in rows if r["problem"] in last and r["steps"] == last[r["problem"]]
    ]
    labels = [f"{r['problem']}, {r['steps']}\n{SHORT[r['method']]}" for r in memory]
    axes[1, 2].bar(
        range(len(memory)),
        [r["memory"] / 2**20 for r in memory],
        color=[colours[r["method"]] for r in memory],
    )
    axes[1, 2].set_xticks(range(len(memory)), labels, fontsize=6)
    axes[1, 2].set_yscale("log")
    axes[1, 2].set_title("temp memory (MiB): batch 256 x 256 ODE, neural SDE")
    fig.suptitle(
        "MLP neural ODE (batch 32 x 64, width 128, float32), "
        f"{platform.processor() or platform.machine()}, "
        f"{jax.devices()[0].device_kind}"
    )
    fig.tight_layout()
    output.mkdir(parents=True, exist_ok=True)
    fig.savefig(output / "adjoints.png", dpi=90)
    plt.close(fig)


def report(rows):
    for problem in dict.fromkeys(r["problem"] for r in rows):
        print(f"\n## Problem: {problem}\n")
        print(table([r for r in rows if r["problem"] == problem]))
    print("\n## Performance goals (MLP problem)\n")
    print(goals(rows))


def main(argv=None):
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--quick", action="store_true", help="small step counts, few repeats"
    )
    parser.add_argument("--repeats", type=int, default=None)
    parser.add_argument(
        "--compiles",
        type=int,
        default=1,
        help="compile each gradient this many times; its compile time is the median",
    )
    parser.add_argument(
        "--problems",
        nargs="+",
        choices=["mlp", "large", "sde"],
        help="run only these problems (default: all)",
    )
    parser.add_argument(
        "--solvers",
        nargs="+",
        choices=list(SOLVERS),
        help="run only these solvers (default: all)",
    )
    parser.add_argument(
        "--steps",
        nargs="+",
        type=int,
        help="run only these step counts, of those in the plan (default: all)",
    )
    parser.add_argument(
        "--max-steps",
        type=int,
        default=None,
        help="leave out the step counts above this (default: none left out)",
    )
    parser.add_argument(
        "--output", type=pathlib.Path, default=pathlib.Path(__file__).parent / "results"
    )
    parser.add_argument(
        "--replot",
        action="store_true",
        help="print the tables and redraw the plots from results.json",
    )
    options = parser.parse_args(argv)
    if options.replot:
        rows = json.loads((options.output / "results.json").read_text())["rows"]
        report(rows)
        plot(rows, options.output)
        return
    if options.quick:
        plan = [
            ("mlp", ["ReversibleHeun"], [20], True),
            ("sde", ["ReversibleHeun"], [10], True),
        ]
        repeats = options.repeats or 2
    else:
        plan = [
            (
                "mlp",
                ["ReversibleHeun", "AsynchronousLeapfrog"],
                [100, 1000, 2000, 10000],
                True,
            ),
            (
                "mlp",
                ["Reversible(Midpoint)", "Reversible(Tsit5)"],
                [100, 1000, 2000],
                True,
            ),
            ("large", ["ReversibleHeun"], [100, 2000], False),
            ("sde", ["ReversibleHeun"], [100, 2000], True),
        ]
        repeats = options.repeats or 7
    plan = [
        (problem, solvers, steps, timed)
        for problem, solvers, steps, timed in plan
        if options.problems is None or problem in options.problems
    ]
    if options.max_steps is not None:
        plan = [
            (problem, solvers, [n for n in steps if n <= options.max_steps], timed)
            for problem, solvers, steps, timed in plan
        ]
    if options.steps is not None:
        plan = [
            (problem, solvers, [n for n in steps if n in options.steps], timed)
            for problem, solvers, steps, timed in plan
        ]
    if options.solvers is not None:
        plan = [
            (problem, [s for s in solvers if s in options.solvers], steps, timed)
            for problem, solvers, steps, timed in plan
        ]
    device = jax.devices()[0]
    print(
        f"# Benchmark: {platform.platform()}, {jax.device_count()} x "
        f"{device.device_kind}, jax {jax.__version__}, diffrax {diffrax.__version__}"
    )
    rows = []
    for problem, solvers, steps, timed in plan:
        rows += run(
            problem, solvers, steps, repeats, options.quick, timed, options.compiles
        )
    report(rows)
    options.output.mkdir(parents=True, exist_ok=True)
    (options.output / "results.json").write_text(
        json.dumps(
            dict(
                platform=platform.platform(),
                device=device.device_kind,
                jax=jax.__version__,
                diffrax=diffrax.__version__,
                rows=rows,
            ),
            indent=1,
        )
    )
    plot(rows, options.output)
    print(
        f"\nwrote {options.output / 'adjoints.png'} and "
        f"{options.output / 'results.json'}"
    )


if __name__ == "__main__":
    main()
