"""The official class-balanced sampling of the AS-2M and VGGSound finetuning recipes.

The official code writes one weight per training clip (`gen_weight_file.py`): every class gets
label_weight = 1000 / (number of training clips carrying it + 0.01), and a clip's weight is the
sum of its labels' weights, so clips of rare classes are drawn more often. The loader then uses
`WeightedRandomSampler(weights, num_samples=len(weights), replacement=True)`: every epoch is N
draws with replacement, with probability proportional to the weight.

Here each epoch's draws come from `np.random.default_rng([seed, epoch])`, so the visit order
depends only on (seed, epoch) and a restored Grain iterator continues exactly.
"""

from __future__ import annotations

import logging
import pathlib
import sys
from collections.abc import Sequence

import grain
import numpy as np
from tqdm import tqdm

from cavmae_jax.data import records


def class_balanced_weights(labels: Sequence[Sequence[int]], num_classes: int) -> np.ndarray:
    """Per-clip weights [N] float64 from each clip's class indices (the official formula)."""
    counts = np.zeros(num_classes, np.float64)
    for clip_labels in labels:
        np.add.at(counts, np.asarray(clip_labels, np.int64), 1.0)
    label_weight = 1000.0 / (counts + 0.01)
    weights = np.array([label_weight[np.asarray(c, np.int64)].sum() for c in labels], np.float64)
    if not len(weights) or not np.any(weights > 0):
        raise ValueError("class-balanced sampling needs labeled clips; none of the "
                         f"{len(weights)} records has a label")
    return weights


def split_labels(index: pathlib.Path, shard_names: Sequence[str], source: Sequence[bytes],
                 progress: bool = True) -> list[np.ndarray]:
    """The class indices of every record of a split, in record order.

    From the split's labels index (`<split>.labels.npz`, written by data_prep.convert and
    data_prep.tfds_builder) when it was written for `shard_names`; otherwise (e.g. a folder
    converted before the index existed) by reading every record of `source` (0.3 ms a record:
    minutes for AS-2M, on every start).
    """
    labels = records.read_labels_index(index, shard_names)
    if labels is not None and len(labels) == len(source):
        return labels
    logging.getLogger(__name__).info(
        "%s is missing or stale: reading the labels of all %d records for balanced sampling "
        "(rerunning data_prep on the same input writes it)", index, len(source))
    return record_labels(source, progress)


def record_labels(source: Sequence[bytes], progress: bool = True) -> list[np.ndarray]:
    """The class indices of every record of `source`, in record order (reads each record once)."""
    out = []
    for i in tqdm(range(len(source)), desc="reading labels for balanced sampling", unit="clip",
                  disable=not progress, mininterval=2.0):
        out.append(records.decode(source[i], decode_frames=False, fbank_dtype=np.float16)["labels"])
    return out


class WeightedEpochs(grain.MapDataset):
    """Clip indices: epoch e is N draws with replacement, p proportional to `weights`.

    Position i is draw i % N of epoch i // N, so `TrainVisit` reads the epoch off the position
    as with the uniform shuffle. `num_epochs=None` repeats forever.
    """

    _MUTATES_ELEMENT_SPEC = False

    def __init__(self, weights: np.ndarray, seed: int, num_epochs: int | None = None):
        super().__init__([])
        weights = np.asarray(weights, np.float64)
        if weights.ndim != 1 or not len(weights) or np.any(weights < 0) or not weights.sum() > 0:
            raise ValueError("weights must be a non-empty 1-D array of non-negative numbers "
                             "with a positive sum")
        self._p = weights / weights.sum()
        self._seed = seed
        self._n = len(weights)
        self._length = sys.maxsize if num_epochs is None else self._n * num_epochs
        self._cache: tuple[int, np.ndarray] | None = None

    def __len__(self) -> int:
        return self._length

    def _epoch(self, epoch: int) -> np.ndarray:
        """The N draws of `epoch`; the latest epoch is kept (one tuple: safe across threads)."""
        cached = self._cache
        if cached is None or cached[0] != epoch:
            rng = np.random.default_rng([self._seed, epoch])
            cached = (epoch, rng.choice(self._n, size=self._n, replace=True, p=self._p))
            self._cache = cached
        return cached[1]

    def __getitem__(self, index):
        if isinstance(index, slice):
            return self.slice(index)
        epoch, draw = divmod(int(index), self._n)
        return int(self._epoch(epoch)[draw])

    def __str__(self) -> str:
        return f"WeightedEpochs(n={self._n}, seed={self._seed})"
