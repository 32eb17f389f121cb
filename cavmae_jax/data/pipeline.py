"""Grain pipelines over a data_prep.convert folder or a tfds_builder build: train, eval, retrieval.

Three modes, as in the official Sync loader:

- train: every clip once per epoch in a seeded order that changes each epoch, repeated;
  per visit one frame k ~ U[0, N) paired with its audio window; augmentations (noise, mixup,
  crop/flip: data/augment.py); batches of `global_batch_size // process_count`, remainder
  dropped. With `moments_per_clip` M > 1 a visit yields M distinct moments of the clip (read
  once), next to each other in the batch, so the contrastive loss sees the clip's other moments
  as negatives; a batch then holds b / M clips (not the official recipe, which is M = 1).
- eval: k = N // 2 (or `eval_frame`), records in order, no augmentation, one pass; the last
  batch is padded (`valid` False) so that every process yields the same number of batches.
- retrieval: all N (window_k, frame_k) pairs of each clip, in order: `audio` [N, L, 128],
  `video` [N, 224, 224, 3] per clip (or batches of clips).

Frames leave the pipeline as pixels, uint8 (float32 when mixup is on), and are normalized on
the device by the step (`video.normalize_image` inside the jitted function): per-example
normalization on the host was a third of the loader's time, and uint8 batches are 4x smaller
to collate, pass between workers and copy to the device (benchmarks/README.md).

Sharding across processes: the per-epoch order is global and process p takes rows
[p*b, (p+1)*b) of every global batch of b*P, so the shards are disjoint and cover each epoch,
and the global batch assembled from the processes equals the single-process one. Randomness
never depends on the process layout: each visit of a clip gets
`np.random.default_rng([seed, epoch, clip])`, which picks k and draws every augmentation, so a
restored iterator (its state is one integer) continues with exactly the same batches.

Typical use in a train loop:

    it = pipeline.make_train_iterator(data_dir, 'train', global_batch_size=48, seed=0)
    ckpt.restore_latest(abstract_state, it)         # restores `it` in place
    batch = next(it)   # dict of numpy: audio [b, L, 128], video [b, 224, 224, 3], labels [b, C]

What one record becomes in each mode (the clip reader and the transforms) is data/examples.py.
"""

from __future__ import annotations

import json
import math
import os
import pathlib
from collections.abc import Mapping
from typing import Any

import grain
import numpy as np

from cavmae_jax import audio
from cavmae_jax.data import records, sampling, tfds_source
from cavmae_jax.data.config import (  # noqa: F401 - re-exported: pipeline.make_config etc.
    AugmentConfig,
    PipelineConfig,
    make_config,
)
from cavmae_jax.data.examples import (  # noqa: F401 - re-exported: pipeline.pair_times
    ClipReader,
    EvalExample,
    RetrievalExample,
    TrainExample,
    TrainVisit,
    pair_times,
)

# ------------------------------------------------------------------------------ files


def load_metadata(data_dir: str | os.PathLike) -> dict[str, Any]:
    """`DIR/metadata.json` written by data_prep.convert (or data_prep.tfds_builder)."""
    path = pathlib.Path(data_dir) / "metadata.json"
    if not path.exists():
        # A TFDS build's root or dataset folder instead of its versioned folder?
        found = [p for depth in (1, 2, 3)  # DIR/cavmae_records[/NAME]/1.0.0
                 for p in pathlib.Path(data_dir).glob("*/" * depth + "dataset_info.json")]
        builds = sorted(str(p.parent) for p in found if (p.parent / "metadata.json").exists())[:3]
        hint = (f"; for a TFDS build use its versioned folder: {', '.join(builds)}" if builds
                else "")
        raise FileNotFoundError(f"{path} not found: data.dir must be a data_prep.convert output "
                                f"or a data_prep.tfds_builder build{hint}")
    return json.loads(path.read_text())


def shard_paths(data_dir: str | os.PathLike, split: str) -> list[str]:
    """The split's `DIR/<split>.array_record-xxxxx-of-yyyyy` files, sorted (record index =
    their order): exactly the ones metadata.json lists for the split.

    A listed shard that is missing, or a shard file of the split that metadata.json does not
    list (left from another conversion), is an error: mixing them would read other records.
    """
    data_dir = pathlib.Path(data_dir)
    found = sorted(p.name for p in data_dir.glob(f"{split}.array_record-*")
                   if not p.name.endswith(".tmp"))
    listed = _listed_shards(data_dir, split)
    if listed is None:  # a metadata.json without a shard list: every shard file there
        listed = found
    _check_shards(data_dir, split, listed, found)
    return [str(data_dir / name) for name in sorted(listed)]


