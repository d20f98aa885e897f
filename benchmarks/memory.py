"""Compiled temporary memory of a gradient through `diffeqsolve`, against the number of
steps, for `ReversibleAdjoint` and diffrax's adjoints.

Problem: a neural ODE, MLP vector field (width 128, depth 2), state batch 32 x 64,
float32, reversible Heun, constant steps. Memory is read exactly from the compiled
program (`memory_analysis().temp_size_in_bytes`); nothing is run.

    python benchmarks/memory.py [--steps 100 1000 10000]
"""

import argparse

import diffrax
import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr

import reversible_adjoint as ra


def temp_bytes(adjoint, num_steps, batch=32, size=64, width=128):
    mlp = eqx.nn.MLP(size, size, width, 2, activation=jnp.tanh, key=jr.PRNGKey(0))
    params, static = eqx.partition(mlp, eqx.is_array)
    term = diffrax.ODETerm(lambda t, y, model: jax.vmap(model)(y))
    y0 = jnp.ones((batch, size), dtype=jnp.float32)

    def loss(params, y0):
        sol = diffrax.diffeqsolve(
            term, ra.ReversibleHeun(), 0.0, 1.0, 1.0 / num_steps, y0,
            args=eqx.combine(params, static), adjoint=adjoint, max_steps=num_steps,
        )
        return jnp.sum(sol.ys**2)

    compiled = jax.jit(jax.grad(loss)).lower(params, y0).compile()
    return compiled.memory_analysis().temp_size_in_bytes


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, nargs="+", default=[100, 1000, 10_000])
    steps = parser.parse_args().steps
    adjoints = {
        "ReversibleAdjoint": lambda n: ra.ReversibleAdjoint(),
        "RecursiveCheckpointAdjoint()": lambda n: diffrax.RecursiveCheckpointAdjoint(),
        "RecursiveCheckpointAdjoint(checkpoints=max_steps)": lambda n: diffrax.RecursiveCheckpointAdjoint(checkpoints=n),
        "BacksolveAdjoint": lambda n: diffrax.BacksolveAdjoint(),
    }
    print(f"Compiled temp memory of the gradient (MiB), {jax.devices()[0].platform}")
    print()
    print("| adjoint | " + " | ".join(f"{n} steps" for n in steps) + " |")
    print("|---|" + "---:|" * len(steps))
    for name, make in adjoints.items():
        cells = [f"{temp_bytes(make(n), n) / 2**20:.2f}" for n in steps]
        print(f"| {name} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
