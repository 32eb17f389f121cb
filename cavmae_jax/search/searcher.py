"""Ranking: a query's embeddings against every moment of an index -> hits per direction.

    from cavmae_jax.search import Searcher, audio_query
    searcher = Searcher("idx")                     # the index's own checkpoint, loaded lazily
    results = searcher.search(audio_query(searcher.embedder, "dog.wav", 3.0, 5.0), top=10)
    results["by_picture"].hits[0].file, ...time, ...score

Scoring is exact (every moment, cosine similarity); moments of one file closer than `merge_s`
merge into one hit at the best of them.
"""

from __future__ import annotations

import dataclasses
import math
import os
from typing import Any

import numpy as np

from cavmae_jax.search.embed import Embedder, IndexMismatch, describe_mismatch
from cavmae_jax.search.query import Query, QueryError, embed_query
from cavmae_jax.search.segments import InputSpec
from cavmae_jax.search.store import Index


@dataclasses.dataclass
class Hit:
    """One matching moment of a file (nearby moments of the file merged into it)."""

    file: str  # the file's name as indexed (relative to the indexed folder)
    path: str  # absolute path of the source
    time: float  # seconds into the file of the best moment: by picture its frame's time, by
    # sound the start of its sound window
    score: float  # cosine similarity
    row: int  # the moment's row in the index
    segment: int
    pair: int
    window: tuple[float, float]  # its sound window [start, end) in seconds
    frame: int  # decode-order frame index in the source (-1: no picture)
    file_id: int

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["window"] = list(self.window)
        return d


@dataclasses.dataclass
class Results:
    """Ranked hits of one direction, and every moment's score (for timelines)."""

    direction: str  # e.g. 'audio->video'
    label: str  # 'by picture' | 'by sound'
    hits: list[Hit]
    scores: np.ndarray  # [M] float32 (-inf where a moment has no such side)
    times: np.ndarray  # [M] float64 each moment's time as the hits count it


DIRECTIONS = {  # query kind -> [(result key, query side, index side)]
    "audio": [("by_picture", "audio", "video"), ("by_sound", "audio", "audio")],
    "image": [("by_sound", "video", "audio"), ("by_picture", "video", "video")],
    "video": [("by_sound", "audio", "audio"), ("by_picture", "video", "video")],
}
BLOCK = 4096  # rows per step of the jitted scan (fits in cache as float32)