def _listed_shards(data_dir: pathlib.Path, split: str) -> list[str] | None:
    """The shard names metadata.json lists for `split`; None when it lists none at all."""
    path = data_dir / "metadata.json"
    if not path.exists():
        return None
    splits = json.loads(path.read_text()).get("splits")
    if not isinstance(splits, Mapping) or not all(
            isinstance(s, Mapping) and "shards" in s for s in splits.values()):
        return None
    if split not in splits:
        raise FileNotFoundError(f"{path} has no split {split!r} (its splits: "
                                f"{', '.join(sorted(splits)) or 'none'})")
    return list(splits[split]["shards"])


def _check_shards(data_dir: pathlib.Path, split: str, listed: list[str], found: list[str]
                  ) -> None:
    if not listed:
        raise FileNotFoundError(f"no {split}.array_record-* shards in {data_dir}")
    missing = sorted(set(listed) - set(found))
    if missing:
        raise FileNotFoundError(
            f"{data_dir / missing[0]} is missing ({len(missing)} of the {len(listed)} shards "
            f"metadata.json lists for split {split!r}); rerun data_prep.convert into this "
            "folder to finish it, or into a fresh folder")
    stray = sorted(set(found) - set(listed))
    if stray:
        raise ValueError(
            f"{data_dir / stray[0]} is not one of the {len(listed)} shards metadata.json lists "
            f"for split {split!r} ({len(stray)} such files; left from another conversion?); "
            "delete them, or rerun data_prep.convert into a fresh folder")


def audio_stats(config: PipelineConfig, metadata: Mapping[str, Any]) -> tuple[float, float]:
    """(mean, std) for fbank normalization: the official constants or metadata's stats.

    `use_data_stats` takes the train split's stats (what the official stats were computed on),
    or the whole dataset's when there is no train split.
    """
    if not config.use_data_stats:
        return float(config.audio_mean), float(config.audio_std)
    stats = metadata.get("splits", {}).get("train", {}).get("fbank_stats") or metadata.get(
        "fbank_stats", {})
    if stats.get("mean") is None or stats.get("std") is None:
        raise ValueError("use_data_stats: metadata.json has no fbank_stats (mean, std); rerun "
                         "data_prep.convert or set data.use_data_stats=False")
    return float(stats["mean"]), float(stats["std"])


def _process_layout(process_index: int | None, process_count: int | None) -> tuple[int, int]:
    if process_index is None or process_count is None:
        import jax  # only for the defaults: the pipeline itself never touches jax

        process_index = jax.process_index() if process_index is None else process_index
        process_count = jax.process_count() if process_count is None else process_count
    if not 0 <= process_index < process_count:
        raise ValueError(f"process_index {process_index} not in [0, {process_count})")
    return int(process_index), int(process_count)


def _per_process_batch(global_batch_size: int, process_count: int) -> int:
    if global_batch_size <= 0 or global_batch_size % process_count:
        raise ValueError(f"global_batch_size {global_batch_size} must be a positive multiple of "
                         f"process_count {process_count}")
    return global_batch_size // process_count


# ------------------------------------------------------------------------------ datasets


def _reader(data_dir: str | os.PathLike, split: str, config: PipelineConfig
            ) -> tuple[ClipReader, int]:
    meta = load_metadata(data_dir)
    settings = meta.get("settings", {})
    if config.num_frames is not None and settings.get("num_frames") not in (None,
                                                                            config.num_frames):
        raise ValueError(f"records in {data_dir} have {settings['num_frames']} frames per clip, "
                         f"the config expects num_frames={config.num_frames}")
    target = settings.get("target_length", audio.TARGET_LENGTH)
    if config.window_length > target:
        raise ValueError(f"window_length {config.window_length} > the records' fbank length "
                         f"{target}")
    source, names = open_split(data_dir, split)
    mean, std = audio_stats(config, meta)
    reader = ClipReader(source, names, int(meta.get("num_classes", 0)), config, mean, std)
    return reader, len(source)


def open_split(data_dir: str | os.PathLike, split: str) -> tuple[Any, list[str]]:
    """(Grain source of the split's record bytes, its shard file names in record order), from a
    data_prep.convert folder or a data_prep.tfds_builder build."""
    if tfds_source.is_tfds_dataset(data_dir):
        return (tfds_source.RecordSource(data_dir, split),
                tfds_source.shard_names(data_dir, split))
    paths = shard_paths(data_dir, split)
    return grain.sources.ArrayRecordDataSource(paths), [pathlib.Path(x).name for x in paths]


