"""Compiled temporary memory of a gradient through `diffeqsolve`, against the number of
steps, for `ReversibleAdjoint` and diffrax's adjoints.

Problems (`_common.make_problem`, as in `adjoints.py`): a neural ODE, MLP vector field
(width 128, depth 2), state batch 32 x 64; or a neural SDE, MLP drift and diagonal
diffusion (width 128), batch 32 x 64, on a `VirtualBrownianTree`. Float32, reversible
Heun, constant steps. Memory is read exactly from the compiled program
(`memory_analysis().temp_size_in_bytes`); nothing is run.

    python benchmarks/memory.py [--problem ode|sde] [--steps 100 1000 10000]
"""

import argparse

import diffrax
import equinox as eqx
import jax
import jax.numpy as jnp
from _common import make_problem, temp_bytes

import reversible_adjoint as ra


def temp_bytes_of_gradient(adjoint, num_steps, problem="ode"):
    """Compiled temporary memory of the gradient of `sum(y(1) ** 2)` with respect to
    the model's parameters, through `num_steps` constant steps of reversible Heun."""
    params, static, terms, y0 = make_problem(
        "mlp" if problem == "ode" else "sde", jnp.float32
    )

    def loss(params, y0):
        sol = diffrax.diffeqsolve(
            terms,
            ra.ReversibleHeun(),
            0.0,
            1.0,
            1.0 / num_steps,
            y0,
            args=eqx.combine(params, static),
            adjoint=adjoint,
            max_steps=num_steps,
        )
        return jnp.sum(sol.ys**2)

    return temp_bytes(jax.jit(jax.grad(loss)).lower(params, y0).compile())


def main():
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--problem", choices=["ode", "sde"], default="ode")
    parser.add_argument("--steps", type=int, nargs="+", default=[100, 1000, 10_000])
    options = parser.parse_args()
    steps = options.steps
    adjoints = {
        "ReversibleAdjoint": lambda n: ra.ReversibleAdjoint(),
        "RecursiveCheckpointAdjoint()": lambda n: diffrax.RecursiveCheckpointAdjoint(),
        "RecursiveCheckpointAdjoint(checkpoints=max_steps)": lambda n: (
            diffrax.RecursiveCheckpointAdjoint(checkpoints=n)
        ),
        "BacksolveAdjoint": lambda n: diffrax.BacksolveAdjoint(),
    }
    print(
        "Compiled temp memory of the gradient (MiB), neural "
        f"{options.problem.upper()}, {jax.devices()[0].platform}"
    )
    print()
    print("| adjoint | " + " | ".join(f"{n} steps" for n in steps) + " |")
    print("|---|" + "---:|" * len(steps))
    for name, make in adjoints.items():
        cells = [
            f"{temp_bytes_of_gradient(make(n), n, options.problem) / 2**20:.2f}"
            for n in steps
        ]
        print(f"| {name} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
