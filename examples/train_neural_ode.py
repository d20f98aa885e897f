"""Train a neural ODE at O(1) memory with `ReversibleAdjoint`, then compare one
gradient of the trained model against diffrax's own adjoints.

The data are trajectories of damped nonlinear oscillators (2-dimensional), generated
here with an accurate adaptive solver. The model is a latent neural ODE: a linear map
lifts the initial state into a `--state-size`-dimensional latent state, `dz/dt =
MLP(z)` evolves it with a reversible solver at a fixed number of steps, and a linear
readout gives the prediction at each observation time (`SaveAt(ts=...)`). It is trained
by least squares on the observed trajectories. The batch is sharded over every visible
device (`jax.sharding`), so the same script runs on one CPU, several GPUs, or a TPU
slice.

After training, one gradient of the trained model is computed at several numbers of
solver steps with `ReversibleAdjoint`, `RecursiveCheckpointAdjoint` (diffrax's default,
and storing every step) and `BacksolveAdjoint`: compiled memory, median time, and how
far each gradient is from `RecursiveCheckpointAdjoint`'s, for the parameters and for the
observation times (which `BacksolveAdjoint` cannot differentiate).

    python examples/train_neural_ode.py    # defaults: 1-3 minutes on 2 CPU cores
    python examples/train_neural_ode.py --solver reversible_tsit5 --steps 400

Writes `train_neural_ode.png` (training loss, and memory, time and gradient error
against the number of steps) and `train_neural_ode.md` (the table) to `--output-dir`
(default `outputs/`).
"""

import argparse
import pathlib
import threading
import time

import diffrax
import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
import optax
from jax.sharding import Mesh, NamedSharding, PartitionSpec
from tqdm.auto import tqdm

import reversible_adjoint as ra

# Every solver of the README's table that applies to `dz/dt = MLP(z)`.
# (`ra.SemiImplicitEuler` needs a separable Hamiltonian system, two terms acting on the
# two halves of the state, so it does not apply to this model.)
SOLVERS = {
    "reversible_heun": ra.ReversibleHeun,
    "asynchronous_leapfrog": ra.AsynchronousLeapfrog,
    "leapfrog_midpoint": ra.LeapfrogMidpoint,
    "reversible_midpoint": lambda: ra.Reversible(diffrax.Midpoint()),
    "reversible_bosh3": lambda: ra.Reversible(diffrax.Bosh3()),
    "reversible_tsit5": lambda: ra.Reversible(diffrax.Tsit5()),
}
SOLVER_HELP = (
    "reversible solver: reversible_heun = ra.ReversibleHeun(), "
    "asynchronous_leapfrog = ra.AsynchronousLeapfrog(), "
    "leapfrog_midpoint = ra.LeapfrogMidpoint(), "
    "reversible_<rk> = ra.Reversible(diffrax.<RK>()) for the Runge-Kutta methods "
    "Midpoint, Bosh3 and Tsit5 (twice the base method's cost per step). "
    "ra.SemiImplicitEuler is for separable Hamiltonian systems, not this model. "
    "(default: %(default)s)"
)


#
# Data: damped nonlinear oscillators, x'' = -x - x^3/4 - 0.2 x'.
#


def _true_vector_field(t, y, args):
    x, v = y[..., 0], y[..., 1]
    return jnp.stack([v, -x - 0.25 * x**3 - 0.2 * v], axis=-1)


def make_dataset(key, size, ts):
    """`size` trajectories observed at `ts`, from random initial conditions."""
    y0 = jr.uniform(key, (size, 2), minval=-1.5, maxval=1.5)
    sol = diffrax.diffeqsolve(
        diffrax.ODETerm(_true_vector_field),
        diffrax.Tsit5(),
        ts[0],
        ts[-1],
        0.01,
        y0,
        saveat=diffrax.SaveAt(ts=ts),
        stepsize_controller=diffrax.PIDController(rtol=1e-8, atol=1e-8),
    )
    assert sol.ys is not None  # saved at `ts`
    return y0, jnp.moveaxis(sol.ys, 0, 1)  # (size, len(ts), 2)


#
# Model.
#