def _finish(ds: grain.MapDataset, config: PipelineConfig) -> grain.IterDataset:
    """MapDataset of batches -> IterDataset: read threads, prefetch, optional worker processes."""
    it = ds.to_iter_dataset(grain.ReadOptions(num_threads=config.read_threads,
                                              prefetch_buffer_size=config.prefetch_buffer_size))
    if config.worker_count > 0:
        it = it.mp_prefetch(grain.MultiprocessingOptions(
            num_workers=config.worker_count, per_worker_buffer_size=config.worker_buffer_size))
    return it


class _ProcessRows(grain.MapDataset):
    """Process p's rows of every global batch: rows [p*b, (p+1)*b) of each block of b*P.

    `jax.make_array_from_process_local_data` places process p's local batch as the p-th
    contiguous block of the global batch, so taking these rows makes the global batch identical
    to the single-process one, whatever the process count.
    """

    _MUTATES_ELEMENT_SPEC = False

    def __init__(self, parent: grain.MapDataset, process_index: int, process_count: int,
                 batch: int):
        super().__init__(parent)
        self._p, self._count, self._b = process_index, process_count, batch
        self._length = len(parent) // (batch * process_count) * batch

    def __len__(self) -> int:
        return self._length

    def _parent_index(self, index: int) -> int:
        block, row = divmod(index, self._b)
        return (block * self._count + self._p) * self._b + row

    def __getitem__(self, index):
        if isinstance(index, slice):
            return self.slice(index)
        return self._parent[self._parent_index(index)]

    def _getitems(self, indices):
        return self._parent._getitems([self._parent_index(i) for i in indices])

    def __str__(self) -> str:
        return f"ProcessRows(p={self._p}, P={self._count}, b={self._b})"


def _padded_positions(num_records: int, process_index: int, process_count: int, unit: int,
                      pad: bool) -> grain.MapDataset:
    """This process's positions p, p + P, ...; padded to a multiple of P * unit when `pad`."""
    total = num_records
    if pad:
        total = math.ceil(num_records / (process_count * unit)) * process_count * unit
    return grain.MapDataset.range(total)[process_index::process_count]


