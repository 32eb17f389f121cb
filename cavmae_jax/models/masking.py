"""Random masking from explicit noise, exactly as the official `random_masking_*`.

The noise is an input, not drawn inside the model, so masking is reproducible and testable: the
train step draws it from its per-step RNG (`unstructured_noise`, `structured_noise`) and the
parity tests feed the official run's noise.

Rule: `ids_shuffle = argsort(noise)` (ascending: small noise is kept), the first
`len_keep = int(L * (1 - ratio))` ids are kept in that order, `ids_restore = argsort(ids_shuffle)`
and `mask = ids_restore >= len_keep` (1 = removed).
"""

from typing import NamedTuple

import jax
import jax.numpy as jnp

STRUCTURED_MODES = ("time", "freq", "tf")


class Masked(NamedTuple):
    tokens: jax.Array  # [B, len_keep, D] kept tokens, ordered by increasing noise
    mask: jax.Array  # [B, L] float32, 1 = removed
    ids_restore: jax.Array  # [B, L] int32


def num_kept(length: int, ratio: float) -> int:
    """Tokens kept at `ratio`, with the official Python float arithmetic."""
    if not 0.0 <= ratio < 1.0:
        raise ValueError(f"mask ratio must be in [0, 1), got {ratio}")
    return int(length * (1 - ratio))


def mask_tokens(x: jax.Array, noise: jax.Array, ratio: float) -> Masked:
    """Keep the `num_kept` tokens of x with the smallest noise.  x: [B, L, D], noise: [B, L]."""
    b, length, _ = x.shape
    if noise.shape != (b, length):
        raise ValueError(f"noise must have shape {(b, length)}, got {noise.shape}")
    len_keep = num_kept(length, ratio)
    ids_shuffle = jnp.argsort(noise, axis=1, stable=True).astype(jnp.int32)  # [B, L]
    ids_restore = jnp.argsort(ids_shuffle, axis=1, stable=True).astype(jnp.int32)  # [B, L]
    ids_keep = ids_shuffle[:, :len_keep]
    kept = jnp.take_along_axis(x, ids_keep[:, :, None], axis=1)  # [B, len_keep, D]
    mask = (ids_restore >= len_keep).astype(jnp.float32)
    return Masked(kept, mask, ids_restore)


def unshuffle(visible: jax.Array, mask_token: jax.Array, ids_restore: jax.Array) -> jax.Array:
    """Append mask tokens after the visible ones and restore the original token order.

    visible: [B, len_keep, D]; mask_token: [1, 1, D]; ids_restore: [B, L] -> [B, L, D].
    """
    b, len_keep, d = visible.shape
    length = ids_restore.shape[1]
    fill = jnp.broadcast_to(mask_token.astype(visible.dtype), (b, length - len_keep, d))
    full = jnp.concatenate([visible, fill], axis=1)
    return jnp.take_along_axis(full, ids_restore[:, :, None], axis=1)


def unstructured_noise(rng: jax.Array, batch: int, length: int) -> jax.Array:
    """U[0, 1) noise of shape [B, L]: every token equally likely to be masked."""
    return jax.random.uniform(rng, (batch, length), jnp.float32)


def structured_noise(rng: jax.Array, batch: int, freq_patches: int, time_patches: int,
                     ratio: float, mode: str) -> jax.Array:
    """Noise that removes whole time columns and/or frequency rows of the audio patch grid.

    Like the official `random_masking_structured` (there hard-coded to an 8 x 64 grid), chosen
    columns/rows get noise 1.1 so they sort last and are removed first: `time` masks
    int(t*ratio) columns, `freq` int(f*ratio) rows, `tf` int(t*ratio*0.7) columns and
    int(f*ratio*0.7) rows. Returns [B, f*t] in the frequency-major token order.
    """
    if mode not in STRUCTURED_MODES:
        raise ValueError(f"structured mask mode must be one of {STRUCTURED_MODES}, got {mode!r}")
    f, t = freq_patches, time_patches
    k_base, k_t, k_f = jax.random.split(rng, 3)
    noise = jax.random.uniform(k_base, (batch, f, t), jnp.float32)

    def pick(key, n, count):  # [B, n] bool with exactly `count` True per row, uniformly chosen
        ranks = jnp.argsort(jnp.argsort(jax.random.uniform(key, (batch, n)), axis=1), axis=1)
        return ranks < count

    if mode == "time":
        n_t, n_f = int(t * ratio), 0
    elif mode == "freq":
        n_t, n_f = 0, int(f * ratio)
    else:
        n_t, n_f = int(t * ratio * 0.7), int(f * ratio * 0.7)
    cols = pick(k_t, t, n_t)[:, None, :]  # [B, 1, t]
    rows = pick(k_f, f, n_f)[:, :, None]  # [B, f, 1]
    noise = jnp.where(cols | rows, 1.1, noise)
    return noise.reshape(batch, f * t)
