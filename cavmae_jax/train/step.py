"""Pure train / eval steps. `loop.py` jits them with shardings and donation.

A step is `(state, batch) -> (state, metrics)`: all randomness (the masking noise) comes from
`fold_in(state.rng, state.step)`, so a step gives the same result on any mesh and after a resume.
"""

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import optax

from cavmae_jax import losses, video
from cavmae_jax.models import masking
from cavmae_jax.models.cavmae import CAVMAE
from cavmae_jax.models.heads import CAVMAEClassifier
from cavmae_jax.train.state import TrainState, step_key

Batch = dict[str, jax.Array]
Metrics = dict[str, jax.Array]


def model_inputs(batch: Batch) -> tuple[jax.Array, jax.Array]:
    """(audio [B, T, 128], video [B, S, S, 3] ImageNet-normalized) from a pipeline batch.

    The pipeline ships frames as pixels (uint8, or float32 after mixup); they are normalized
    here, inside the jitted step, rather than per example on the host.
    """
    return batch["audio"], video.normalize_image(batch["video"])


def masking_noise(model: CAVMAE, rng: jax.Array, batch_size: int) -> tuple[jax.Array, jax.Array]:
    """Noise for one step: [B, La] audio (structured if configured), [B, Lv] video."""
    c = model.config
    k_a, k_v = jax.random.split(rng)
    if c.mask_mode == "unstructured":
        noise_a = masking.unstructured_noise(k_a, batch_size, c.num_patches_a)
    else:
        f, t = c.audio_grid
        noise_a = masking.structured_noise(k_a, batch_size, f, t, c.mask_ratio_a, c.mask_mode)
    return noise_a, masking.unstructured_noise(k_v, batch_size, c.num_patches_v)


def pretrain_loss(model: CAVMAE, params: Any, batch: Batch,
                  rng: jax.Array) -> tuple[jax.Array, Metrics]:
    audio, frames = model_inputs(batch)
    noise_a, noise_v = masking_noise(model, rng, audio.shape[0])
    out = model.apply({"params": params}, audio, frames, noise_a, noise_v,
                      method=CAVMAE.pretrain)
    metrics = {k: out[k] for k in ("loss", "loss_mae", "loss_mae_a", "loss_mae_v", "loss_c",
                                   "c_acc", "loss_c_in_clip") if k in out}
    return out["loss"], metrics


def classification_loss(model: CAVMAEClassifier, params: Any, batch: Batch, mode: str,
                        loss: str) -> tuple[jax.Array, Metrics]:
    logits = model.apply({"params": params}, *model_inputs(batch), mode,
                         method=CAVMAEClassifier.classify)
    if loss == "bce":
        value = losses.bce_with_logits(logits, batch["labels"])
    else:
        value = losses.softmax_cross_entropy(logits, batch["labels"])
    hits = jnp.argmax(logits, -1) == jnp.argmax(batch["labels"], -1)
    return value, {"loss": value, "train_top1": jnp.mean(hits.astype(jnp.float32))}


def make_train_step(model: CAVMAE, tx: optax.GradientTransformation,
                    schedule: Callable[[Any], Any], task: str = "pretrain",
                    mode: str = "multimodal", loss: str = "bce"
                    ) -> Callable[..., tuple[TrainState, Metrics]]:
    """The update for `task` ('pretrain' or 'finetune').

    The returned `train_step(state, batch, log_step=True)` also reports `grad_norm`, which costs
    one more pass over every gradient (19 ms alone for the 45 M params of the small Sync model
    on 2 CPU cores; ~1 % of its step, as XLA overlaps part of it). The loop passes `log_step`
    as a traced bool that is True only on the steps whose metrics it fetches; on the others
    `lax.cond` skips that pass and `grad_norm` is 0.
    """

    def loss_fn(params, batch, rng):
        if task == "pretrain":
            return pretrain_loss(model, params, batch, rng)
        return classification_loss(model, params, batch, mode, loss)

    def train_step(state: TrainState, batch: Batch,
                   log_step: bool | jax.Array = True) -> tuple[TrainState, Metrics]:
        grad_fn = jax.value_and_grad(loss_fn, has_aux=True)
        (_, metrics), grads = grad_fn(state.params, batch, step_key(state))
        updates, opt_state = tx.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        grad_norm = _if_logging(log_step, lambda: optax.tree.norm(grads))
        metrics = dict(metrics, grad_norm=grad_norm, lr=schedule(state.step))
        new_state = state.replace(step=state.step + 1, params=params, opt_state=opt_state)
        return new_state, metrics

    return train_step


def _if_logging(log_step: bool | jax.Array, metric: Callable[[], jax.Array]) -> jax.Array:
    """metric() on logging steps, else 0. `log_step`: a Python bool, or a traced bool scalar."""
    if isinstance(log_step, bool):
        return metric() if log_step else jnp.zeros((), jnp.float32)
    return jax.lax.cond(log_step, metric, lambda: jnp.zeros((), jnp.float32))