class Searcher:
    """Scores queries against an index: every query is one exact pass over every moment.

    The float16 arrays are handed to XLA the first time a side is searched; on CPU it reads
    them in place from the memory map (no copy), a block of rows at a time.
    """

    def __init__(self, index: Index | str | os.PathLike, embedder: Embedder | None = None):
        """`embedder`: the model for queries (checked against the index); default: the
        index's own checkpoint, loaded when a query first needs it."""
        self.index = index if isinstance(index, Index) else Index(index)
        self._embedder = embedder
        self._sides: dict[str, Any] = {}
        self._has = {side: np.asarray(self.index.moments[f"has_{side}"]).astype(bool)
                     for side in ("audio", "video")}
        self._file = np.asarray(self.index.moments["file"])
        # A moment's time: its frame's (picture side), its sound window's start (sound side).
        self._times = {"video": np.asarray(self.index.moments["time"]),
                       "audio": np.asarray(self.index.moments["win_start"])}
        if embedder is not None:
            self.check(embedder)

    @property
    def spec(self) -> InputSpec:
        """The inputs the index was made with (what a query must be made like)."""
        return InputSpec(**self.index.identity["inputs"])

    def check(self, embedder: Embedder) -> None:
        """Raises IndexMismatch unless `embedder` is the model the index was built with."""
        why = describe_mismatch(self.index.identity, embedder.identity)
        if why:
            raise IndexMismatch(f"the checkpoint does not match the index {self.index.path}: "
                                f"{why}")

    @property
    def embedder(self) -> Embedder:
        """The index's own checkpoint, loaded on first use."""
        if self._embedder is None:
            source = self.index.manifest["source_checkpoint"]
            try:
                self._embedder = Embedder.from_checkpoint(source)
            except FileNotFoundError:
                raise FileNotFoundError(
                    f"the index's checkpoint {source} is gone; pass --checkpoint=C (the same "
                    "model, e.g. its export)") from None
            self.check(self._embedder)
        return self._embedder

    def _side(self, side: str) -> tuple[Any, np.ndarray]:
        if side not in self._sides:
            import jax

            arr = getattr(self.index, side)
            body = (len(arr) // BLOCK) * BLOCK
            main = jax.block_until_ready(jax.device_put(arr[:body])) if body else None
            self._sides[side] = (main, np.asarray(arr[body:], np.float32))
        return self._sides[side]

    def preload(self) -> None:
        for side in ("audio", "video"):
            self._side(side)

    def scores(self, q: np.ndarray, side: str) -> np.ndarray:
        """[M] float32 cosine similarity of unit vector q [D] with every moment's `side`."""
        body, tail = self._side(side)
        q = np.asarray(q, np.float32)
        parts = [] if body is None else [np.asarray(_scan(body, q))]
        parts.append(tail @ q)
        out = np.concatenate(parts)
        out[~self._has[side]] = -np.inf
        return out

    def rank(self, scores: np.ndarray, top: int = 10, merge_s: float | None = None,
             side: str = "video") -> list[Hit]:
        """The `top` best hits: moments of one file within `merge_s` seconds merge into one.

        scores: [M] from `scores(q, side)`; `side` decides the time a hit is reported at.
        """
        times = self._times[side]
        merge_s = self.index.manifest["identity"]["inputs"]["clip_seconds"] / 2 if (
            merge_s is None) else merge_s
        valid = int(np.isfinite(scores).sum())
        if valid == 0:
            return []
        files = self.index.files
        hits: list[Hit] = []
        pool = min(valid, max(64, top * 32))
        seen = 0
        while True:
            cand = np.argpartition(-scores, pool - 1)[:pool] if pool < len(scores) else (
                np.arange(len(scores)))
            cand = cand[np.lexsort((cand, -scores[cand]))]  # best first, ties: earlier first
            hits, seen = [], 0
            for r in cand:
                if not np.isfinite(scores[r]):
                    break
                seen += 1
                f, t = int(self._file[r]), float(times[r])
                if any(h.file_id == f and abs(h.time - t) <= merge_s for h in hits):
                    continue
                m = self.index.moments[r]
                hits.append(Hit(files[f]["name"], files[f]["path"], t, float(scores[r]), int(r),
                                int(m["segment"]), int(m["pair"]),
                                (float(m["win_start"]), float(m["win_end"])),
                                int(m["frame"]) if m["has_video"] else -1, f))
                if len(hits) == top:
                    return hits
            if pool >= valid:
                return hits
            pool = min(valid, pool * 4)

    def search(self, query: Query, top: int = 10, merge_s: float | None = None
               ) -> dict[str, Results]:
        """{'by_sound': Results, 'by_picture': Results} for the sides the query has."""
        if len(self.index) == 0:
            raise QueryError(f"the index {self.index.path} holds no moments")
        if (query.windows is not None and query.audio is None) or (
                query.picture is not None and query.video is None):
            embed_query(self.embedder, query)
        out = {}
        for key, q_side, i_side in DIRECTIONS[query.kind]:
            q = getattr(query, q_side)
            if q is None:
                continue
            s = self.scores(q, i_side)
            out[key] = Results(f"{q_side}->{i_side}", key.replace("_", " "),
                               self.rank(s, top, merge_s, i_side), s, self._times[i_side])
        return out


def _scan_impl(body, q):
    import jax
    import jax.numpy as jnp

    blocks = body.reshape(-1, BLOCK, body.shape[-1])
    return jax.lax.map(lambda c: c.astype(jnp.float32) @ q, blocks).reshape(-1)


_scan_jit = None


def _scan(body, q):
    """[B * BLOCK, D] float16 (device) @ q [D] -> [B * BLOCK] float32, block by block."""
    global _scan_jit
    if _scan_jit is None:
        import jax

        _scan_jit = jax.jit(_scan_impl)
    return _scan_jit(body, q)


def seconds(x: float) -> str:
    """12.5 -> '0:12.5', 3725 -> '1:02:05.0'."""
    h, rest = divmod(max(0.0, x), 3600)
    m, s = divmod(rest, 60)
    return (f"{int(h)}:{int(m):02d}:{s:04.1f}" if h else f"{int(m)}:{s:04.1f}") if (
        math.isfinite(x)) else "-"