def train_dataset(data_dir: str | os.PathLike, split: str = "train", *, global_batch_size: int,
                  seed: int, process_index: int | None = None, process_count: int | None = None,
                  config: PipelineConfig | Mapping[str, Any] | None = None,
                  num_epochs: int | None = None, **overrides: Any) -> grain.IterDataset:
    """The train pipeline as a Grain IterDataset (see `make_train_iterator`)."""
    cfg = make_config(config, **overrides)
    p, count = _process_layout(process_index, process_count)
    batch = _per_process_batch(global_batch_size, count)
    if not 0 <= seed < 2**32:
        raise ValueError(f"seed must be in [0, 2**32), got {seed}")
    reader, n = _reader(data_dir, split, cfg)
    if n == 0:
        raise ValueError(f"split {split!r} of {data_dir} has no records (every input failed "
                         f"to convert? see {pathlib.Path(data_dir) / 'failures.jsonl'}); fix "
                         "the inputs and rerun data_prep.convert, or train on another split")
    if cfg.balanced_sampling:  # N weighted draws with replacement per epoch (AS-2M, VGGSound)
        labels = sampling.split_labels(records.labels_index_path(data_dir, split),
                                       reader.shard_names, reader.source, progress=p == 0)
        weights = sampling.class_balanced_weights(labels, reader.num_classes)
        ds = sampling.WeightedEpochs(weights, seed, num_epochs)
    else:  # every clip once per epoch, in a new order each epoch
        ds = grain.MapDataset.range(n).shuffle(seed=seed).repeat(num_epochs)
    m = cfg.moments_per_clip
    if batch % m:
        raise ValueError(f"the per-process batch {batch} is not a multiple of "
                         f"moments_per_clip {m}")
    # Rows of the visit stream are clips; with M moments per clip a batch holds batch / M.
    ds = _ProcessRows(ds.map_with_index(TrainVisit(n)), p, count, batch // m)
    ds = ds.map(TrainExample(reader, seed)).batch(batch // m, drop_remainder=True)
    if m > 1:
        ds = ds.map(_FlattenMoments())
    return _finish(ds, cfg)


class _FlattenMoments(grain.transforms.Map):
    """[clips, M, ...] -> [clips * M, ...]: a clip's moments stay next to each other."""

    def map(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        return {k: v.reshape((v.shape[0] * v.shape[1], *v.shape[2:])) for k, v in batch.items()}


def make_train_iterator(data_dir: str | os.PathLike, split: str = "train", *,
                        global_batch_size: int, seed: int, process_index: int | None = None,
                        process_count: int | None = None,
                        config: PipelineConfig | Mapping[str, Any] | None = None,
                        num_epochs: int | None = None, **overrides: Any
                        ) -> grain.DatasetIterator:
    """Checkpointable iterator of this process's train batches.

    Args:
      data_dir: a data_prep.convert output folder.
      split: which `<split>.array_record-*` shards.
      global_batch_size: across all processes; each yields global_batch_size // process_count.
      seed: shuffle order and every per-visit random draw.
      process_index, process_count: this process's slice (default: jax.process_index/count).
      config: PipelineConfig, or a mapping / ConfigDict of its fields.
      num_epochs: None repeats forever.
      **overrides: PipelineConfig fields (e.g. window_length=1024, augment={...}).

    Returns:
      Iterator of dicts: `audio` [b, L, 128] float32 normalized, `video` [b, S, S, 3] pixels
      (uint8; float32 0..255 when mixup is on; normalize with `video.normalize_image`),
      `labels` [b, C] float32 (smoothed/mixed when configured), `frame_k`
      [b] int32, `clip_index` [b] int64. Save/restore it with `train.checkpoint.Checkpointer`
      (or `get_state` / `set_state`).
    """
    return iter(train_dataset(data_dir, split, global_batch_size=global_batch_size, seed=seed,
                              process_index=process_index, process_count=process_count,
                              config=config, num_epochs=num_epochs, **overrides))


def eval_dataset(data_dir: str | os.PathLike, split: str = "eval", *, global_batch_size: int,
                 process_index: int | None = None, process_count: int | None = None,
                 config: PipelineConfig | Mapping[str, Any] | None = None,
                 **overrides: Any) -> grain.IterDataset:
    """The eval pipeline as a Grain IterDataset (see `make_eval_iterator`)."""
    cfg = make_config(config, **overrides)
    p, count = _process_layout(process_index, process_count)
    batch = _per_process_batch(global_batch_size, count)
    reader, n = _reader(data_dir, split, cfg)
    ds = _padded_positions(n, p, count, batch, cfg.pad_eval)
    ds = ds.map(EvalExample(reader, n)).batch(batch, drop_remainder=False)
    return _finish(ds, cfg)


def make_eval_iterator(data_dir: str | os.PathLike, split: str = "eval", *,
                       global_batch_size: int, process_index: int | None = None,
                       process_count: int | None = None,
                       config: PipelineConfig | Mapping[str, Any] | None = None,
                       **overrides: Any) -> grain.DatasetIterator:
    """One pass over `split` at the eval frame (k = N // 2 unless `eval_frame`), no augmentation.

    Batches as in train (`video` uint8 pixels) plus `valid` [b] bool: with `pad_eval`
    (default) the last batches are padded with repeated clips marked invalid, so every process
    yields
    ceil(num_records / global_batch_size) batches of full size; mask them out of metrics.
    """
    return iter(eval_dataset(data_dir, split, global_batch_size=global_batch_size,
                             process_index=process_index, process_count=process_count,
                             config=config, **overrides))


def retrieval_dataset(data_dir: str | os.PathLike, split: str = "eval", *,
                      process_index: int | None = None, process_count: int | None = None,
                      clips_per_batch: int | None = None,
                      config: PipelineConfig | Mapping[str, Any] | None = None,
                      **overrides: Any) -> grain.IterDataset:
    """The retrieval pipeline as a Grain IterDataset (see `make_retrieval_iterator`)."""
    cfg = make_config(config, **overrides)
    p, count = _process_layout(process_index, process_count)
    reader, n = _reader(data_dir, split, cfg)
    unit = clips_per_batch or 1
    ds = _padded_positions(n, p, count, unit, cfg.pad_eval and count * unit > 1)
    ds = ds.map(RetrievalExample(reader, n))
    if clips_per_batch:
        ds = ds.batch(clips_per_batch, drop_remainder=False)
    return _finish(ds, cfg)


def make_retrieval_iterator(data_dir: str | os.PathLike, split: str = "eval", *,
                            process_index: int | None = None, process_count: int | None = None,
                            clips_per_batch: int | None = None,
                            config: PipelineConfig | Mapping[str, Any] | None = None,
                            **overrides: Any) -> grain.DatasetIterator:
    """All N window/frame pairs of every clip of this process, clips in record order.

    Per clip (clips_per_batch None): `audio` [N, L, 128] float32 normalized, `video`
    [N, S, S, 3] uint8 pixels, `frame_k` [N] = 0..N-1, `times` [N] float32 seconds of each
    pair's frame in the clip (`pair_times`), `labels` [C], `clip_index` int64,
    `id` str, `valid`.
    With clips_per_batch c every field gains a leading [c] axis. With several processes (or
    c > 1) and `pad_eval`, padding clips marked `valid` False even out the counts.
    """
    return iter(retrieval_dataset(data_dir, split, process_index=process_index,
                                  process_count=process_count, clips_per_batch=clips_per_batch,
                                  config=config, **overrides))
