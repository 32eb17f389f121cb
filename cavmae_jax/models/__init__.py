"""CAV-MAE / CAV-MAE Sync models: `CAVMAE` (pretraining) and `CAVMAEClassifier` (finetuning)."""

import jax

from cavmae_jax.models.cavmae import CAVMAE, init_params
from cavmae_jax.models.config import ModelConfig
from cavmae_jax.models.heads import CAVMAEClassifier, init_classifier_params


def init_model_params(model: CAVMAE, rng: jax.Array) -> dict:
    """Fresh parameters (official init) of either model, every parameter created."""
    if isinstance(model, CAVMAEClassifier):
        return init_classifier_params(model, rng)
    return init_params(model.config, rng)


__all__ = ["CAVMAE", "CAVMAEClassifier", "ModelConfig", "init_model_params"]
