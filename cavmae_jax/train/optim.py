"""Optimizers built from config: official Adam (coupled L2) or AdamW; step decay or warmup-cosine.

The official CAV-MAE recipes use `torch.optim.Adam(params, lr, weight_decay=5e-7,
betas=(0.95, 0.999))`: weight decay is added to the gradient BEFORE the moments (coupled L2, not
AdamW), and `MultiStepLR(milestones=range(start, 1000, step), gamma)` is stepped once per epoch.
Finetuning adds a head LR multiplier (a second param group at lr * head_lr) and averages the
weights of epochs wa_start..wa_end.

Param paths are the '/'-joined pytree keys, e.g. 'mlp_head/Dense_0/kernel'. Pattern options
(`head_patterns`, `freeze_patterns`) are regular expressions matched with `re.search` on that
path, so 'mlp_head' matches a prefix and 'pos_embed' matches any fixed sin-cos table.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import optax

Schedule = Callable[[jax.Array | int], jax.Array]
PyTree = Any

@dataclasses.dataclass(frozen=True)
class OptimConfig:
    """The `optim` section of a run's config: optimizer, LR schedule, param groups, clipping."""

    name: str = "official_adam"  # 'official_adam' | 'adamw'
    lr: float = 1e-4  # base (peak) learning rate
    weight_decay: float = 5e-7  # coupled L2 for official_adam, decoupled for adamw
    b1: float = 0.95
    b2: float = 0.999
    eps: float = 1e-8
    # official_adam: MultiStepLR(milestones=range(lr_decay_start, 1000, lr_decay_step), gamma).
    lr_decay_start: int = 10
    lr_decay_step: int = 5
    lr_decay_rate: float = 0.5
    # The LR schedule: 'auto' = the optimizer's own ('official_adam': step decay as above,
    # 'adamw': warmup-cosine); 'step' or 'warmup_cosine' picks one for either optimizer.
    schedule: str = "auto"
    # warmup_cosine: linear warmup 0 -> lr over warmup_steps (or warmup_fraction of all steps
    # when > 0), then cosine to end_lr at total_steps, stepped every iteration.
    warmup_steps: int = 0
    warmup_fraction: float = 0.0
    end_lr: float = 0.0
    decay_1d: bool = False  # adamw: also decay 1-D params (biases, norms)?
    # Both: param groups and clipping.
    head_lr_mult: float = 1.0
    head_patterns: tuple[str, ...] = ("mlp_head",)
    freeze_patterns: tuple[str, ...] = ()  # besides the model's fixed tables (always frozen)
    grad_clip_norm: float = 0.0  # 0 = no clipping

    def __post_init__(self):
        if self.name not in OPTIMIZERS:
            raise ValueError(f"name must be one of {OPTIMIZERS}, got {self.name!r}")
        if self.schedule not in SCHEDULES:
            raise ValueError(f"schedule must be one of {SCHEDULES}, got {self.schedule!r}")
        if not 0.0 <= self.warmup_fraction < 1.0:
            raise ValueError(f"warmup_fraction must be in [0, 1), got {self.warmup_fraction}")


OPTIMIZERS = ("official_adam", "adamw")
SCHEDULES = ("auto", "step", "warmup_cosine")


def param_path(path: Sequence[Any]) -> str:
    """'/'-joined names of a pytree key path, e.g. 'blocks_a_0/attn/qkv/kernel'."""
    return jax.tree_util.keystr(tuple(path), simple=True, separator="/")


def path_matches(patterns: Sequence[str]) -> Callable[[PyTree], PyTree]:
    """Returns params -> bool tree: True where the path matches any of `patterns`."""
    compiled = [re.compile(p) for p in patterns]

    def mask(params: PyTree) -> PyTree:
        return jax.tree_util.tree_map_with_path(
            lambda path, _: any(c.search(param_path(path)) for c in compiled), params
        )

    return mask