class NeuralODE(eqx.Module):
    """`y0 -> z0 = encoder(y0)`, `dz/dt = field(z)`, `y(t) = readout(z(t))`."""

    encoder: eqx.nn.Linear
    field: eqx.nn.MLP
    readout: eqx.nn.Linear

    def __init__(self, key, state_size=64, width=64, depth=2):
        k1, k2, k3 = jr.split(key, 3)
        self.encoder = eqx.nn.Linear(2, state_size, key=k1)
        self.field = eqx.nn.MLP(
            state_size, state_size, width, depth, activation=jnp.tanh, key=k2
        )
        self.readout = eqx.nn.Linear(state_size, 2, key=k3)

    def vector_field(self, t, z, args):
        return jax.vmap(self.field)(z)  # z: (batch, state_size)


def predict(model, y0, ts, num_steps, solver, adjoint):
    """The whole batch is one state of shape `(batch, state_size)`, in one solve."""
    sol = diffrax.diffeqsolve(
        diffrax.ODETerm(model.vector_field),
        solver,
        ts[0],
        ts[-1],
        (ts[-1] - ts[0]) / num_steps,
        jax.vmap(model.encoder)(y0),
        saveat=diffrax.SaveAt(ts=ts),
        adjoint=adjoint,
        max_steps=num_steps,
    )
    pred = jax.vmap(jax.vmap(model.readout))(sol.ys)  # (len(ts), batch, 2)
    return jnp.moveaxis(pred, 0, 1)


def loss_fn(model, ts, y0, ys, num_steps, solver, adjoint):
    pred = predict(model, y0, ts, num_steps, solver, adjoint)
    return jnp.mean((pred - ys) ** 2)


def make_grad_fn(num_steps, solver, adjoint, with_times=False):
    """`grad(params, static, y0, ys, ts) -> (loss, grads)`, jitted, with the model
    split into arrays and structure so that it can also be lowered and its memory
    read. `grads` is the gradient with respect to `params`, or with `with_times=True`
    the pair of gradients with respect to `params` and the observation times `ts`."""

    def grad(params, static, y0, ys, ts):
        def loss(params, ts):
            model = eqx.combine(params, static)
            return loss_fn(model, ts, y0, ys, num_steps, solver, adjoint)

        return jax.value_and_grad(loss, argnums=(0, 1) if with_times else 0)(params, ts)

    return jax.jit(grad, static_argnums=1)


#
# Devices.
#


def batch_sharding():
    """Shards the leading (batch) axis over every visible device."""
    mesh = Mesh(np.array(jax.devices()), axis_names=("batch",))
    return NamedSharding(mesh, PartitionSpec("batch")), NamedSharding(
        mesh, PartitionSpec()
    )


def shard(batch, sharding):
    return jax.tree_util.tree_map(lambda x: jax.device_put(x, sharding), batch)


#
# Progress.
#


class ticking:
    """While the main thread is busy in one long call (tracing and compiling), redraws
    `bar` every second so that its elapsed time keeps moving."""

    def __init__(self, bar, what=None):
        self.bar, self.what = bar, what
        self._stop = threading.Event()

    def _run(self):
        while not self._stop.wait(1.0):
            self.bar.refresh()

    def __enter__(self):
        if self.what is not None:
            self.bar.set_postfix_str(self.what)
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self.bar

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()


def progress(**kwargs):
    return tqdm(dynamic_ncols=True, mininterval=0.5, **kwargs)


#
# Comparison of adjoints.
#

