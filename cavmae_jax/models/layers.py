"""Transformer building blocks with the official CAV-MAE layout and numerics.

Every LayerNorm uses eps 1e-5 and the MLP uses exact (erf) GELU: the PyTorch defaults the
official code runs with, not Flax's (1e-6, tanh). Parameter names follow the official modules
(`attn.qkv`, `attn.proj`, `mlp.fc1`, `mlp.fc2`, `norm1`, `norm1_a`, ...), so checkpoint
conversion is a mechanical rename.
"""

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

Dtype = Any
LN_EPS = 1e-5
MODALITIES = (None, "a", "v")


def layer_norm(name: str, dtype: Dtype = jnp.float32) -> nn.LayerNorm:
    """LayerNorm with the official eps; scale 1 and bias 0 at init, params in float32."""
    return nn.LayerNorm(epsilon=LN_EPS, dtype=dtype, param_dtype=jnp.float32, name=name)


def dense(features: int, name: str, dtype: Dtype = jnp.float32) -> nn.Dense:
    """Linear layer with the official init (xavier-uniform weight, zero bias)."""
    return nn.Dense(features, dtype=dtype, param_dtype=jnp.float32,
                    kernel_init=nn.initializers.xavier_uniform(), name=name)


class Attention(nn.Module):
    """Multi-head self-attention with one fused qkv projection (timm 0.4.5 layout)."""

    num_heads: int
    dtype: Dtype = jnp.float32
    impl: str = "xla"  # "xla": `softmax_attention` below; "fused": jax.nn.dot_product_attention

    @nn.compact
    def __call__(self, x: jax.Array, num_queries: int | None = None) -> jax.Array:
        """[B, N, D] -> [B, N, D], or [B, Q, D] for the first Q = `num_queries` tokens only
        (they still attend to all N: the same values as the first Q rows of the full output)."""
        b, n, d = x.shape
        nq = n if num_queries is None else num_queries
        head_dim = d // self.num_heads
        qkv = dense(3 * d, "qkv", self.dtype)(x)
        # Rows [0:D], [D:2D], [2D:3D] of the torch weight are q, k, v; heads are contiguous.
        qkv = qkv.reshape(b, n, 3, self.num_heads, head_dim)
        scale = head_dim**-0.5
        if self.impl == "fused":
            q, k, v = qkv[:, :nq, 0], qkv[:, :, 1], qkv[:, :, 2]  # [B, Q|N, H, Dh]
            out = jax.nn.dot_product_attention(q, k, v, scale=scale)  # [B, Q, H, Dh]
        elif self.impl == "xla":
            q, k, v = jnp.transpose(qkv, (2, 0, 3, 1, 4))  # each [B, H, N, Dh]
            q = q[:, :, :nq]  # [B, H, Q, Dh]
            out = softmax_attention(q * jnp.asarray(scale, q.dtype), k, v)  # [B, H, Q, Dh]
            out = jnp.transpose(out, (0, 2, 1, 3))  # [B, Q, H, Dh]
        else:
            raise ValueError(f"unknown attention impl {self.impl!r}; use 'xla' or 'fused'")
        out = out.reshape(b, nq, d)
        return dense(d, "proj", self.dtype)(out)


@jax.custom_vjp
def softmax_attention(q: jax.Array, k: jax.Array, v: jax.Array) -> jax.Array:
    """softmax(q k^T) v over [B, H, N, Dh] inputs, with q already scaled.

    Written for few passes over the [B, H, N, N] scores, which dominate the decoder's attention
    (404 tokens) on CPU: the forward normalizes the [N, Dh] output instead of the [N, N] weights,
    and the hand-written backward keeps only the unnormalized exponentials and uses
    rowsum(P * dP) = rowsum(dO * O) (FlashAttention's identity), so it needs no softmax
    Jacobian pass. Same math as the official `(q @ k^T * scale).softmax(-1) @ v`; measured
    2.1x faster than autodiff through `jax.nn.softmax` for the small decoder's attention
    (fwd + bwd) and 1.1x for the encoders' (benchmarks/README.md). Softmax statistics are
    float32 whatever the compute dtype.
    """
    return _softmax_attention_fwd(q, k, v)[0]


def _softmax_attention_fwd(q, k, v):
    scores = jnp.einsum("bhqd,bhkd->bhqk", q, k).astype(jnp.float32)
    top = jax.lax.stop_gradient(scores.max(axis=-1, keepdims=True))
    exp = jnp.exp(scores - top).astype(v.dtype)  # [B, H, N, N] unnormalized weights
    denom = jnp.sum(exp, axis=-1, keepdims=True, dtype=jnp.float32)  # [B, H, N, 1]
    out = (jnp.einsum("bhqk,bhkd->bhqd", exp, v) / denom).astype(v.dtype)
    return out, (q, k, v, exp, denom, out)


def _softmax_attention_bwd(residuals, d_out):
    q, k, v, exp, denom, out = residuals
    d_out_scaled = (d_out / denom).astype(v.dtype)  # dO / l
    d_v = jnp.einsum("bhqk,bhqd->bhkd", exp, d_out_scaled)
    d_weights = jnp.einsum("bhqd,bhkd->bhqk", d_out_scaled, v)  # dP / l
    # rowsum(P * dP) = rowsum(dO * O), divided by l like dP above.
    delta = jnp.sum(d_out.astype(jnp.float32) * out, axis=-1, keepdims=True) / denom
    d_scores = (exp * (d_weights - delta)).astype(q.dtype)  # P * (dP - rowsum(P * dP))
    d_q = jnp.einsum("bhqk,bhkd->bhqd", d_scores, k)
    d_k = jnp.einsum("bhqk,bhqd->bhkd", d_scores, q)
    return d_q, d_k, d_v


