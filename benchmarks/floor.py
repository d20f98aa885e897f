"""How close `ReversibleAdjoint` comes to the cheapest exact reverse pass.

    python benchmarks/floor.py [--steps 2000]

On the MLP neural ODE of `adjoints.py` (`_common.make_problem`; float32, constant
steps), times in one round-robin run: the forward solve; `ReversibleAdjoint` with
reversible Heun; a reference written directly in JAX that does only what any exact
O(1)-memory reverse pass of reversible Heun must do (one `lax.fori_loop` forward; one
backward, each step reconstructing the state and making one `jax.vjp` of the vector
field, used for the reconstruction and the pullback alike); and diffrax's
`RecursiveCheckpointAdjoint`, default and storing every step. The reference's gradient
is checked against `ReversibleAdjoint`'s before anything is timed.

Per step, the backward pass costs one linearisation of the vector field and one
transpose, about three forward evaluations of an MLP's matrix products, on top of the
forward pass's one: a floor near 4x the forward time, whatever the loop around it.
"""

import argparse

import diffrax
import equinox as eqx
import jax
import jax.numpy as jnp
from _common import make_problem, relative_error, round_robin

import reversible_adjoint as ra


def reference_gradient(params, static, y0, num_steps, dt):
    """Gradient of `mean(y(1)**2)` through reversible Heun, written out by hand."""
    f = lambda p, y: jax.vmap(eqx.combine(p, static))(y)

    def forward(p, y):
        def step(_, c):
            y, z, v = c
            z1 = 2 * y - z + v * dt
            v1 = f(p, z1)
            return y + 0.5 * dt * (v + v1), z1, v1

        return jax.lax.fori_loop(0, num_steps, step, (y, y, f(p, y)))

    @jax.custom_vjp
    def solve(p, y):
        return forward(p, y)[0]

    def solve_fwd(p, y):
        out = forward(p, y)
        return out[0], (p, out)

    def solve_bwd(residuals, ct_y):
        p, (y, z, v) = residuals
        # The last step's evaluation v = f(z) enters y with weight dt/2.
        ct_p, ct_z = jax.vjp(f, p, z)[1](0.5 * dt * ct_y)

        def step(i, c):
            y1, z1, v1, ct_y1, ct_z1, ct_p = c
            z0 = 2 * y1 - z1 - v1 * dt  # reconstruct...
            v0, pullback = jax.vjp(f, p, z0)  # ...with the one linearisation
            y0 = y1 - 0.5 * dt * (v0 + v1)
            ct_y0 = ct_y1 + 2 * ct_z1
            ct_v0 = 0.5 * dt * ct_y1 + dt * ct_z1
            # v0 = f(z0) was the previous step's evaluation, entering its y1 with
            # weight dt/2 (for the first step it came from `init`, whose y0 is z0).
            ct_v0 = ct_v0 + jnp.where(i < num_steps - 1, 0.5 * dt, 0.0) * ct_y0
            c_p, c_z = pullback(ct_v0)
            return y0, z0, v0, ct_y0, -ct_z1 + c_z, jax.tree.map(jnp.add, ct_p, c_p)

        c = jax.lax.fori_loop(0, num_steps, step, (y, z, v, ct_y, ct_z, ct_p))
        return c[5], c[3] + c[4]

    solve.defvjp(solve_fwd, solve_bwd)
    return jax.grad(lambda p, y: jnp.mean(solve(p, y) ** 2))


def main(argv=None):
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--steps", type=int, default=2000)
    parser.add_argument("--repeats", type=int, default=9)
    options = parser.parse_args(argv)
    num_steps = options.steps
    params, static, terms, y0 = make_problem("mlp", jnp.float32)
    t0, t1 = jnp.float32(0.0), jnp.float32(1.0)
    dt = (t1 - t0) / num_steps

    def loss(p, y, adjoint):
        sol = diffrax.diffeqsolve(
            terms,
            ra.ReversibleHeun(),
            t0,
            t1,
            dt,
            y,
            args=eqx.combine(p, static),
            adjoint=adjoint,
            max_steps=num_steps,
        )
        return jnp.mean(sol.ys**2)

    fns = {
        "forward": lambda p, y: loss(p, y, diffrax.RecursiveCheckpointAdjoint()),
        "ReversibleAdjoint": jax.grad(lambda p, y: loss(p, y, ra.ReversibleAdjoint())),
        "hand-written reference": reference_gradient(params, static, y0, num_steps, dt),
        "RecursiveCheckpointAdjoint": jax.grad(
            lambda p, y: loss(p, y, diffrax.RecursiveCheckpointAdjoint())
        ),
        "RecursiveCheckpointAdjoint(checkpoints=max_steps)": jax.grad(
            lambda p, y: loss(
                p, y, diffrax.RecursiveCheckpointAdjoint(checkpoints=num_steps)
            )
        ),
    }
    compiled = {
        name: jax.jit(fn).lower(params, y0).compile() for name, fn in fns.items()
    }
    error = relative_error(
        compiled["hand-written reference"](params, y0),
        compiled["ReversibleAdjoint"](params, y0),
    )
    print(
        "reference vs ReversibleAdjoint gradient, relative error (float32): "
        f"{error:.1e}"
    )
    assert error < 1e-5, "the reference computes a different gradient"
    times = round_robin(compiled, (params, y0), options.repeats)
    default = times["RecursiveCheckpointAdjoint"]
    store_all = times["RecursiveCheckpointAdjoint(checkpoints=max_steps)"]
    print(f"\nreversible Heun, {num_steps} steps, medians of {options.repeats}\n")
    print("| method | time (ms) | / forward | / RCA default | / RCA store-all |")
    print("|---|---:|---:|---:|---:|")
    for name, t in times.items():
        print(
            f"| {name} | {t * 1e3:.1f} | {t / times['forward']:.2f} | "
            f"{t / default:.2f} | {t / store_all:.2f} |"
        )
    reference = times["hand-written reference"]
    print(
        f"\nThe reference runs at {reference / times['forward']:.2f}x the forward "
        f"pass: {reference / default:.2f}x diffrax's default and "
        f"{reference / store_all:.2f}x storing every step."
    )


if __name__ == "__main__":
    main()