OURS, DEFAULT = "ReversibleAdjoint", "RecursiveCheckpointAdjoint"
STORE_ALL, BACKSOLVE = "RecursiveCheckpointAdjoint(checkpoints=n)", "BacksolveAdjoint"
ADJOINTS = {
    OURS: lambda n: ra.ReversibleAdjoint(),
    DEFAULT: lambda n: diffrax.RecursiveCheckpointAdjoint(),
    STORE_ALL: lambda n: diffrax.RecursiveCheckpointAdjoint(checkpoints=n),
    BACKSOLVE: lambda n: diffrax.BacksolveAdjoint(),
}
STYLES = {  # colour, marker, line style: distinguishable in colour and in grey
    OURS: dict(color="C0", marker="o", ls="-", lw=2.5, zorder=4),
    DEFAULT: dict(color="C1", marker="s", ls="--", lw=1.8, zorder=3),
    STORE_ALL: dict(color="C2", marker="^", ls="-.", lw=1.8, zorder=2),
    BACKSOLVE: dict(color="C3", marker="D", ls=":", lw=2.2, zorder=3),
}
FLAG_NAMES = {  # for --adjoints
    "reversible": OURS,
    "checkpoint": DEFAULT,
    "checkpoint_all": STORE_ALL,
    "backsolve": BACKSOLVE,
}
LABELS = {
    OURS: "ReversibleAdjoint (ours)",
    DEFAULT: "RecursiveCheckpoint (default)",
    STORE_ALL: "RecursiveCheckpoint, every step",
    BACKSOLVE: "BacksolveAdjoint",
}
ERROR_FLOOR = 1e-10  # where the figure draws a gradient error of exactly 0
COLUMNS = """\
Columns (RCA: RecursiveCheckpointAdjoint, diffrax's default):
  steps         solver steps of the differentiated solve (training used {train})
  adjoint       how the gradient is computed; checkpoints=n stores every step
  memory (MiB)  temporary memory of the compiled gradient, as XLA reports it
  vs ours       that memory / ReversibleAdjoint's, at the same number of steps
  time (ms)     median wall time of one gradient (batch {batch}), {repeats} calls
  vs ours       that time / ReversibleAdjoint's
  params error  |g - g_RCA| / |g_RCA| for the parameters: ~1e-6 = float32 round-off
  ts error      the same for the save times SaveAt(ts); refused: the adjoint raises"""


def compare_adjoints(
    params,
    static,
    y0,
    ys,
    ts,
    step_counts,
    solver,
    repeats,
    names=tuple(ADJOINTS),
    compiled_already=None,
):
    """For each adjoint in `names` and number of steps: compiled temp memory, median
    gradient time, and gradient errors against `RecursiveCheckpointAdjoint`, on one
    batch. `compiled_already` maps `(name, steps)` to gradients already compiled (the
    one used in training). Returns `{(name, steps): row}`."""
    compiled_already = compiled_already or {}
    rows, start = {}, time.perf_counter()
    total, done = len(names) * len(step_counts), 0
    for index, name in enumerate(names):
        make_adjoint = ADJOINTS[name]
        # Numbered apart from the phases ([1/3] data, ...), which this is the third.
        bar = progress(
            total=len(step_counts),
            desc=f"adjoint {index + 1} of {len(names)}: {name}",
            unit="step count",
        )
        with bar:
            for num_steps in step_counts:
                adjoint = make_adjoint(num_steps)
                with_times = name != BACKSOLVE
                refused = None
                if not with_times:
                    refused = backsolve_refusal(
                        lambda: make_grad_fn(num_steps, solver, adjoint, True).lower(
                            params, static, y0, ys, ts
                        )
                    )
                fn = make_grad_fn(num_steps, solver, adjoint, with_times)
                with ticking(bar, f"{num_steps} steps: compiling"):
                    compiled = compiled_already.get((name, num_steps))
                    if compiled is None:
                        compiled = fn.lower(params, static, y0, ys, ts).compile()
                analysis = compiled.memory_analysis()
                assert analysis is not None  # XLA's CPU, GPU and TPU backends give one
                memory = analysis.temp_size_in_bytes
                with ticking(bar, f"{num_steps} steps: timing"):
                    # A compiled function takes the arguments that are not static.
                    _, grads = jax.block_until_ready(compiled(params, y0, ys, ts))
                    times = []
                    for _ in range(repeats):
                        t = time.perf_counter()
                        jax.block_until_ready(compiled(params, y0, ys, ts))
                        times.append(time.perf_counter() - t)
                if with_times:
                    grads, grad_ts = grads
                else:
                    grad_ts = None
                rows[name, num_steps] = dict(
                    memory=memory,
                    time=float(np.median(times)),
                    grads=flatten(grads),
                    grad_ts=grad_ts,
                    refused=None if with_times else refused,
                )
                done += 1
                elapsed = time.perf_counter() - start
                left = elapsed / done * (total - done)
                bar.set_postfix_str(f"{num_steps} steps done; ~{left:.0f}s left in all")
                bar.update()
    for (name, num_steps), row in rows.items():
        reference = rows[DEFAULT, num_steps]
        row["error"] = relative_error(row["grads"], reference["grads"])
        row["ts_error"] = (
            None
            if row["grad_ts"] is None
            else relative_error(row["grad_ts"], reference["grad_ts"])
        )
    return rows


