"""Compiled temporary memory of a gradient through `diffeqsolve`, against the number of
steps, for `ReversibleAdjoint` and diffrax's adjoints.

Problems: a neural ODE, MLP vector field (width 128, depth 2), state batch 32 x 64;
or a neural SDE, MLP drift and diagonal diffusion (width 128), batch 32 x 64, on a
`VirtualBrownianTree`. Float32, reversible Heun, constant steps. Memory is read exactly
from the compiled program (`memory_analysis().temp_size_in_bytes`); nothing is run.

    python benchmarks/memory.py [--problem ode|sde] [--steps 100 1000 10000]
"""

import argparse

import diffrax
import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
import lineax as lx

import reversible_adjoint as ra


def _terms(problem, batch, size, width):
    keys = jr.split(jr.PRNGKey(0), 3)
    drift = eqx.nn.MLP(size, size, width, 2, activation=jnp.tanh, key=keys[0])
    if problem == "ode":
        model = drift
        terms = diffrax.ODETerm(lambda t, y, model: jax.vmap(model)(y))
    else:
        # Diagonal noise on the flattened state, as a lineax operator.
        diffusion = eqx.nn.MLP(size, size, width, 1, activation=jnp.tanh, key=keys[1])
        model = (drift, diffusion)
        batched = lambda f, y: jax.vmap(f)(y.reshape(batch, size)).ravel()
        bm = diffrax.VirtualBrownianTree(
            0.0, 1.0, tol=1e-3, shape=(batch * size,), key=keys[2]
        )
        terms = diffrax.MultiTerm(
            diffrax.ODETerm(lambda t, y, model: batched(model[0], y)),
            diffrax.ControlTerm(
                lambda t, y, model: lx.DiagonalLinearOperator(
                    0.1 * batched(model[1], y)
                ),
                bm,
            ),
        )
    return model, terms


def temp_bytes(adjoint, num_steps, problem="ode", batch=32, size=64, width=128):
    model, terms = _terms(problem, batch, size, width)
    params, static = eqx.partition(model, eqx.is_array)
    y0 = jnp.ones((batch, size) if problem == "ode" else (batch * size,), jnp.float32)

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

    compiled = jax.jit(jax.grad(loss)).lower(params, y0).compile()
    return compiled.memory_analysis().temp_size_in_bytes


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
            f"{temp_bytes(make(n), n, options.problem) / 2**20:.2f}" for n in steps
        ]
        print(f"| {name} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