def multistep_lr(
    base_lr: float,
    steps_per_epoch: int,
    decay_start: int,
    decay_step: int,
    gamma: float,
    last_epoch: int = 1000,
) -> Schedule:
    """torch MultiStepLR(milestones=range(decay_start, last_epoch, decay_step)), stepped per epoch.

    The official loop calls `scheduler.step()` after each epoch, so after m epochs the LR is
    multiplied by gamma if m is a milestone. For optimizer step s (0-based) the epoch index is
    s // steps_per_epoch, and the LR is base_lr * gamma ** #{milestones m <= epoch}.
    """
    if steps_per_epoch < 1 or decay_step < 1:
        raise ValueError(f"steps_per_epoch={steps_per_epoch}, decay_step={decay_step} must be >= 1")
    milestones = jnp.arange(decay_start, last_epoch, decay_step, dtype=jnp.int32)  # [M]

    def schedule(count: jax.Array | int) -> jax.Array:
        epoch = jnp.asarray(count, jnp.int32) // steps_per_epoch
        num_decays = jnp.sum(milestones <= epoch)
        return base_lr * jnp.asarray(gamma, jnp.float32) ** num_decays

    return schedule


def official_adam(
    learning_rate: float | Schedule,
    weight_decay: float = 5e-7,
    b1: float = 0.95,
    b2: float = 0.999,
    eps: float = 1e-8,
) -> optax.GradientTransformation:
    """torch.optim.Adam(weight_decay=wd): g += wd * p, then Adam with torch's bias correction.

    optax.scale_by_adam computes m_hat / (sqrt(v_hat) + eps) with m_hat = m / (1 - b1^t) and
    v_hat = v / (1 - b2^t), which is algebraically torch's
    lr / (1 - b1^t) * m / (sqrt(v) / sqrt(1 - b2^t) + eps).
    """
    return optax.chain(
        optax.add_decayed_weights(weight_decay),  # coupled L2: enters the moments
        optax.scale_by_adam(b1=b1, b2=b2, eps=eps, eps_root=0.0),
        optax.scale_by_learning_rate(learning_rate),
    )


def scale_matching(patterns: Sequence[str], factor: float) -> optax.GradientTransformation:
    """Multiplies the updates of params whose path matches `patterns` by `factor` (stateless).

    Placed after the learning rate, this is exactly a torch param group at lr * factor.
    """
    compiled = [re.compile(p) for p in patterns]

    def init_fn(params: PyTree) -> optax.EmptyState:
        del params
        return optax.EmptyState()

    def update_fn(
        updates: PyTree, state: optax.EmptyState, params: PyTree | None = None
    ) -> tuple[PyTree, optax.EmptyState]:
        del params

        def one(path: Any, u: jax.Array) -> jax.Array:
            hit = any(c.search(param_path(path)) for c in compiled)
            return u * jnp.asarray(factor, u.dtype) if hit else u

        return jax.tree_util.tree_map_with_path(one, updates), state

    return optax.GradientTransformation(init_fn, update_fn)


def _config_dict(config: OptimConfig | Mapping[str, Any] | Any) -> dict[str, Any]:
    """OptimConfig, or a dict / ConfigDict of some of its fields -> all fields (unknown: raise)."""
    if isinstance(config, OptimConfig):
        return dataclasses.asdict(config)
    raw = dict(config.to_dict() if hasattr(config, "to_dict") else config)
    known = {f.name for f in dataclasses.fields(OptimConfig)}
    unknown = sorted(set(raw) - known)
    if unknown:
        raise ValueError(f"Unknown optimizer config key(s) {unknown}; known keys: {sorted(known)}")
    return dataclasses.asdict(OptimConfig(**raw))


