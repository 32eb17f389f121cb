"""THE record schema: one msgpack map per clip. `data_prep` writes it, the Grain pipeline reads it.

A record holds everything a CAV-MAE / Sync loader needs for one clip, already prepared.
Fields (what `encode` takes -> how it is stored -> what `decode` returns):

- `id` str -> str -> str.
- `fbank` [T, 128] -> float16 bytes, UNNORMALIZED log-mel of the whole clip, T = 1024 (zero-padded
  or cut) -> [T, 128] float32 by default (`fbank_dtype=np.float16` returns the stored array).
- `frames` [N, H, W, 3] uint8, or `frames_jpeg` (N JPEG bytes, stored untouched) -> list of N
  JPEG bytes -> `frames` [n, H, W, 3] uint8 for all N or the requested `frame_indices`, or the
  selected `frames_jpeg` when `decode_frames=False`.
- `windows` [N, 2] -> int32 bytes, [start, end) into the fbank for frame k (the official
  `map_frame_to_spectrogram` rule) -> [N, 2] int32, always all N rows.
- `labels` iterable of int -> sorted unique class indices into metadata.json's `labels`
  vocabulary (multi-label; single-label data has one entry; unlabeled clips []) -> [L] int32;
  `multi_hot(labels, num_classes)` gives the 0/1 target vector.
- `num_fbank_frames` int -> real (unpadded) fbank frames, <= T -> same.
- `source_frame_index` [N] -> decode-order index of each frame in its video (-1 unknown) ->
  [N] int64.
- `source` dict str -> str/int/float/bool (path, audio_path, segment, start_s, duration_s, fps,
  silent, ...) -> same.

decode also returns `frame_k` [n] int32 (which of the N frames `frames` holds) and `num_frames` N.
Normalization ((x + 5.081) / 4.4849, ImageNet mean/std) is NOT applied here: the pipeline does it.
Beside a split's shards, `<split>.labels.npz` lists every record's labels (`write_labels_index`).
"""

from __future__ import annotations

import os
import pathlib
from collections.abc import Mapping, Sequence
from typing import Any

import msgpack
import numpy as np

from cavmae_jax import video

SCHEMA_VERSION = 1
NUM_MEL_BINS = 128


def _pack_array(x: np.ndarray, dtype: str) -> dict[str, Any]:
    x = np.ascontiguousarray(x, dtype=np.dtype(dtype))
    return {"dtype": x.dtype.str, "shape": list(x.shape), "data": x.tobytes()}


def _unpack_array(d: Mapping[str, Any]) -> np.ndarray:
    return np.frombuffer(d["data"], dtype=np.dtype(d["dtype"])).reshape(d["shape"])


def _plain(v: Any) -> Any:
    """numpy scalars -> Python scalars so msgpack accepts them."""
    if isinstance(v, np.generic):
        return v.item()
    return v


def encode(example: Mapping[str, Any], jpeg_quality: int = video.JPEG_QUALITY) -> bytes:
    """Serializes one clip (see the module table) to msgpack bytes; validates shapes first.

    `frames` (uint8 [N, H, W, 3]) are JPEG-encoded here; pass `frames_jpeg` (N bytes objects)
    instead to store already-encoded JPEGs untouched.
    """
    clip_id = example["id"]
    if not isinstance(clip_id, str) or not clip_id:
        raise ValueError(f"id must be a non-empty str, got {clip_id!r}")
    fbank = np.asarray(example["fbank"])
    if fbank.ndim != 2 or fbank.shape[1] != NUM_MEL_BINS:
        raise ValueError(f"fbank must be [T, {NUM_MEL_BINS}], got {fbank.shape}")
    if "frames_jpeg" in example:
        jpegs = [bytes(b) for b in example["frames_jpeg"]]
    else:
        frames = np.asarray(example["frames"])
        if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8:
            raise ValueError(
                f"frames must be uint8 [N, H, W, 3], got {frames.dtype} {frames.shape}")
        jpegs = [video.encode_jpeg(f, jpeg_quality) for f in frames]
    n = len(jpegs)
    if n == 0:
        raise ValueError("a record needs at least one frame")
    windows = np.asarray(example["windows"])
    if windows.shape != (n, 2):
        raise ValueError(f"windows must be [{n}, 2] (one per frame), got {windows.shape}")
    if (windows.min() < 0 or windows.max() > fbank.shape[0]
            or np.any(windows[:, 1] <= windows[:, 0])):
        raise ValueError(f"windows must be [start, end) inside [0, {fbank.shape[0]}]")
    labels = sorted({int(x) for x in example.get("labels", ())})
    if labels and labels[0] < 0:
        raise ValueError(f"labels must be class indices >= 0, got {labels}")
    src_idx = np.asarray(example.get("source_frame_index", np.full(n, -1)), np.int64)
    if src_idx.shape != (n,):
        raise ValueError(f"source_frame_index must be [{n}], got {src_idx.shape}")
    record = {
        "version": SCHEMA_VERSION,
        "id": clip_id,
        "fbank": _pack_array(fbank, "<f2"),
        "num_fbank_frames": int(example.get("num_fbank_frames", fbank.shape[0])),
        "frames_jpeg": jpegs,
        "windows": _pack_array(windows, "<i4"),
        "labels": labels,
        "source_frame_index": src_idx.tolist(),
        "source": {str(k): _plain(v) for k, v in dict(example.get("source", {})).items()},
    }
    return msgpack.packb(record, use_bin_type=True)


