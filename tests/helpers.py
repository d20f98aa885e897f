"""Shared problems and comparisons for the tests."""

import diffrax
import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
import jax.tree_util as jtu


class Field(eqx.Module):
    """A time-dependent vector field on a pytree state, with a parameter inside the
    term (`W`) and parameters in `args`."""

    W: jax.Array

    def __call__(self, t, y, args):
        a, b = args
        x, v = y["x"], y["v"]
        return {
            "x": v + jnp.sin(t) * jnp.tanh(self.W @ x),
            "v": -a * x - b * jnp.cos(t) * v,
        }


def make_problem(dtype=jnp.float64):
    W = jnp.array([[0.3, -0.8], [0.5, 0.2]], dtype=dtype)
    y0 = {"x": jnp.array([1.0, 0.5], dtype=dtype), "v": jnp.array([0.3, -0.2], dtype=dtype)}
    args = (jnp.array(0.7, dtype=dtype), jnp.array(0.4, dtype=dtype))
    return diffrax.ODETerm(Field(W)), y0, args


def readout(ys):
    """A nonlinear scalar loss of the saved values (every leaf, every entry)."""
    leaves = jtu.tree_leaves(ys)
    return sum(jnp.sum(jnp.sin(1.0 + 0.1 * jnp.arange(l.size).reshape(l.shape)) * l**2) for l in leaves)


def max_relative_error(got, want):
    """Largest, over leaves, of max|got - want| / max|want|. Leaves where `want` is
    zero are compared absolutely."""
    errors = []
    for g, w in zip(jtu.tree_leaves(got), jtu.tree_leaves(want), strict=True):
        scale = jnp.max(jnp.abs(w))
        diff = jnp.max(jnp.abs(g - w))
        errors.append(float(diff / scale) if scale > 0 else float(diff))
    return max(errors)


def assert_nonzero(tree):
    for leaf in jtu.tree_leaves(tree):
        assert jnp.max(jnp.abs(leaf)) > 0, "reference gradient is zero: test is vacuous"


def mlp_term(key, size=3, dtype=jnp.float64):
    mlp = eqx.nn.MLP(size + 1, size, width_size=8, depth=2, activation=jnp.tanh, key=key, dtype=dtype)

    class MLPField(eqx.Module):
        mlp: eqx.nn.MLP

        def __call__(self, t, y, args):
            return args * self.mlp(jnp.concatenate([jnp.atleast_1d(t), y]))

    return diffrax.ODETerm(MLPField(mlp))


def random_key(seed=0):
    return jr.PRNGKey(seed)
