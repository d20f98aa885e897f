"""What computing a known step grid costs, against recording every step time.

With `ConstantStepSize` (or `StepTo`), `ReversibleAdjoint` does not record the time of
every step: the backward pass computes each one from the step count, with one call of
the step size controller (`PredictedRecord`). This measures, in one run, the
gradient's time and compiled memory both ways (recording is forced by treating the
grid as unknown), without checkpoints, on a two-component oscillator and on the MLP
neural ODE of `benchmarks/adjoints.py`'s size, with `t1` differentiated or not.

    python benchmarks/grid.py
"""

import argparse

import diffrax
import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
from _common import round_robin, temp_bytes

import reversible_adjoint as ra
import reversible_adjoint._adjoint as adjoint_module

jax.config.update("jax_enable_x64", True)


def _problem(name):
    if name == "oscillator":
        term = diffrax.ODETerm(lambda t, y, args: args * jnp.stack([y[1], -y[0]]))
        return term, jnp.array([1.0, 0.0]), jnp.array(2.0), None
    mlp = eqx.nn.MLP(16, 16, 32, 2, activation=jnp.tanh, key=jr.PRNGKey(0))
    params, static = eqx.partition(mlp, eqx.is_array)
    term = diffrax.ODETerm(lambda t, y, mlp: jax.vmap(mlp)(y))
    return term, jnp.ones((8, 16)), params, static


def _measure(problem, num_steps, with_t1, repeats):
    term, y0, params, static = _problem(problem)

    def loss(y0, params, t1):
        args = params if static is None else eqx.combine(params, static)
        sol = diffrax.diffeqsolve(
            term,
            ra.ReversibleHeun(),
            0.0,
            t1,
            1.0 / num_steps,
            y0,
            args,
            adjoint=ra.ReversibleAdjoint(),
            max_steps=num_steps,
        )
        return jnp.sum(sol.ys**2)

    argnums = (0, 1, 2) if with_t1 else (0, 1)
    inputs = (y0, params, jnp.array(1.0))
    grad = jax.jit(jax.grad(loss, argnums)).lower(*inputs).compile()
    return round_robin({"grad": grad}, inputs, repeats)["grad"], temp_bytes(grad)


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--steps", type=int, default=2000)
    parser.add_argument("--repeats", type=int, default=21)
    options = parser.parse_args()
    predicts_grid = adjoint_module._predicts_grid

    def record_every_time(controller, controller_state, static):
        return False

    print(
        f"{options.steps} constant steps of reversible Heun, no checkpoints; median of "
        f"{options.repeats} gradients.\n"
    )
    print(
        "| problem | t1 differentiated | compute / record (time) | "
        "record (ms) | compute (ms) | record (KB) | compute (KB) |"
    )
    print("|---|---|---:|---:|---:|---:|---:|")
    for problem in ("oscillator", "mlp"):
        for with_t1 in (False, True):
            results = {}
            # Alternate the two, to share the machine's noise.
            for variant in ("record", "compute", "record", "compute"):
                patched = record_every_time if variant == "record" else predicts_grid
                adjoint_module._predicts_grid = patched
                jax.clear_caches()
                seconds, memory = _measure(
                    problem, options.steps, with_t1, options.repeats
                )
                best = results.get(variant, (float("inf"), memory))[0]
                results[variant] = (min(best, seconds), memory)
            adjoint_module._predicts_grid = predicts_grid
            (t_rec, m_rec), (t_co, m_co) = results["record"], results["compute"]
            print(
                f"| {problem} | {with_t1} | {t_co / t_rec:.2f} | {1e3 * t_rec:.2f} | "
                f"{1e3 * t_co:.2f} | {m_rec / 1e3:.1f} | {m_co / 1e3:.1f} |"
            )


if __name__ == "__main__":
    main()
