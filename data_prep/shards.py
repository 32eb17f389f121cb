"""The shard files of a `data_prep.convert` folder: planning, writing, the labels index.

Shard i of a split holds that split's inputs i*shard_size .. (i+1)*shard_size-1 in input order.
A `ShardWriter` writes `<name>.tmp` and renames it when complete, after its bookkeeping
(`.convert/<name>.json`: ids, failures, fbank sums, labels) is written; `write_labels_index`
turns a split's bookkeeping into `<split>.labels.npz` for class-balanced sampling.
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import json
import math
import os
import pathlib
from collections.abc import Iterator, Sequence

from cavmae_jax.data import records
from data_prep.inputs import Item

ARRAY_RECORD_OPTIONS = "group_size:1,uncompressed"
STATE_DIR = ".convert"


@dataclasses.dataclass
class Shard:
    split: str
    index: int
    count: int
    items: list[Item]

    @property
    def name(self) -> str:
        return f"{self.split}.array_record-{self.index:05d}-of-{self.count:05d}"


def plan_shards(items: Sequence[Item], shard_size: int) -> list[Shard]:
    """Items keep their order within a split; splits are sorted by name."""
    by_split: dict[str, list[Item]] = {}
    for it in items:
        by_split.setdefault(it.split, []).append(it)
    shards = []
    for split in sorted(by_split):
        group = by_split[split]
        n = max(1, math.ceil(len(group) / shard_size))
        for i in range(n):
            shards.append(Shard(split, i, n, group[i * shard_size:(i + 1) * shard_size]))
    return shards


def atomic_write_text(path: pathlib.Path, text: str) -> None:
    """Writes `text` as UTF-8 via a temporary file; a lone surrogate (a file name's non-UTF-8
    byte) is written as its `\\udcXX` escape, which JSON reads back."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text, encoding="utf-8", errors="backslashreplace")
    os.replace(tmp, path)


def write_labels_index(out: pathlib.Path, split: str, parts: list[dict], complete: bool) -> None:
    """`<split>.labels.npz` for balanced sampling; removed where it cannot be complete (missing
    shards, or shards finished by a converter that did not record labels)."""
    path = records.labels_index_path(out, split)
    if not complete or any("labels" not in p for p in parts):
        path.unlink(missing_ok=True)
        return
    parts = sorted(parts, key=lambda p: p["shard"])  # the pipeline's record order
    names, labels = [p["shard"] for p in parts], [x for p in parts for x in p["labels"]]
    old = records.read_labels_index(path, names)
    if old is None or len(old) != len(labels):  # an up-to-date index is left untouched
        records.write_labels_index(path, names, labels)


_WRITE_ERRORS = {"No space left": errno.ENOSPC, "Disk quota exceeded": errno.EDQUOT,
                 "Read-only file system": errno.EROFS, "Permission denied": errno.EACCES}


@contextlib.contextmanager
def _as_os_error(path: pathlib.Path) -> Iterator[None]:
    """ArrayRecord reports a failed write as RuntimeError: raise it as the OSError it is
    (a full disk, a read-only folder), naming the file."""
    try:
        yield
    except RuntimeError as e:
        for text, code in _WRITE_ERRORS.items():
            if text in str(e):
                raise OSError(code, os.strerror(code), str(path)) from e
        raise


class ShardWriter:
    """Collects one shard's results in order; writes `<name>.tmp`, then renames."""

    def __init__(self, out_dir: pathlib.Path, shard: Shard):
        from array_record.python.array_record_module import ArrayRecordWriter

        self.out_dir, self.shard = out_dir, shard
        self.tmp = out_dir / (shard.name + ".tmp")
        with _as_os_error(self.tmp):
            self.writer = ArrayRecordWriter(str(self.tmp), ARRAY_RECORD_OPTIONS)
        self.part = {"shard": shard.name, "split": shard.split, "num_records": 0, "ids": [],
                     "failures": [], "silent_ids": [], "fbank_sum": 0.0, "fbank_sumsq": 0.0,
                     "fbank_count": 0, "num_inputs": len(shard.items), "labels": []}

    def add(self, item: Item, results: list[tuple]) -> None:
        for res in results:
            if res[0] == "ok":
                _, clip_id, data, (s, ss, n), silent = res
                with _as_os_error(self.tmp):
                    self.writer.write(data)
                self.part["num_records"] += 1
                self.part["ids"].append(clip_id)
                self.part["labels"].append(list(item.labels))
                self.part["fbank_sum"] += s
                self.part["fbank_sumsq"] += ss
                self.part["fbank_count"] += n
                if silent:
                    self.part["silent_ids"].append(clip_id)
            else:
                self.part["failures"].append({"path": item.source, "id": item.id,
                                              "split": item.split, "reason": res[1]})

    def finish(self) -> dict:
        with _as_os_error(self.tmp):
            self.writer.close()
        atomic_write_text(self.out_dir / STATE_DIR / (self.shard.name + ".json"),
                           json.dumps(self.part, sort_keys=True))
        os.replace(self.tmp, self.out_dir / self.shard.name)
        return self.part
