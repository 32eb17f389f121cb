"""A dataset built by `data_prep.tfds_builder`, read as a Grain source of record bytes.

The builder stores each clip as a TFDS example `{"record": bytes, "id": text}` whose `record`
is exactly the bytes `data_prep.convert` writes, beside a `metadata.json` with convert's keys;
so the pipelines read either kind of folder (`--config.data.dir=.../cavmae_records/NAME/1.0.0`).
Needs tensorflow-datasets (the [tfds] extra; no TensorFlow), imported on first use.
"""

from __future__ import annotations

import os
import pathlib
from collections.abc import Sequence
from typing import Any


def is_tfds_dataset(data_dir: str | os.PathLike) -> bool:
    """Whether `data_dir` is a built TFDS dataset (its versioned folder)."""
    return (pathlib.Path(data_dir) / "dataset_info.json").exists()


def shard_names(dataset_dir: str | os.PathLike, split: str) -> list[str]:
    """The split's TFDS shard files (`<name>-<split>.array_record-xxxxx-of-yyyyy`), in order."""
    return sorted(p.name for p in pathlib.Path(dataset_dir).glob(f"*-{split}.array_record-*"))


class RecordSource:
    """One split of a built dataset as a Grain data source of record bytes (`records.decode`).

    Picklable (Grain workers reopen it); `grain.MapDataset.source(RecordSource(d, "train"))`.
    """

    def __init__(self, dataset_dir: str | os.PathLike, split: str):
        self.dataset_dir, self.split = str(dataset_dir), split
        self._src: Any = None

    def _source(self) -> Any:
        if self._src is None:
            try:
                import tensorflow_datasets as tfds
            except ImportError as e:
                raise ImportError(f"{self.dataset_dir} is a TFDS dataset; reading it needs "
                                  "tensorflow-datasets: pip install 'cavmae-jax[tfds]'") from e
            builder = tfds.builder_from_directory(self.dataset_dir)
            if self.split not in builder.info.splits:
                raise FileNotFoundError(
                    f"no split {self.split!r} in {self.dataset_dir} (it has "
                    f"{', '.join(sorted(builder.info.splits))})")
            self._src = builder.as_data_source(split=self.split)
        return self._src

    def __len__(self) -> int:
        return len(self._source())

    def __getitem__(self, index: int) -> bytes:
        return self._source()[index]["record"]

    def __getitems__(self, indices: Sequence[int]) -> list[bytes]:
        return [ex["record"] for ex in self._source().__getitems__(indices)]

    def __getstate__(self) -> dict[str, Any]:
        return {"dataset_dir": self.dataset_dir, "split": self.split, "_src": None}

    def __repr__(self) -> str:
        return f"RecordSource({self.dataset_dir!r}, split={self.split!r})"
