"""Train a neural ODE at O(1) memory with `ReversibleAdjoint`, then compare gradient
memory and time against diffrax's own adjoints on the same model.

The data are trajectories of damped nonlinear oscillators, generated here with a
high-order solver. The model is `dy/dt = MLP(y)`, solved with reversible Heun at a fixed
number of steps, and trained by least squares on the observed trajectories. The batch
is sharded over every visible device (`jax.sharding`), so the same script runs on one
CPU, several GPUs, or a TPU slice.

    python examples/train_neural_ode.py                # default: about a minute on CPU
    python examples/train_neural_ode.py --iterations 2000 --batch-size 128 --steps 400

Writes `train_neural_ode.png` (loss curve and the adjoint comparison) next to where it
is run, or to `--output`.
"""

import argparse
import time

import diffrax
import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
import optax
from jax.sharding import Mesh, NamedSharding, PartitionSpec

import reversible_adjoint as ra

SOLVERS = {"reversible_heun": ra.ReversibleHeun}


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
    return y0, jnp.moveaxis(sol.ys, 0, 1)  # (size, len(ts), 2)


#
# Model.
#


class NeuralODE(eqx.Module):
    mlp: eqx.nn.MLP

    def __init__(self, key, width=64, depth=2):
        self.mlp = eqx.nn.MLP(2, 2, width, depth, activation=jnp.tanh, key=key)

    def __call__(self, t, y, args):
        return self.mlp(y)


def predict(model, y0, ts, num_steps, solver, adjoint):
    sol = diffrax.diffeqsolve(
        diffrax.ODETerm(model),
        solver,
        ts[0],
        ts[-1],
        (ts[-1] - ts[0]) / num_steps,
        y0,
        saveat=diffrax.SaveAt(ts=ts),
        adjoint=adjoint,
        max_steps=num_steps,
    )
    return sol.ys


def loss_fn(model, y0, ys, ts, num_steps, solver, adjoint):
    pred = jax.vmap(predict, in_axes=(None, 0, None, None, None, None))(
        model, y0, ts, num_steps, solver, adjoint
    )
    return jnp.mean((pred - ys) ** 2)


def make_grad_fn(num_steps, solver, adjoint):
    """`grad(params, y0, ys, ts)`, jitted, with the model split into arrays and
    structure so that it can also be lowered and its memory read."""

    def grad(params, static, y0, ys, ts):
        model = eqx.combine(params, static)
        return eqx.filter_value_and_grad(loss_fn)(
            model, y0, ys, ts, num_steps, solver, adjoint
        )

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
# Comparison of adjoints.
#


ADJOINTS = {
    "ReversibleAdjoint": lambda n: ra.ReversibleAdjoint(),
    "RecursiveCheckpointAdjoint": lambda n: diffrax.RecursiveCheckpointAdjoint(),
    "RecursiveCheckpointAdjoint(checkpoints=max_steps)": lambda n: (
        diffrax.RecursiveCheckpointAdjoint(checkpoints=n)
    ),
    "BacksolveAdjoint": lambda n: diffrax.BacksolveAdjoint(),
}


def compare_adjoints(params, static, y0, ys, ts, num_steps, solver, repeats):
    """Compiled temp memory, median gradient time, and gradient error against
    `RecursiveCheckpointAdjoint`, for each adjoint, on one batch."""
    rows = {}
    for name, make_adjoint in ADJOINTS.items():
        fn = make_grad_fn(num_steps, solver, make_adjoint(num_steps))
        compiled = fn.lower(params, static, y0, ys, ts).compile()
        memory = compiled.memory_analysis().temp_size_in_bytes
        _, grads = jax.block_until_ready(fn(params, static, y0, ys, ts))
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            jax.block_until_ready(fn(params, static, y0, ys, ts))
            times.append(time.perf_counter() - start)
        flat = jnp.concatenate([g.ravel() for g in jax.tree_util.tree_leaves(grads)])
        rows[name] = dict(memory=memory, time=float(np.median(times)), grads=flat)
    reference = rows["RecursiveCheckpointAdjoint"]["grads"]
    for row in rows.values():
        row["error"] = float(
            jnp.linalg.norm(row["grads"] - reference) / jnp.linalg.norm(reference)
        )
    return rows


def print_table(step_counts, tables):
    print(
        "| steps | adjoint | temp memory (MiB) | vs ours | median time (ms) | vs ours "
        "| gradient error |"
    )
    print("|---:|---|---:|---:|---:|---:|---:|")
    for num_steps, rows in zip(step_counts, tables):
        base = rows["ReversibleAdjoint"]
        for name, row in rows.items():
            print(
                f"| {num_steps} | {name} | {row['memory'] / 2**20:.2f} | "
                f"{row['memory'] / base['memory']:.1f}x | {row['time'] * 1e3:.1f} | "
                f"{row['time'] / base['time']:.2f}x | {row['error']:.1e} |"
            )