BACKSOLVE_REFUSAL = (
    "diffrax's BacksolveAdjoint cannot differentiate the save times SaveAt(ts) "
    "(it raises while tracing; ReversibleAdjoint and RecursiveCheckpointAdjoint can)"
)


def backsolve_refusal(lower):
    """Why `BacksolveAdjoint` refuses the gradient with respect to the save times,
    which `lower()` traces, in our words: diffrax raises equinox's "Unexpected
    tangent" while tracing, before anything is compiled. `None` if it does not."""
    try:
        lower()
    except RuntimeError as error:
        if "tangent" not in str(error):
            raise
        return BACKSOLVE_REFUSAL
    return None


def flatten(tree):
    return jnp.concatenate([x.ravel() for x in jax.tree_util.tree_leaves(tree)])


def relative_error(a, b):
    return float(jnp.linalg.norm(a - b) / jnp.linalg.norm(b))


def format_table(step_counts, rows, names=tuple(ADJOINTS)):
    lines = [
        "| steps | adjoint | memory (MiB) | vs ours | time (ms) | vs ours "
        "| params error | ts error |",
        "|---:|---|---:|---:|---:|---:|---:|---:|",
    ]
    for num_steps in step_counts:
        base = rows[OURS, num_steps]
        for name in names:
            row = rows[name, num_steps]
            if row["refused"]:
                ts_error = "refused"
            elif row["ts_error"] is None:
                ts_error = "-"
            else:
                ts_error = f"{row['ts_error']:.1e}"
            lines.append(
                f"| {num_steps} | {name} | {row['memory'] / 2**20:.2f} | "
                f"{row['memory'] / base['memory']:.1f}x | {row['time'] * 1e3:.1f} | "
                f"{row['time'] / base['time']:.2f}x | {row['error']:.1e} | {ts_error} |"
            )
    return "\n".join(lines)


def plot(path, losses, step_counts, rows, title, names=tuple(ADJOINTS)):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

    plt.rcParams.update({"font.size": 10, "legend.fontsize": 9})
    fig, axes = plt.subplots(2, 2, figsize=(13, 9), layout="constrained")
    ax = axes[0, 0]
    ax.semilogy(np.arange(1, len(losses) + 1), losses, color="C0", lw=1.2)
    ax.set(
        xlabel="training iteration",
        ylabel="training loss (mean squared error)",
        title="Training with ReversibleAdjoint",
    )
    ax.grid(True, which="both", alpha=0.3)

    plain = FuncFormatter(lambda value, _: f"{value:g}")
    panels = [
        (axes[0, 1], "memory", 2**-20, "compiled temp memory (MiB)", "Gradient memory"),
        (axes[1, 0], "time", 1e3, "median time of one gradient (ms)", "Gradient time"),
        (
            axes[1, 1],
            "error",
            1.0,
            "relative error vs RecursiveCheckpoint\n"
            f"(exactly 0: drawn at {ERROR_FLOOR:g})",
            "Parameter gradient: distance from RecursiveCheckpoint's",
        ),
    ]
    for ax, key, scale, ylabel, panel_title in panels:
        for name in names:
            if key == "error" and name == DEFAULT:
                continue  # the reference itself
            values = [rows[name, n][key] * scale for n in step_counts]
            if key == "error":
                values = [max(v, ERROR_FLOOR) for v in values]
            ax.loglog(step_counts, values, label=LABELS[name], ms=7, **STYLES[name])
        ax.set_xticks(step_counts, [f"{n:,d}" for n in step_counts])
        ax.xaxis.set_minor_formatter(NullFormatter())
        if key == "error":  # many decades: a tick per decade, room for the legend
            ax.set_ylim(ERROR_FLOOR / 10, 100)
            ax.yaxis.set_major_locator(LogLocator(base=10, numticks=8))
        else:  # 1, 2, 5 in every decade, written plainly
            ax.yaxis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
            ax.yaxis.set_major_formatter(plain)
        ax.yaxis.set_minor_formatter(NullFormatter())
        ax.set(xlabel="solver steps", ylabel=ylabel, title=panel_title)
        ax.grid(True, which="major", alpha=0.3)
        ax.legend(loc="upper right" if key == "error" else "upper left", framealpha=0.9)
    fig.suptitle(title, fontsize=11)
    fig.savefig(path, dpi=100)
    plt.close(fig)