def decode(b: bytes, frame_indices: Sequence[int] | np.ndarray | int | None = None,
           decode_frames: bool = True, fbank_dtype: Any = np.float32) -> dict[str, Any]:
    """Parses a record; JPEG-decodes only the frames asked for (the train pipeline needs one).

    Args:
      b: bytes from `encode`.
      frame_indices: None for all N frames, or the k's (ints in [0, N)) to decode, in that order.
      decode_frames: False returns the selected `frames_jpeg` bytes and no `frames` (no decode).
      fbank_dtype: float32 (default) or float16 (as stored: zero-copy, read-only).

    Returns:
      dict with `id`, `fbank` [T, 128], `frames` [n, H, W, 3] uint8 (or `frames_jpeg`),
      `frame_k` [n] int32, `num_frames` N, `windows` [N, 2] int32, `labels` [L] int32,
      `num_fbank_frames`, `source_frame_index` [N] int64, `source` dict.
    """
    r = msgpack.unpackb(b, raw=False)
    if r.get("version") != SCHEMA_VERSION:
        raise ValueError(f"unsupported record version {r.get('version')!r}, "
                         f"this code reads {SCHEMA_VERSION}")
    jpegs = r["frames_jpeg"]
    n = len(jpegs)
    if frame_indices is None:
        ks = np.arange(n, dtype=np.int32)
    else:
        ks = np.atleast_1d(np.asarray(frame_indices, np.int32))
        if ks.size and (ks.min() < -n or ks.max() >= n):
            raise IndexError(f"frame_indices {ks.tolist()} out of range for {n} frames")
        ks = ks % n
    fbank = _unpack_array(r["fbank"])
    if np.dtype(fbank_dtype) != fbank.dtype:
        fbank = fbank.astype(fbank_dtype)
    out: dict[str, Any] = {
        "id": r["id"],
        "fbank": fbank,
        "windows": _unpack_array(r["windows"]).copy(),
        "labels": np.asarray(r["labels"], np.int32),
        "num_fbank_frames": r["num_fbank_frames"],
        "num_frames": n,
        "frame_k": ks,
        "source_frame_index": np.asarray(r["source_frame_index"], np.int64),
        "source": r["source"],
    }
    selected = [jpegs[int(k)] for k in ks]
    if decode_frames:
        out["frames"] = np.stack([video.decode_jpeg(j) for j in selected]) if selected else (
            np.zeros((0, 0, 0, 3), np.uint8))
    else:
        out["frames_jpeg"] = selected
    return out


def multi_hot(labels: Sequence[int] | np.ndarray, num_classes: int) -> np.ndarray:
    """Class indices -> [num_classes] float32 0/1 vector (the BCE target)."""
    y = np.zeros((num_classes,), np.float32)
    idx = np.asarray(labels, np.int64)
    if idx.size:
        y[idx] = 1.0
    return y


# ------------------------------------------------------------------ labels index (sidecar)
# `DIR/<split>.labels.npz`, written by data_prep.convert beside the shards: every record's class
# indices in record order (shards sorted by name, records in shard order), as CSR arrays, so
# class-balanced sampling does not have to read every record when a run starts.


def labels_index_path(data_dir: str | os.PathLike, split: str) -> pathlib.Path:
    return pathlib.Path(data_dir) / f"{split}.labels.npz"


def write_labels_index(path: str | os.PathLike, shards: Sequence[str],
                       labels: Sequence[Sequence[int]]) -> None:
    """Writes the labels of `shards`' records (in record order) to `path`, atomically."""
    path = pathlib.Path(path)
    offsets = np.zeros(len(labels) + 1, np.int64)
    offsets[1:] = np.cumsum([len(x) for x in labels])
    values = np.fromiter((i for x in labels for i in x), np.int32, count=int(offsets[-1]))
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as f:
        np.savez(f, shards=np.asarray(list(shards), dtype=str), offsets=offsets, values=values)
    os.replace(tmp, path)


def read_labels_index(path: str | os.PathLike, shards: Sequence[str]) -> list[np.ndarray] | None:
    """Every record's class indices from `path`; None if it is missing or was written for
    shards other than `shards` (file names)."""
    path = pathlib.Path(path)
    if not path.exists():
        return None
    with np.load(path) as z:
        if list(z["shards"]) != list(shards):
            return None
        offsets, values = z["offsets"], z["values"]
    return [values[offsets[i]:offsets[i + 1]] for i in range(len(offsets) - 1)]
