"""The model side of search: a checkpoint -> unit-length embeddings of moments and queries.

`Embedder.from_checkpoint` reads any checkpoint evaluation reads (run folder, step directory,
params directory) and embeds N (window, frame) pairs per call with the same jitted shape, so
segments and queries share one compilation. `identity` is what an index records to refuse a
query or an update made with another model.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
from typing import Any

import jax
import numpy as np

from cavmae_jax import config as config_lib
from cavmae_jax import inference
from cavmae_jax.search.segments import InputSpec


class IndexMismatch(ValueError):
    """An index, a checkpoint or a query made for different models or inputs."""


def weights_fingerprint(params: Any) -> str:
    """A short hash of every parameter's name, shape, dtype and bytes."""
    h = hashlib.blake2b(digest_size=8)
    for path, leaf in jax.tree_util.tree_flatten_with_path(params)[0]:
        arr = np.asarray(jax.device_get(leaf))
        h.update(f"{jax.tree_util.keystr(path)}{arr.shape}{arr.dtype}".encode())
        h.update(np.ascontiguousarray(arr).tobytes())
    return h.hexdigest()


def _model_fields(model_cfg: Any) -> dict[str, Any]:
    """The model config without the fields that only change speed or memory."""
    d = dataclasses.asdict(model_cfg)
    for key in config_lib.RUNTIME_FIELDS["model"] + ("negative_groups",):
        d.pop(key, None)
    return d


def describe_mismatch(index_id: dict[str, Any], other: dict[str, Any]) -> str | None:
    """One line naming how two identities differ, or None when they match."""
    changes = config_lib.differences({"model": index_id["model"], "inputs": index_id["inputs"]},
                                     {"model": other["model"], "inputs": other["inputs"]})
    if changes:
        return "it differs in " + config_lib.format_changes(changes)
    if index_id["weights"] != other["weights"]:
        return (f"the weights differ (index: {index_id.get('checkpoint')}, weights "
                f"{index_id['weights']}; this: {other.get('checkpoint')}, weights "
                f"{other['weights']})")
    return None


@dataclasses.dataclass
class Embedder:
    """A pretraining model, its params and the inputs its data was made with."""

    model: Any
    params: Any
    spec: InputSpec
    checkpoint: str  # what was loaded, for messages ("step 6 of W/checkpoints/6")
    source: str = ""  # the path it was loaded from
    _fn: Any = None
    _weights: str | None = None

    @classmethod
    def from_checkpoint(cls, path: str | os.PathLike) -> Embedder:
        from cavmae_jax.train.run import build_model, load_checkpoint, resolve_config

        loaded = load_checkpoint(path)
        cfg = loaded.config
        if cfg is None:
            raise config_lib.ConfigError(f"{path} carries no config; export it from a run "
                                         "(python -m cavmae_jax.export)")
        if cfg.task != "pretrain":
            raise config_lib.ConfigError(f"{path} is a finetuned classifier; search needs a "
                                         "pretraining checkpoint (its contrastive embeddings)")
        model = build_model(resolve_config(cfg, {}, 1))
        return cls(model, loaded.params, InputSpec.from_config(cfg), loaded.describe(),
                   os.path.abspath(os.fspath(path)))

    @property
    def dim(self) -> int:
        return int(self.model.config.embed_dim)

    @property
    def identity(self) -> dict[str, Any]:
        if self._weights is None:
            self._weights = weights_fingerprint(self.params)
        return {"model": _model_fields(self.model.config), "inputs": self.spec.to_dict(),
                "weights": self._weights, "checkpoint": self.checkpoint}

    def embed_pairs(self, audio_in: np.ndarray | None, frames: np.ndarray | None
                    ) -> tuple[np.ndarray, np.ndarray]:
        """Up to N pairs -> (audio [n, D], video [n, D]) float32 unit vectors.

        audio_in [n, L, 128] normalized (None: no sound, zeros in and ignored out);
        frames [n, S, S, 3] uint8 (None: no picture). Padded to N rows so that every call
        reuses one compilation.
        """
        n = len(audio_in) if audio_in is not None else len(frames)
        rows, size = self.spec.num_frames, self.spec.image_size
        if n > rows:
            outs = [self.embed_pairs(None if audio_in is None else audio_in[i:i + rows],
                                     None if frames is None else frames[i:i + rows])
                    for i in range(0, n, rows)]
            return np.concatenate([o[0] for o in outs]), np.concatenate([o[1] for o in outs])
        a = np.zeros((rows, self.spec.window_length, 128), np.float32)
        v = np.zeros((rows, size, size, 3), np.uint8)
        if audio_in is not None:
            a[:n] = audio_in
        if frames is not None:
            v[:n] = frames
        if self._fn is None:
            self._fn = inference.pair_embed_fn(self.model)
        ga, gv = self._fn(self.params, a, v)
        return unit(np.asarray(ga)[:n]), unit(np.asarray(gv)[:n])


def unit(x: np.ndarray) -> np.ndarray:
    """Rows scaled to unit length (cosine similarity becomes a dot product)."""
    x = np.asarray(x, np.float32)
    return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-12)