#
# Flags.
#


def positive(kind):
    def parse(text):
        value = kind(text)
        if not value > 0:
            raise argparse.ArgumentTypeError(f"must be positive, got {text}")
        return value

    parse.__name__ = kind.__name__
    return parse


def make_parser():
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    int_ = positive(int)
    parser.add_argument(
        "--iterations", type=int_, default=400, help="training iterations (%(default)s)"
    )
    parser.add_argument(
        "--batch-size",
        type=int_,
        default=32,
        help="trajectories per batch (%(default)s)",
    )
    parser.add_argument(
        "--dataset-size", type=int_, default=256, help="trajectories (%(default)s)"
    )
    parser.add_argument(
        "--state-size",
        type=int_,
        default=64,
        help="dimension of the latent state z (%(default)s); the memory each adjoint "
        "needs per stored state grows with it",
    )
    parser.add_argument(
        "--width", type=int_, default=64, help="hidden width of the MLP (%(default)s)"
    )
    parser.add_argument(
        "--steps",
        type=int_,
        default=100,
        help="solver steps per solve in training (%(default)s)",
    )
    parser.add_argument(
        "--length",
        type=positive(float),
        default=10.0,
        help="time span of each trajectory (%(default)s)",
    )
    parser.add_argument(
        "--observations",
        type=int_,
        default=21,
        help="observation times per trajectory, SaveAt(ts) (%(default)s)",
    )
    parser.add_argument(
        "--solver", choices=list(SOLVERS), default="reversible_heun", help=SOLVER_HELP
    )
    parser.add_argument(
        "--learning-rate",
        type=positive(float),
        default=3e-3,
        help="Adam's learning rate (%(default)s)",
    )
    parser.add_argument(
        "--compare-steps",
        type=int_,
        nargs="+",
        default=[1000, 4000],
        help="step counts for the comparison of adjoints, besides --steps "
        "(%(default)s)",
    )
    parser.add_argument(
        "--adjoints",
        choices=list(FLAG_NAMES),
        nargs="+",
        default=list(FLAG_NAMES),
        help="adjoints compared: reversible = ReversibleAdjoint, checkpoint = "
        "RecursiveCheckpointAdjoint (the reference for the errors), checkpoint_all = "
        "the same storing every step (its memory grows with the steps), backsolve = "
        "BacksolveAdjoint (default: all)",
    )
    parser.add_argument(
        "--repeats",
        type=int_,
        default=3,
        help="timed calls per adjoint and step count (%(default)s)",
    )
    parser.add_argument(
        "--output-dir",
        default="outputs",
        help="where the figure and the table go (%(default)s)",
    )
    parser.add_argument(
        "--seed", type=int, default=0, help="for the data, model and batches (0)"
    )
    return parser