def plot(path, losses, step_counts, tables):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(15, 4.2))
    axes[0].semilogy(losses)
    axes[0].set_xlabel("iteration")
    axes[0].set_ylabel("training loss (MSE)")
    axes[0].set_title("Training with ReversibleAdjoint")
    for name in ADJOINTS:
        memory = [rows[name]["memory"] / 2**20 for rows in tables]
        times = [rows[name]["time"] * 1e3 for rows in tables]
        axes[1].loglog(step_counts, memory, "o-", label=name)
        axes[2].loglog(step_counts, times, "o-", label=name)
    for ax in axes[1:]:
        ax.set_xticks(step_counts, [str(n) for n in step_counts])
        ax.minorticks_off()
    axes[1].set_xlabel("solver steps")
    axes[1].set_ylabel("compiled temp memory (MiB)")
    axes[1].set_title("Gradient memory")
    axes[2].set_xlabel("solver steps")
    axes[2].set_ylabel("median gradient time (ms)")
    axes[2].set_title("Gradient time")
    axes[2].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=100)


def main(argv=None):
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--iterations", type=int, default=600)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--dataset-size", type=int, default=256)
    parser.add_argument("--steps", type=int, default=200, help="solver steps per solve")
    parser.add_argument(
        "--length", type=float, default=10.0, help="time span of each trajectory"
    )
    parser.add_argument("--solver", choices=list(SOLVERS), default="reversible_heun")
    parser.add_argument("--learning-rate", type=float, default=3e-3)
    parser.add_argument(
        "--repeats", type=int, default=5, help="timing repeats per adjoint"
    )
    parser.add_argument(
        "--compare-steps",
        type=int,
        nargs="+",
        default=[1000, 5000],
        help="step counts for the comparison of adjoints (besides --steps)",
    )
    parser.add_argument("--output", default="train_neural_ode.png")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    devices = jax.devices()
    if args.batch_size % len(devices):
        parser.error(
            f"--batch-size must be a multiple of the number of devices ({len(devices)})"
        )
    print(f"devices: {len(devices)} x {devices[0].device_kind}")
    data_key, model_key, loader_key = jr.split(jr.PRNGKey(args.seed), 3)
    ts = jnp.linspace(0.0, args.length, 21)
    y0_all, ys_all = make_dataset(data_key, args.dataset_size, ts)
    model = NeuralODE(model_key)
    params, static = eqx.partition(model, eqx.is_array)
    batch_spec, replicated = batch_sharding()
    params = shard(params, replicated)

    solver = SOLVERS[args.solver]()
    grad_fn = make_grad_fn(args.steps, solver, ra.ReversibleAdjoint())
    optimiser = optax.adam(args.learning_rate)
    opt_state = optimiser.init(params)

    @jax.jit
    def update(params, opt_state, grads):
        updates, opt_state = optimiser.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state

    losses = []
    start = time.perf_counter()
    for iteration in range(args.iterations):
        loader_key, key = jr.split(loader_key)
        index = jr.choice(key, args.dataset_size, (args.batch_size,), replace=False)
        y0, ys = shard((y0_all[index], ys_all[index]), batch_spec)
        loss, grads = grad_fn(params, static, y0, ys, ts)
        params, opt_state = update(params, opt_state, grads)
        losses.append(float(loss))
        if (
            iteration % max(1, args.iterations // 20) == 0
            or iteration == args.iterations - 1
        ):
            print(
                f"iteration {iteration:5d}  loss {losses[-1]:.5f}  "
                f"({time.perf_counter() - start:.1f}s)",
                flush=True,
            )
    print(
        f"final loss {losses[-1]:.5f} after {args.iterations} iterations, "
        f"{time.perf_counter() - start:.1f}s"
    )

    step_counts = sorted({args.steps, *args.compare_steps})
    print(
        f"\nOne gradient of the trained model (batch {args.batch_size}, "
        f"{args.solver}), per adjoint. Gradient error: relative to "
        "RecursiveCheckpointAdjoint."
    )
    y0, ys = shard((y0_all[: args.batch_size], ys_all[: args.batch_size]), batch_spec)
    tables = [
        compare_adjoints(params, static, y0, ys, ts, n, solver, args.repeats)
        for n in step_counts
    ]
    print_table(step_counts, tables)
    plot(args.output, losses, step_counts, tables)
    print(f"\nwrote {args.output}")


if __name__ == "__main__":
    main()
