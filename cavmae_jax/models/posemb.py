"""Fixed 2-D sin-cos positional tables, as the official models build them.

For a grid of `grid_h` rows and `grid_w` columns, token k (row-major: r = k // grid_w,
c = k % grid_w) gets `[sin(c*w), cos(c*w), sin(r*w), cos(r*w)]` with `w_i = 10000^(-i/(D/4))`.
The first half of the vector therefore encodes the column (time, for audio), the second half the
row (frequency, for audio).

The official CAV-MAE computes the frequencies in float64 and CAV-MAE Sync in float32; the tables
differ by ~1e-6. We compute in float64 and cast; when converting a checkpoint, its own tables are
used (see `cavmae_jax.convert`).
"""

import numpy as np


def _sincos_1d(dim: int, positions: np.ndarray) -> np.ndarray:
    """[len(positions), dim] table of sin (first half) and cos (second half)."""
    omega = np.arange(dim // 2, dtype=np.float64) / (dim / 2.0)
    omega = 1.0 / 10000**omega  # [dim/2]
    angles = np.einsum("m,d->md", positions.reshape(-1).astype(np.float64), omega)
    return np.concatenate([np.sin(angles), np.cos(angles)], axis=1)


def sincos_2d(dim: int, grid_h: int, grid_w: int) -> np.ndarray:
    """Fixed table of shape [1, grid_h * grid_w, dim] (float32), row-major tokens."""
    if dim % 4:
        raise ValueError(f"sin-cos positional tables need embed_dim % 4 == 0, got {dim}")
    rows, cols = np.meshgrid(np.arange(grid_h), np.arange(grid_w), indexing="ij")
    emb_col = _sincos_1d(dim // 2, cols)  # [H*W, D/2]
    emb_row = _sincos_1d(dim // 2, rows)  # [H*W, D/2]
    return np.concatenate([emb_col, emb_row], axis=1)[None].astype(np.float32)