def main(argv=None):
    parser = make_parser()
    args = parser.parse_args(argv)
    devices = jax.devices()
    if args.batch_size > args.dataset_size:
        parser.error(
            f"--batch-size {args.batch_size} is larger than --dataset-size "
            f"{args.dataset_size}: a batch is drawn without replacement"
        )
    if args.batch_size % len(devices):
        parser.error(
            f"--batch-size must be a multiple of the number of devices "
            f"({len(devices)}), got {args.batch_size}"
        )
    if not {"reversible", "checkpoint"} <= set(args.adjoints):
        parser.error(
            "--adjoints must include reversible (the baseline of the ratios) and "
            "checkpoint (the reference of the errors)"
        )
    if args.observations < 2:
        parser.error("--observations must be at least 2 (the first is t0)")
    output_dir = pathlib.Path(args.output_dir)
    if output_dir.exists() and not output_dir.is_dir():
        parser.error(f"--output-dir {output_dir} exists and is not a folder")

    wall = time.perf_counter()
    print(
        f"devices: {len(devices)} x {devices[0].device_kind}; solver {args.solver}; "
        f"state {args.state_size}, MLP width {args.width}, batch {args.batch_size}"
    )
    data_key, model_key, loader_key = jr.split(jr.PRNGKey(args.seed), 3)
    ts = jnp.linspace(0.0, args.length, args.observations)
    batch_spec, replicated = batch_sharding()
    solver = SOLVERS[args.solver]()

    with progress(total=1, desc="[1/3] data", unit="set") as bar:
        with ticking(bar, f"solving {args.dataset_size} trajectories"):
            y0_all, ys_all = jax.block_until_ready(
                make_dataset(data_key, args.dataset_size, ts)
            )
        bar.update()

    model = NeuralODE(model_key, args.state_size, args.width)
    params, static = eqx.partition(model, eqx.is_array)
    params = shard(params, replicated)
    # With the gradient with respect to the save times too, which training ignores,
    # so that the comparison of adjoints can reuse it.
    grad_fn = make_grad_fn(args.steps, solver, ra.ReversibleAdjoint(), True)
    optimiser = optax.adam(args.learning_rate)
    opt_state = optimiser.init(params)

    @jax.jit
    def update(params, opt_state, grads):
        updates, opt_state = optimiser.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state

    def batch(key):
        index = jr.choice(key, args.dataset_size, (args.batch_size,), replace=False)
        return shard((y0_all[index], ys_all[index]), batch_spec)

    losses = []
    bar = progress(total=args.iterations, desc="[2/3] training", unit="it")
    with bar:
        with ticking(bar, "compiling the gradient (ReversibleAdjoint)"):
            grad_fn = grad_fn.lower(params, static, *batch(loader_key), ts).compile()
        train_start = time.perf_counter()
        for iteration in range(args.iterations):
            key = jr.fold_in(loader_key, iteration)
            loss, (grads, _) = grad_fn(params, *batch(key), ts)  # `static` compiled in
            params, opt_state = update(params, opt_state, grads)
            losses.append(float(loss))
            bar.set_postfix_str(f"loss {losses[-1]:.5f}", refresh=False)
            bar.update()
    print(
        f"training: loss {losses[0]:.4f} -> {losses[-1]:.5f} in {args.iterations} "
        f"iterations, {time.perf_counter() - train_start:.1f}s after compiling"
    )

    step_counts = sorted({args.steps, *args.compare_steps})
    print(
        f"[3/3] one gradient of the trained model per adjoint, at {step_counts} steps"
    )
    y0, ys = shard((y0_all[: args.batch_size], ys_all[: args.batch_size]), batch_spec)
    names = [name for flag, name in FLAG_NAMES.items() if flag in args.adjoints]
    rows = compare_adjoints(
        params,
        static,
        y0,
        ys,
        ts,
        step_counts,
        solver,
        args.repeats,
        names,
        {(OURS, args.steps): grad_fn},
    )
    table = format_table(step_counts, rows, names)
    columns = COLUMNS.format(
        train=args.steps, batch=args.batch_size, repeats=args.repeats
    )
    refused = [row["refused"] for (name, _), row in rows.items() if name == BACKSOLVE]
    notes = (
        f"refused: {refused[0] or 'BacksolveAdjoint differentiated SaveAt(ts) here'}"
        if refused
        else ""
    )
    print(f"\n{table}\n\n{columns}\n  {notes}\n")

    output_dir.mkdir(parents=True, exist_ok=True)
    title = (
        f"Latent neural ODE (state {args.state_size}, MLP width {args.width}, batch "
        f"{args.batch_size}, {ys_all.dtype}), {args.solver}, "
        f"{devices[0].platform.upper()} x {len(devices)}"
    )
    plot(output_dir / "train_neural_ode.png", losses, step_counts, rows, title, names)
    (output_dir / "train_neural_ode.md").write_text(
        f"{title}\n\n{table}\n\n{columns}\n  {notes}\n"
    )
    print(
        f"wrote {output_dir / 'train_neural_ode.png'} and "
        f"{output_dir / 'train_neural_ode.md'} ({time.perf_counter() - wall:.0f}s in "
        "all)"
    )
    return rows


if __name__ == "__main__":
    main()
