"""Build or update a moment index: every (window, frame) pair of every media file, embedded.

    summary = build_index("demo_out/run", "demo_out/videos", "idx")

Files are cut into consecutive segments exactly as the training data is made
(`segments.iter_segments`); each segment's N pairs go through the model in one call and
land on disk right away, so memory is bounded by a segment, not by the file. A rerun embeds
only new or changed files (size and modification time), keeps the rest, and drops files that
no longer exist. A bad file is reported with its reason and skipped; it is retried when it
changes. An index built with another model, weights or input settings is refused.
"""

from __future__ import annotations

import dataclasses
import json
import os
import pathlib
import uuid
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
from tqdm import tqdm

from cavmae_jax.search import store
from cavmae_jax.search.embed import Embedder, IndexMismatch, describe_mismatch
from cavmae_jax.search.segments import MEDIA_EXTS, Segment, iter_segments
from data_prep.clips import failure_reason


@dataclasses.dataclass
class IndexSummary:
    """What one `build_index` call did."""

    processed: list[str]  # files embedded by this run
    skipped: int  # unchanged files kept as they were
    removed: list[str]  # files gone from disk, dropped from the index
    failed: list[tuple[str, str]]  # (file, reason)
    moments: int  # moments in the index afterwards
    files: int  # files in the index afterwards


def collect_media(inputs: str | os.PathLike | Sequence[str | os.PathLike]
                  ) -> list[tuple[pathlib.Path, str]]:
    """(absolute path, display name) of every media file: folders recursively, sorted (search
    reports and indexes inside them are skipped)."""
    items = [inputs] if isinstance(inputs, (str, os.PathLike)) else list(inputs)
    out: dict[pathlib.Path, str] = {}
    for item in items:
        p = pathlib.Path(item)
        if not p.exists():
            raise FileNotFoundError(f"input not found: {item}")
        if p.is_file():
            out[p.resolve()] = p.name
            continue
        for f in sorted(p.rglob("*")):
            if f.is_file() and f.suffix.lower() in MEDIA_EXTS and not _ours(f.parent, p):
                out[f.resolve()] = str(f.relative_to(p))
    if not out:
        raise ValueError(f"no video or audio files in {', '.join(map(str, items))} (looked for "
                         f"{' '.join(MEDIA_EXTS)})")
    return list(out.items())


def _ours(folder: pathlib.Path, root: pathlib.Path) -> bool:
    """Whether `folder` (under `root`) is inside a search report or index: not footage."""
    from cavmae_jax.search.report import MARKER

    for d in (folder, *folder.parents):
        if (d / MARKER).exists() or (d / store.MANIFEST).exists():
            return True
        if d == root:
            return False
    return False


def _stamp(path: pathlib.Path) -> dict[str, int]:
    st = path.stat()
    return {"size": int(st.st_size), "mtime_ns": int(st.st_mtime_ns)}


