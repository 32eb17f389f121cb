"""The index on disk: a JSON manifest and memory-mapped float16 embedding arrays.

    IDX/manifest.json          format, identity (model config, inputs, weights), files, failures
    IDX/audio.<gen>.npy        [M, D] float16 unit vectors, one row per moment (sound side)
    IDX/video.<gen>.npy        [M, D] float16 (zeros for audio-only files: never matched)
    IDX/moments.<gen>.npy      [M] MOMENT_DTYPE: file, segment, pair, times, frame index
                               (has_audio is False where a short last segment's window
                               holds only padding: such moments are never matched by sound)

Every update writes a new generation of arrays next to the old one, then replaces the manifest
(temp file + rename), then deletes the old arrays: a failure at any point leaves the previous
index readable and nothing half-written under a name the manifest uses.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import pathlib
import shutil
from collections.abc import Iterator
from typing import Any

import numpy as np

FORMAT = "cavmae-search-index"
VERSION = 1
MANIFEST = "manifest.json"
SIDES = ("audio", "video")
MOMENT_DTYPE = np.dtype([("file", "<i4"), ("segment", "<i4"), ("pair", "<i2"),
                         ("has_video", "?"), ("has_audio", "?"), ("time", "<f8"),
                         ("win_start", "<f8"), ("win_end", "<f8"), ("frame", "<i8")])


class NotAnIndex(ValueError):
    """A folder that holds no search index."""


def atomic_write_text(path: pathlib.Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


def read_manifest(index_dir: str | os.PathLike) -> dict[str, Any]:
    """The manifest of an index folder. Raises NotAnIndex / FileNotFoundError with one line."""
    d = pathlib.Path(index_dir)
    if not d.exists():
        raise FileNotFoundError(f"index not found: {index_dir}")
    if not d.is_dir():
        raise NotAnIndex(f"{index_dir} is not an index folder (it is a file)")
    path = d / MANIFEST
    if not path.is_file():
        raise NotAnIndex(f"{index_dir} is not a search index (no {MANIFEST}); build one with "
                         "python -m cavmae_jax.search index")
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as e:
        raise NotAnIndex(f"{path} is not a search index manifest ({e})") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise NotAnIndex(f"{path} is not a search index manifest")
    if manifest.get("version") != VERSION:
        raise NotAnIndex(f"{index_dir} has index version {manifest.get('version')}, this code "
                         f"reads version {VERSION}; rebuild it")
    return manifest


class Index:
    """An index folder opened read-only; arrays memory-mapped, never read whole."""

    def __init__(self, index_dir: str | os.PathLike):
        self.path = pathlib.Path(index_dir)
        self.manifest = read_manifest(index_dir)
        arrays = self.manifest["arrays"]
        try:
            self.audio = np.load(self.path / arrays["audio"], mmap_mode="r")  # [M, D] f16
            self.video = np.load(self.path / arrays["video"], mmap_mode="r")  # [M, D] f16
            self.moments = np.load(self.path / arrays["moments"], mmap_mode="r")  # [M]
        except (OSError, ValueError) as e:
            raise NotAnIndex(f"{index_dir}: the index arrays cannot be read ({e}); rebuild it"
                             ) from None
        m = len(self.moments)
        if self.audio.shape[0] != m or self.video.shape[0] != m:
            raise NotAnIndex(f"{index_dir}: the index arrays disagree in length; rebuild it")

    @property
    def files(self) -> list[dict[str, Any]]:
        return self.manifest["files"]

    @property
    def identity(self) -> dict[str, Any]:
        return self.manifest["identity"]

    def __len__(self) -> int:
        return len(self.moments)


@contextlib.contextmanager
def locked(index_dir: pathlib.Path) -> Iterator[None]:
    """An exclusive lock on IDX/.lock while the index is updated (a second writer is refused)."""
    index_dir.mkdir(parents=True, exist_ok=True)
    with open(index_dir / ".lock", "a+", encoding="utf-8") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise OSError(f"{index_dir} is being updated by another process; wait for it"
                          ) from None
        yield


class RowWriter:
    """Appends moments (embeddings + metadata) to raw temp files; a file's rows can be dropped.

    Memory stays at one segment: rows go to disk as they come.
    """

    def __init__(self, directory: pathlib.Path, dim: int):
        self.dir, self.dim, self.rows = directory, dim, 0
        directory.mkdir(parents=True, exist_ok=True)
        self._f = {k: open(directory / f"{k}.raw", "w+b")  # noqa: SIM115 - closed in close()
                   for k in (*SIDES, "moments")}

    def append(self, audio: np.ndarray, video: np.ndarray, moments: np.ndarray) -> None:
        self._f["audio"].write(np.ascontiguousarray(audio, np.float16).tobytes())
        self._f["video"].write(np.ascontiguousarray(video, np.float16).tobytes())
        self._f["moments"].write(np.ascontiguousarray(moments, MOMENT_DTYPE).tobytes())
        self.rows += len(moments)

    def truncate(self, rows: int) -> None:
        """Drops every row from `rows` on (a file that failed part-way)."""
        sizes = {"audio": 2 * self.dim, "video": 2 * self.dim, "moments": MOMENT_DTYPE.itemsize}
        for k, f in self._f.items():
            f.flush()
            f.truncate(rows * sizes[k])
            f.seek(rows * sizes[k])
        self.rows = rows

    def arrays(self) -> dict[str, np.ndarray]:
        """The rows written so far, memory-mapped."""
        out = {}
        for k, f in self._f.items():
            f.flush()
            dtype, shape = ((np.float16, (self.rows, self.dim)) if k in SIDES
                            else (MOMENT_DTYPE, (self.rows,)))
            out[k] = (np.memmap(f.name, dtype=dtype, mode="r", shape=shape) if self.rows
                      else np.zeros(shape, dtype))
        return out

    def close(self) -> None:
        for f in self._f.values():
            f.close()


def write_generation(index_dir: pathlib.Path, tmp: pathlib.Path, gen: str,
                     pieces: list[tuple[dict[str, np.ndarray], int, int, int]], dim: int
                     ) -> dict[str, str]:
    """New arrays from (source arrays, first row, count, new file id) pieces; returns names.

    Rows are copied a chunk at a time (bounded memory) into temp .npy files, which are renamed
    into the index folder only when complete.
    """
    total = sum(p[2] for p in pieces)
    names = {k: f"{k}.{gen}.npy" for k in (*SIDES, "moments")}
    out = {k: np.lib.format.open_memmap(tmp / names[k], mode="w+",
                                        dtype=np.float16 if k in SIDES else MOMENT_DTYPE,
                                        shape=(total, dim) if k in SIDES else (total,))
           for k in names}
    at, chunk = 0, 65536
    for src, first, count, file_id in pieces:
        for i in range(0, count, chunk):
            n = min(chunk, count - i)
            for k in SIDES:
                out[k][at:at + n] = src[k][first + i:first + i + n]
            rows = np.array(src["moments"][first + i:first + i + n])
            rows["file"] = file_id
            out["moments"][at:at + n] = rows
            at += n
    for arr in out.values():
        arr.flush()
    del out
    for name in names.values():
        os.replace(tmp / name, index_dir / name)
    return names


def remove_unreferenced(index_dir: pathlib.Path, keep: dict[str, str]) -> None:
    """Deletes array files of older generations and leftover temp folders."""
    for p in index_dir.iterdir():
        if p.suffix == ".npy" and p.name not in keep.values():
            p.unlink(missing_ok=True)
        elif p.is_dir() and p.name.startswith(".tmp-"):
            shutil.rmtree(p, ignore_errors=True)
