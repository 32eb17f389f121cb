"""What every recipe starts from: the full config tree with its defaults, and the `:local` shrink.

A recipe is a function `get_config(arg) -> ConfigDict` that edits `base()` and returns it. The
tree holds every field of every section (cavmae_jax/config.py says which constructor reads
which section), so each one can be set with `--config.section.field=value`; the run builds the
typed config from it once and names any bad key.
"""

import ml_collections

from cavmae_jax import config
from cavmae_jax.models.config import ModelConfig


def get_base_config() -> ml_collections.ConfigDict:
    """Every field of every section, at its default (the model: the released Sync)."""
    return config.base()


def model_config(**overrides) -> ml_collections.ConfigDict:
    """The `model` section: every ModelConfig field (defaults = the released Sync) + overrides."""
    return config.section_tree(ModelConfig(**overrides))


def shrink_to_local(c: ml_collections.ConfigDict) -> None:
    """The `:local` variant of a recipe: a tiny ViT and a few steps, same code paths."""
    c.model.update(embed_dim=64, num_heads=4, modality_specific_depth=2, joint_depth=1,
                   decoder_embed_dim=32, decoder_depth=1, decoder_num_heads=4)
    if c.model.num_register_tokens:
        c.model.num_register_tokens = 2
    c.train.update(global_batch_size=8, num_steps=20, log_every=5, checkpoint_every=10)