softmax_attention.defvjp(_softmax_attention_fwd, _softmax_attention_bwd)


def gelu(x: jax.Array) -> jax.Array:
    """Exact GELU written as PyTorch computes it, x * 0.5 * (1 + erf(x / sqrt(2))).

    `nn.gelu(approximate=False)` goes through erfc, which XLA:CPU lowers to an exp-based
    polynomial: measured 6 % slower per tiny Sync train step on CPU (benchmarks/README.md).
    """
    return x * 0.5 * (1.0 + jax.lax.erf(x * 0.7071067811865476))


class Mlp(nn.Module):
    """Linear(D, ratio*D) -> exact GELU -> Linear(ratio*D, D)."""

    mlp_ratio: float = 4.0
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:  # [B, N, D] -> [B, N, D]
        d = x.shape[-1]
        x = dense(int(d * self.mlp_ratio), "fc1", self.dtype)(x)
        x = gelu(x)
        return dense(d, "fc2", self.dtype)(x)


class Block(nn.Module):
    """Pre-norm ViT block with three LayerNorm pairs sharing one attention and one MLP.

    `modality=None` uses the joint pair (`norm1`, `norm2`), `'a'` and `'v'` the modality pairs.
    All three pairs always exist, as in the official Block, so checkpoints round-trip.
    """

    num_heads: int
    mlp_ratio: float = 4.0
    dtype: Dtype = jnp.float32
    attention_impl: str = "xla"

    def setup(self):
        self.norm1 = layer_norm("norm1", self.dtype)
        self.norm1_a = layer_norm("norm1_a", self.dtype)
        self.norm1_v = layer_norm("norm1_v", self.dtype)
        self.norm2 = layer_norm("norm2", self.dtype)
        self.norm2_a = layer_norm("norm2_a", self.dtype)
        self.norm2_v = layer_norm("norm2_v", self.dtype)
        self.attn = Attention(self.num_heads, self.dtype, self.attention_impl, name="attn")
        self.mlp = Mlp(self.mlp_ratio, self.dtype, name="mlp")

    def __call__(self, x: jax.Array, modality: str | None = None) -> jax.Array:  # [B, N, D]
        return self._apply(x, modality, None)

    def first_tokens(self, x: jax.Array, modality: str | None, num_queries: int) -> jax.Array:
        """[B, N, D] -> [B, Q, D]: only the first Q tokens' outputs, the same values as
        `self(x, modality)[:, :Q]` (they still attend to all N tokens), for passes that use
        nothing else. Not rematerialized under `ModelConfig.remat` (one block)."""
        return self._apply(x, modality, num_queries)

    def _apply(self, x: jax.Array, modality: str | None, num_queries: int | None) -> jax.Array:
        if modality not in MODALITIES:
            raise ValueError(f"modality must be one of {MODALITIES}, got {modality!r}")
        if self.is_initializing():
            # Create every norm pair, whichever one this call uses.
            for norm in (self.norm1, self.norm1_a, self.norm1_v):
                norm(x)
            for norm in (self.norm2, self.norm2_a, self.norm2_v):
                norm(x)
        suffix = "" if modality is None else f"_{modality}"
        norm1 = getattr(self, f"norm1{suffix}")
        norm2 = getattr(self, f"norm2{suffix}")
        h = self.attn(norm1(x), num_queries)
        x = (x if num_queries is None else x[:, :num_queries]) + h
        return x + self.mlp(norm2(x))


class PatchEmbed(nn.Module):
    """Non-overlapping p x p patches -> D, as a Conv2d(stride=p) but computed as one matmul.

    The kernel is stored conv-style, [p, p, C, D], so it converts from torch's [D, C, p, p] by a
    transpose; the patch vector is flattened in (p, q, c) order to match it.
    """

    embed_dim: int
    patch_size: int = 16
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:  # [B, H, W, C] -> [B, (H/p)*(W/p), D]
        p = self.patch_size
        c = x.shape[-1]
        kernel = self.param(
            "kernel", nn.initializers.xavier_uniform(in_axis=(0, 1, 2), out_axis=3),
            (p, p, c, self.embed_dim), jnp.float32)
        bias = self.param("bias", nn.initializers.zeros, (self.embed_dim,), jnp.float32)
        patches = patchify(x, p)  # [B, L, p*p*C]
        kernel = kernel.reshape(p * p * c, self.embed_dim).astype(self.dtype)
        return jnp.dot(patches.astype(self.dtype), kernel) + bias.astype(self.dtype)


def patchify(x: jax.Array, p: int) -> jax.Array:
    """[B, H, W, C] -> [B, (H/p)*(W/p), p*p*C]; patches row-major, each flattened (p, q, c)."""
    b, h, w, c = x.shape
    if h % p or w % p:
        raise ValueError(f"input of size {h}x{w} is not divisible into {p}x{p} patches")
    x = x.reshape(b, h // p, p, w // p, p, c)
    x = jnp.transpose(x, (0, 1, 3, 2, 4, 5))  # [B, H/p, W/p, p, q, C]
    return x.reshape(b, (h // p) * (w // p), p * p * c)


def unpatchify(x: jax.Array, grid_h: int, grid_w: int, p: int, c: int) -> jax.Array:
    """Inverse of `patchify`: [B, gh*gw, p*p*C] -> [B, gh*p, gw*p, C]."""
    b = x.shape[0]
    x = x.reshape(b, grid_h, grid_w, p, p, c)
    x = jnp.transpose(x, (0, 1, 3, 2, 4, 5))
    return x.reshape(b, grid_h * p, grid_w * p, c)