def segment_rows(seg: Segment, audio_emb: np.ndarray, video_emb: np.ndarray | None
                 ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One segment's embeddings [N, D] x 2 and moment rows [N] (file id filled in later)."""
    n = len(seg.times)
    rows = np.zeros(n, store.MOMENT_DTYPE)
    rows["segment"], rows["pair"] = seg.index, np.arange(n)
    rows["has_video"] = seg.frames is not None
    rows["has_audio"] = seg.windows_s[:, 1] > seg.windows_s[:, 0]
    rows["time"] = seg.times
    rows["win_start"], rows["win_end"] = seg.windows_s[:, 0], seg.windows_s[:, 1]
    rows["frame"] = seg.frame_index
    if video_emb is None:
        video_emb = np.zeros_like(audio_emb)
    return audio_emb, video_emb, rows


def _embed_file(embedder: Embedder, path: pathlib.Path, writer: store.RowWriter
                ) -> dict[str, Any]:
    """Embeds every segment of one file into `writer`; returns its manifest facts."""
    segments, has_video, end = 0, False, 0.0
    for seg in iter_segments(path, embedder.spec):
        a, v = embedder.embed_pairs(seg.audio, seg.frames)
        if seg.audio is None:
            a = np.zeros_like(v)  # no sound track: never matched by sound
        writer.append(*segment_rows(seg, a, v if seg.frames is not None else None))
        segments += 1
        has_video = seg.frames is not None
        end = seg.start_s + seg.duration_s
    return {"segments": segments, "has_video": has_video, "duration_s": end}


def _existing(index_dir: pathlib.Path) -> dict[str, Any] | None:
    """The manifest of an existing index, or None for a new or empty folder."""
    if not index_dir.exists() or (index_dir.is_dir() and not any(
            p for p in index_dir.iterdir() if p.name != ".lock")):
        return None
    if index_dir.is_dir() and not (index_dir / store.MANIFEST).exists():
        raise store.NotAnIndex(f"{index_dir} exists and is not a search index (no "
                               f"{store.MANIFEST}); choose a new or empty --index folder")
    return store.read_manifest(index_dir)


def _check_model(index_dir: pathlib.Path, manifest: dict[str, Any], embedder: Embedder) -> None:
    why = describe_mismatch(manifest["identity"], embedder.identity)
    if why:
        raise IndexMismatch(f"{index_dir} was built with another model: {why}; use a new "
                            "--index folder, or the index's checkpoint "
                            f"({manifest['identity'].get('checkpoint')})")


def build_index(checkpoint: str | os.PathLike | Embedder,
                inputs: str | os.PathLike | Sequence[str | os.PathLike],
                index_dir: str | os.PathLike, progress: bool = True,
                say: Callable[[str], None] = tqdm.write) -> IndexSummary:
    """Adds the new or changed media files under `inputs` to the index at `index_dir`.

    `checkpoint`: a checkpoint path, or an `Embedder` already loaded. Inputs and the index
    folder are checked before the model is loaded, so such mistakes fail at once.
    """
    index_dir = pathlib.Path(index_dir)
    media = collect_media(inputs)
    manifest = _existing(index_dir)
    embedder = (checkpoint if isinstance(checkpoint, Embedder)
                else Embedder.from_checkpoint(checkpoint))
    if manifest is not None:
        _check_model(index_dir, manifest, embedder)
    with store.locked(index_dir):
        return _update(index_dir, embedder, media, manifest, progress, say)


def _update(index_dir: pathlib.Path, embedder: Embedder, media: list[tuple[pathlib.Path, str]],
            manifest: dict[str, Any] | None, progress: bool,
            say: Callable[[str], None]) -> IndexSummary:
    old_files = {f["path"]: f for f in (manifest or {}).get("files", [])}
    old_failures = {f["path"]: f for f in (manifest or {}).get("failures", [])}
    todo, kept, failures = [], [], []
    for path, name in media:
        stamp = _stamp(path)
        known = old_files.get(str(path))
        if known is not None and (known["size"], known["mtime_ns"]) == (
                stamp["size"], stamp["mtime_ns"]):
            kept.append(known)
        elif str(path) in old_failures and all(
                old_failures[str(path)][k] == stamp[k] for k in stamp):
            failures.append(old_failures[str(path)])  # unchanged bad file: not retried
        else:
            todo.append((path, name, stamp))
    scanned = {str(p) for p, _ in media}
    removed = []
    for p, f in old_files.items():  # files of earlier inputs: kept while they exist
        if p in scanned:
            continue
        if pathlib.Path(p).exists():
            kept.append(f)
        else:
            removed.append(f["name"])
    failures += [f for p, f in old_failures.items() if p not in scanned
                 and pathlib.Path(p).exists()]
    tmp = index_dir / f".tmp-{uuid.uuid4().hex[:8]}"
    writer = store.RowWriter(tmp, embedder.dim)
    processed, failed, new_files = [], [], []
    try:
        bar = tqdm(todo, desc="indexing", unit="file", disable=not progress or not todo)
        for path, name, stamp in bar:
            bar.set_postfix_str(name[-40:])
            first = writer.rows
            try:
                facts = _embed_file(embedder, path, writer)
            except KeyboardInterrupt:
                raise
            except Exception as e:  # noqa: BLE001 - one bad file must not stop the run
                writer.truncate(first)
                reason = failure_reason(e)
                failed.append((name, reason))
                failures.append({"path": str(path), "name": name, "reason": reason, **stamp})
                say(f"skipped {name}: {reason}")
                continue
            processed.append(name)
            new_files.append({"path": str(path), "name": name, **stamp, **facts,
                              "first": first, "count": writer.rows - first})
        bar.close()
        total = sum(f["count"] for f in kept) + writer.rows
        if manifest is not None and not processed and not removed and len(failures) == len(
                manifest.get("failures", [])):
            return IndexSummary([], len(kept), [], failed, total, len(kept))
        old = store.Index(index_dir) if manifest is not None else None
        new_rows = writer.arrays()
        pieces, files, first = [], [], 0
        for src, group in (({"audio": old.audio, "video": old.video, "moments": old.moments}
                            if old else None, kept), (new_rows, new_files)):
            for f in group:
                pieces.append((src, f["first"], f["count"], len(files)))
                files.append({**f, "first": first})
                first += f["count"]
        names = store.write_generation(index_dir, tmp, uuid.uuid4().hex[:8], pieces,
                                       embedder.dim)
        del old, new_rows
        identity = embedder.identity
        out = {"format": store.FORMAT, "version": store.VERSION, "identity": identity,
               "checkpoint": identity["checkpoint"], "source_checkpoint": embedder.source,
               "dim": embedder.dim, "arrays": names,
               "files": files, "failures": failures,
               "moments": int(sum(f["count"] for f in files))}
        store.atomic_write_text(index_dir / store.MANIFEST, json.dumps(out, indent=1) + "\n")
    finally:
        writer.close()
        store.remove_unreferenced(index_dir, store.read_manifest(index_dir)["arrays"]
                                  if (index_dir / store.MANIFEST).exists() else {})
    return IndexSummary(processed, len(kept), removed, failed, out["moments"], len(files))