def build_schedule(
    config: Mapping[str, Any] | Any, steps_per_epoch: int, total_steps: int | None = None
) -> Schedule:
    """The base-LR schedule of `config` (the head group runs at head_lr_mult times this)."""
    c = _config_dict(config)
    kind = c["schedule"]
    if kind == "auto":
        kind = "step" if c["name"] == "official_adam" else "warmup_cosine"
    if kind == "step":
        return multistep_lr(
            c["lr"], steps_per_epoch, c["lr_decay_start"], c["lr_decay_step"], c["lr_decay_rate"]
        )
    if total_steps is None:
        raise ValueError("the warmup-cosine schedule needs total_steps.")
    warmup = int(c["warmup_steps"])
    if c["warmup_fraction"] > 0:
        warmup = int(round(c["warmup_fraction"] * total_steps))
    return optax.warmup_cosine_decay_schedule(
        init_value=0.0,
        peak_value=c["lr"],
        warmup_steps=warmup,
        decay_steps=max(total_steps, warmup + 1),
        end_value=c["end_lr"],
    )


def build_optimizer(
    config: OptimConfig | Mapping[str, Any], steps_per_epoch: int, total_steps: int | None = None
) -> tuple[optax.GradientTransformation, Schedule]:
    """The optax chain for `config` (OptimConfig or a dict of its fields), its base-LR schedule.

    Order: [clip] -> official: +wd*p, Adam | adamw: Adam, +wd*p -> -lr -> [x head_lr_mult].
    Frozen params (freeze_patterns) get exactly zero updates and no optimizer state, as torch
    params with requires_grad=False; they are also left out of the clipping norm.
    """
    c = _config_dict(config)
    schedule = build_schedule(c, steps_per_epoch, total_steps)
    parts: list[optax.GradientTransformation] = []
    if c["grad_clip_norm"] and c["grad_clip_norm"] > 0:
        parts.append(optax.clip_by_global_norm(c["grad_clip_norm"]))
    if c["name"] == "official_adam":
        parts.append(official_adam(schedule, c["weight_decay"], c["b1"], c["b2"], c["eps"]))
    else:
        decay_mask = None if c["decay_1d"] else (lambda p: jax.tree.map(lambda x: x.ndim > 1, p))
        adamw = optax.adamw(
            schedule, c["b1"], c["b2"], c["eps"], weight_decay=c["weight_decay"], mask=decay_mask
        )
        parts.append(adamw)
    if c["head_lr_mult"] != 1.0:
        parts.append(scale_matching(tuple(c["head_patterns"]), c["head_lr_mult"]))
    tx = optax.chain(*parts)

    freeze = tuple(c["freeze_patterns"])
    if freeze:
        frozen = path_matches(freeze)
        labels = lambda params: jax.tree.map(lambda f: "frozen" if f else "train", frozen(params))
        tx = optax.multi_transform({"train": tx, "frozen": optax.set_to_zero()}, labels)
    return tx, schedule


# ----------------------------------------------------------------------------------------------
# Weight averaging (finetuning): pure functions of params pytrees.
# ----------------------------------------------------------------------------------------------


def in_wa_window(epoch: int, wa_start: int, wa_end: int) -> bool:
    """Whether the params at the end of (1-based) `epoch` join the official weight average."""
    return wa_start <= epoch <= wa_end


def running_mean(avg: PyTree | None, params: PyTree, count: int) -> PyTree:
    """Mean of `count` + 1 snapshots given the mean `avg` of the first `count` (None if 0).

    Folding in the params of epochs wa_start..wa_end one by one gives the official `wa_model`
    (the plain average of those epochs' state dicts) without keeping every epoch on disk.
    Accumulates in float32 and returns float32 leaves.
    """
    params = jax.tree.map(lambda p: jnp.asarray(p, jnp.float32), params)
    if avg is None or count == 0:
        return params
    w = 1.0 / (count + 1)
    return jax.tree.map(lambda a, p: a + (p - a) * w, avg, params)


def ema(avg: PyTree | None, params: PyTree, decay: float) -> PyTree:
    """Exponential moving average: decay * avg + (1 - decay) * params (params if avg is None)."""
    if avg is None:
        return jax.tree.map(lambda p: jnp.asarray(p, jnp.float32), params)
    return jax.tree.map(lambda a, p: decay * a + (1.0 - decay) * p, avg, params)
