"""Reading what the user points `data_prep.convert` at: the inputs, their labels and splits.

`collect_items(PATH, ...)` turns a folder of videos, an official datafile JSON or a CSV of
(visual, audio) pairs -- with an optional label file (a vocabulary, or per-clip labels) and an
optional deterministic holdout split -- into `Item`s plus the inputs that failed early
(duplicates, unknown labels, bad split names). `data_prep.convert` and the TFDS builder both
start here, so they see exactly the same clips.
"""

from __future__ import annotations

import csv
import dataclasses
import hashlib
import io
import json
import math
import os
import pathlib
import re
import sys
from collections.abc import Iterator, Sequence
from typing import Any

VIDEO_EXTS = (".mp4", ".m4v", ".mkv", ".webm", ".avi", ".mov", ".flv", ".mpg", ".mpeg", ".ts",
              ".3gp", ".ogv", ".wmv")
IMAGE_EXTS = (".jpg", ".jpeg", ".png", ".bmp", ".webp")
AUDIO_EXTS = (".wav", ".flac", ".mp3", ".m4a", ".aac", ".ogg", ".opus", ".wma", ".aiff", ".aif")


def readable(name: str) -> str:
    """A name as text that UTF-8 can store: bytes that are not UTF-8 (file names from other
    systems, held by Python as lone surrogates) become `\\xNN` escapes (b"caf\\xe9" ->
    "caf\\\\xe9")."""
    try:
        return name.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
    except UnicodeEncodeError:  # other lone surrogates (from a JSON \uXXXX escape)
        return name.encode("utf-8", "backslashreplace").decode("utf-8")


def _note(message: str) -> None:
    print(f"note: {message}", file=sys.stderr, flush=True)


def read_text(path: str | os.PathLike, what: str) -> str:
    """A text file given by flag `what`, as UTF-8 (a byte-order mark is dropped).

    Raises SystemExit naming the file and the line when it cannot be read or is not UTF-8.
    """
    try:
        data = pathlib.Path(path).read_bytes()
    except OSError as e:
        raise SystemExit(f"{what} {path}: cannot read it: {e.strerror or e}") from None
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        line = data[:e.start].count(b"\n") + 1
        bad = data[e.start:e.start + 1].hex()
        raise SystemExit(f"{what} {path} line {line}: not UTF-8 text (byte 0x{bad}: {e.reason}); "
                         "save the file as UTF-8 (with or without BOM)") from None


def read_csv(path: str | os.PathLike, what: str) -> list[list[str]]:
    """Every row of a UTF-8 CSV (with or without BOM); see `read_text`."""
    text = read_text(path, what)
    try:
        return list(csv.reader(io.StringIO(text, newline="")))
    except csv.Error as e:
        raise SystemExit(f"{what} {path}: not a readable CSV ({e})") from None


@dataclasses.dataclass(frozen=True)
class Item:
    """One input clip. Exactly one of `video`, `image`, `frame_paths` supplies the frames."""

    id: str
    split: str
    source: str  # path as the user gave it (relative to the input folder for folders)
    video: str | None = None
    audio: str | None = None  # separate audio file; None -> the video's audio track
    image: str | None = None
    frame_paths: tuple[str, ...] | None = None
    labels: tuple[int, ...] = ()


def read_label_csv(path: str, flag: str = "--labels"
                   ) -> tuple[list[dict[str, Any]], dict[str, int]]:
    """The official class_labels_indices.csv (index,mid,display_name) -> (vocab, lookup)."""
    vocab, lookup = [], {}
    rows = read_csv(path, flag)
    for line, values in enumerate(rows[1:], start=2):
        if not values:
            continue
        row = dict(zip(rows[0], values, strict=False))
        try:
            idx = int(row["index"])
        except (KeyError, ValueError):
            raise SystemExit(f"{flag} {path} line {line}: index {row.get('index')!r} is not "
                             "an integer") from None
        mid = row.get("mid") or row.get("display_name")
        name = row.get("display_name") or mid
        vocab.append({"index": idx, "mid": mid, "display_name": name})
        lookup[mid] = idx
        lookup.setdefault(name, idx)
    vocab.sort(key=lambda v: v["index"])
    return vocab, lookup


def vocab_lookup(vocab: Sequence[dict[str, Any]]) -> dict[str, int]:
    """Label string (mid, else display name) -> index, as read_label_csv builds it."""
    lookup = {v["mid"]: v["index"] for v in vocab}
    for v in vocab:
        lookup.setdefault(v["display_name"], v["index"])
    return lookup


def _csv_header(path: str, flag: str) -> list[str]:
    rows = read_csv(path, flag)
    return [c.strip().lower() for c in (rows[0] if rows else [])]


def label_file_kind(path: str, flag: str = "--labels") -> str:
    """Tells a label file's kind by its header: "vocabulary" or "per_clip"."""
    cols = set(_csv_header(path, flag))
    if "index" in cols and cols & {"mid", "display_name"}:
        return "vocabulary"
    if cols & {"labels", "label"} and cols & {"id", "path"}:
        return "per_clip"
    raise SystemExit(
        f"{flag} {path}: header {sorted(cols)} is neither a vocabulary "
        "(index,mid,display_name: the official class_labels_indices.csv) nor a per-clip label "
        "file (id or path, labels[, split])")


@dataclasses.dataclass(frozen=True)
class LabelEntry:
    """One row of a per-clip label file."""

    key: str  # clip id, relative path (normalized, posix) or absolute real path
    is_path: bool  # from the path column: matches exactly, never by file stem / name
    labels: tuple[str, ...]
    split: str | None
    line: int


def _split_clip_labels(field: str) -> tuple[str, ...]:
    """`a;b` or `a,b` -> (a, b); `;` wins, so names with commas survive when `;` separates."""
    parts = field.split(";") if ";" in field else field.split(",")
    return tuple(dict.fromkeys(x.strip() for x in parts if x.strip()))


def read_clip_labels(path: str) -> list[LabelEntry]:
    """A per-clip label file (id|path, labels[, split]) -> its entries, in file order.

    A `path` value (relative to the input folder, or absolute) wins over `id` in the same row.
    Raises SystemExit when a clip is listed twice.
    """
    entries, first = [], {}
    rows = read_csv(path, "--labels")
    cols = [c.strip().lower() for c in rows[0]] if rows else []
    for line, row in enumerate(rows[1:], start=2):
        if not row or not any(c.strip() for c in row):
            continue
        rec = {cols[i]: row[i].strip() for i in range(min(len(cols), len(row)))}
        ref = rec.get("path") or ""
        if ref:
            if os.path.isabs(ref):
                key = os.path.realpath(ref)
            else:  # relative to the input folder, as the rows' `source` is
                key = pathlib.PurePath(os.path.normpath(ref)).as_posix()
        else:
            key = rec.get("id") or ""
        if not key:
            raise SystemExit(f"--labels {path} line {line}: no id / path value")
        if key in first:
            raise SystemExit(f"--labels {path} line {line}: {key!r} is listed twice (first "
                             f"on line {first[key]})")
        first[key] = line
        labels = _split_clip_labels(rec.get("labels") or rec.get("label") or "")
        entries.append(LabelEntry(key, bool(ref), labels, rec.get("split") or None, line))
    return entries


def _apply_clip_labels(raw: list[dict], entries: Sequence[LabelEntry], label_csv: str) -> int:
    """Sets labels / split of folder rows from a per-clip file; returns #entries matching no file.

    An entry matches a row by id, relative path or absolute path; an id entry failing those
    matches by file stem or file name when exactly one file has it. Rows without an entry get a
    "no labels entry" failure.
    """
    exact: dict[str, list[int]] = {}
    loose: dict[str, list[int]] = {}
    for i, r in enumerate(raw):
        name = pathlib.PurePosixPath(r["source"]).name
        for k in {r["id"], r["source"], os.path.realpath(r["video"])}:
            exact.setdefault(k, []).append(i)
        for k in {name, pathlib.PurePosixPath(name).stem}:
            loose.setdefault(k, []).append(i)
    fname = os.path.basename(label_csv)
    assigned: dict[int, int] = {}  # row -> line of its entry
    unmatched = 0
    for e in entries:
        rows = exact.get(e.key) or (None if e.is_path else loose.get(e.key)) or []
        if not rows:
            unmatched += 1
            continue
        if e.key not in exact and len(rows) > 1:
            for i in rows:
                raw[i].setdefault("fail", f"labels entry {e.key!r} ({fname} line {e.line}) is "
                                          f"ambiguous: {len(rows)} files have that name; use the "
                                          f"id {raw[i]['id']!r} or a path column")
            continue
        for i in rows:  # several only when files share an id (a.mp4, a.mkv): "duplicate id"
            if i in assigned:
                raw[i].setdefault("fail", f"two labels entries in {fname} (lines {assigned[i]} "
                                          f"and {e.line})")
                continue
            assigned[i] = e.line
            raw[i]["labels"] = list(e.labels)
            if e.split:
                raw[i]["split"], raw[i]["explicit_split"] = e.split, True
    for i, r in enumerate(raw):
        if i not in assigned:
            r.setdefault("fail", f"no labels entry in {fname} for id {r['id']!r} (list it there, "
                                 "with an empty labels field to keep it unlabeled)")
    return unmatched


def holdout_rank(clip_id: str) -> bytes:
    """Sort key of `--holdout`: the clips with the smallest keys are held out."""
    return hashlib.sha256(clip_id.encode("utf-8")).digest()


def _assign_holdout(raw: list[dict], fraction: float, holdout_split: str) -> None:
    """Moves round(fraction * n) of the n clips without an explicit split to holdout_split."""
    ids = sorted({r["id"] for r in raw if r["id"] and not r.get("explicit_split")
                  and "fail" not in r}, key=lambda i: (holdout_rank(i), i))
    chosen = set(ids[:math.floor(fraction * len(ids) + 0.5)])
    for r in raw:
        if not r.get("explicit_split") and r["id"] in chosen:
            r["split"] = holdout_split


_SPLIT_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]*")


def valid_split_name(name: str) -> bool:
    """Split names become file name prefixes: letters, digits, `_` and `-`."""
    return bool(_SPLIT_NAME.fullmatch(name))


def _split_labels(s: Any) -> list[str]:
    if s is None:
        return []
    if isinstance(s, (list, tuple)):
        return [str(x).strip() for x in s if str(x).strip()]
    return [x.strip() for x in str(s).split(",") if x.strip()]


def _resolve(p: str, base: pathlib.Path) -> str:
    """Paths in a JSON/CSV: as given if that exists, else relative to the file's folder."""
    if os.path.isabs(p) or os.path.exists(p):
        return p
    alt = base / p
    return str(alt) if alt.exists() else p


def _walk_files(root: pathlib.Path) -> list[pathlib.Path]:
    """Every file under `root`, sorted; symlinked folders are followed, except a link back to
    one of its own parent folders (a loop), which is reported once and skipped."""
    files: list[pathlib.Path] = []
    loops: dict[str, pathlib.Path] = {}

    def visit(folder: pathlib.Path, parents: frozenset[str]) -> None:
        try:
            entries = list(os.scandir(folder))
        except OSError as e:
            _note(f"{readable(str(folder))}: cannot list it ({e.strerror or e}); skipped")
            return
        for e in entries:
            path = folder / e.name
            if e.is_dir(follow_symlinks=True):
                real = os.path.realpath(path)
                if real in parents:
                    loops.setdefault(os.path.join(os.path.realpath(folder), e.name), path)
                else:
                    visit(path, parents | {real})
            elif e.is_file(follow_symlinks=True):
                files.append(path)

    visit(root, frozenset({os.path.realpath(root)}))
    for link in loops.values():
        _note(f"{readable(str(link))} links back to {readable(os.path.realpath(link))}, a folder "
              "above it (a loop); not followed")
    return sorted(files)


def _raw_from_folder(root: pathlib.Path, split: str, label_dirs: bool) -> Iterator[dict]:
    files = _walk_files(root)
    audio_only = sum(p.suffix.lower() in AUDIO_EXTS for p in files)
    if audio_only:
        _note(f"{audio_only} audio-only file{'s' * (audio_only > 1)} skipped (e.g. "
              f"{readable(str(next(p for p in files if p.suffix.lower() in AUDIO_EXTS)))}): a "
              "folder input takes video files; for audio with images or separate audio, give a "
              "CSV of visual,audio pairs as --input")
    for p in files:
        if p.suffix.lower() not in VIDEO_EXTS:
            continue
        rel = p.relative_to(root)
        labels = [rel.parts[0]] if label_dirs and len(rel.parts) > 1 else []
        yield {"id": rel.with_suffix("").as_posix(), "split": split, "source": rel.as_posix(),
               "video": str(p), "labels": labels}


def _datafile_entries(path: pathlib.Path) -> list[dict]:
    """The entries of an official datafile `{"data": [{...}, ...]}` (or a bare list of them)."""
    try:
        data = json.loads(read_text(path, "--input"))
    except json.JSONDecodeError as e:
        raise SystemExit(f"--input {path} line {e.lineno}: not valid JSON ({e.msg})") from None
    if isinstance(data, dict):
        if "data" not in data:
            raise SystemExit(f'--input {path}: an official datafile is {{"data": [{{"wav", '
                             f'"video_id", "video_path", "labels"}}, ...]}}; this one has no '
                             f'"data" key (keys: {", ".join(map(str, list(data)[:5])) or "none"})')
        data = data["data"]
    if not isinstance(data, list) or not all(isinstance(e, dict) for e in data):
        raise SystemExit(f'--input {path}: "data" must be a list of entries {{"wav", '
                         '"video_id", "video_path", "labels"}')
    return data


def _raw_from_datafile(path: pathlib.Path, split: str, num_frames: int) -> Iterator[dict]:
    for e in _datafile_entries(path):
        vid = str(e.get("video_id", ""))
        vdir = _resolve(str(e.get("video_path", "")), path.parent)
        frames = tuple(os.path.join(vdir, f"frame_{i}", f"{vid}.jpg") for i in range(num_frames))
        wav = e.get("wav")
        yield {"id": vid, "split": str(e.get("split") or split), "source": str(wav or vid),
               "explicit_split": bool(e.get("split")),
               "audio": _resolve(str(wav), path.parent) if wav else None,
               "frame_paths": frames, "labels": _split_labels(e.get("labels"))}


_CSV_COLUMNS = {"visual", "video", "image", "audio", "labels", "label", "id", "split"}


def _raw_from_pairs(path: pathlib.Path, split: str) -> Iterator[dict]:
    rows = [r for r in read_csv(path, "--input") if r and any(c.strip() for c in r)]
    if not rows:
        return
    head = [c.strip().lower() for c in rows[0]]
    if set(head) <= _CSV_COLUMNS and ("audio" in head or "visual" in head or "video" in head):
        cols, rows = head, rows[1:]
    else:
        cols = ["visual", "audio", "labels"]
    for r in rows:
        rec = {cols[i]: r[i].strip() for i in range(min(len(cols), len(r)))}
        visual = rec.get("visual") or rec.get("video") or rec.get("image") or ""
        aud = rec.get("audio") or ""
        vis_path = _resolve(visual, path.parent) if visual else ""
        is_image = vis_path.lower().endswith(IMAGE_EXTS)
        clip_id = rec.get("id") or pathlib.PurePath(visual).stem
        yield {"id": clip_id, "split": rec.get("split") or split, "source": visual,
               "explicit_split": bool(rec.get("split")),
               "video": None if is_image else vis_path, "image": vis_path if is_image else None,
               "audio": _resolve(aud, path.parent) if aud else None,
               "labels": _split_labels(rec.get("labels") or rec.get("label"))}


def collect_items(input_path: str, split: str, num_frames: int, label_csv: str | None = None,
                  label_dirs: bool = False, vocabulary_csv: str | None = None,
                  holdout: float = 0.0, holdout_split: str = "test",
                  report: dict[str, Any] | None = None,
                  ) -> tuple[list[Item], list[dict], list[dict], str]:
    """Reads the input description -> (items, early failures, label vocabulary, input kind).

    Args:
        input_path: folder, datafile .json or pairs .csv.
        split: split of the inputs that name none.
        num_frames: frames per clip (datafile inputs name that many frame files).
        label_csv: a vocabulary (class_labels_indices.csv) or a per-clip label file (folder
            inputs only); told apart by the header.
        label_dirs: folder inputs: label = first sub-folder name.
        vocabulary_csv: class_labels_indices.csv fixing the label indices.
        holdout: fraction of the clips without an explicit split that go to `holdout_split`.
        holdout_split: where held-out clips go.
        report: if given, filled with `label_file` (kind or None), `vocabulary_fixed` (bool) and
            `labels_unmatched` (per-clip file entries that match no input file).
    """
    p = pathlib.Path(input_path)
    if p.is_dir():
        kind, raw = "folder", list(_raw_from_folder(p, split, label_dirs))
    elif p.suffix.lower() == ".json":
        kind, raw = "datafile", list(_raw_from_datafile(p, split, num_frames))
    elif p.suffix.lower() == ".csv":
        kind, raw = "pairs", list(_raw_from_pairs(p, split))
    elif p.exists():
        raise SystemExit(f"--input {input_path}: expected a folder, a .json datafile or a .csv")
    else:
        raise SystemExit(f"--input {input_path}: not found")
    for r in raw:  # names go into records, metadata.json and failures.jsonl: UTF-8 text
        r["id"], r["source"] = readable(r["id"]), readable(r["source"])
        r["labels"] = [readable(n) for n in r["labels"]]

    label_kind = label_file_kind(label_csv) if label_csv else None
    if label_kind == "vocabulary" and vocabulary_csv:
        raise SystemExit(f"--labels {label_csv} and --vocabulary {vocabulary_csv} are both "
                         "vocabularies; give one (--vocabulary goes with a per-clip --labels file)")
    if vocabulary_csv and label_file_kind(vocabulary_csv, "--vocabulary") != "vocabulary":
        raise SystemExit(f"--vocabulary {vocabulary_csv}: expected the index,mid,display_name "
                         "table (class_labels_indices.csv)")
    vocab_csv = vocabulary_csv or (label_csv if label_kind == "vocabulary" else None)
    unmatched = 0
    if label_kind == "per_clip":
        if kind != "folder":
            raise SystemExit(f"--labels {label_csv} is a per-clip label file, which goes with a "
                             f"folder --input; a {kind} input carries its own labels (and split)")
        if label_dirs:
            raise SystemExit("--label_dirs and a per-clip --labels file both set the labels; "
                             "pick one")
        unmatched = _apply_clip_labels(raw, read_clip_labels(label_csv), label_csv)
    if holdout > 0:
        _assign_holdout(raw, holdout, holdout_split)

    if vocab_csv:
        vocab, lookup = read_label_csv(vocab_csv, "--vocabulary" if vocabulary_csv else "--labels")
    else:
        names = sorted({n for r in raw for n in r["labels"]})
        vocab = [{"index": i, "mid": n, "display_name": n} for i, n in enumerate(names)]
        lookup = {n: i for i, n in enumerate(names)}

    items, failures, seen = [], [], {}
    for r in raw:
        fail = r.get("fail")
        if fail is not None:
            pass
        elif not r["id"]:
            fail = "empty id"
        elif not valid_split_name(r["split"]):
            fail = f"invalid split name {r['split']!r} (letters, digits, '_' and '-' only)"
        elif (r["split"], r["id"]) in seen:
            fail = f"duplicate id {r['id']!r} (first used by {seen[(r['split'], r['id'])]})"
        elif not (r.get("video") or r.get("image") or r.get("frame_paths")):
            fail = "no visual file given"
        unknown = [n for n in r["labels"] if n not in lookup]
        if fail is None and unknown:
            fail = f"unknown label(s) {unknown} (not in the label vocabulary)"
        if fail is not None:
            failures.append({"path": r["source"], "id": r["id"], "split": r["split"],
                             "reason": fail})
            continue
        seen[(r["split"], r["id"])] = r["source"]
        items.append(Item(
            id=r["id"], split=r["split"], source=r["source"], video=r.get("video"),
            audio=r.get("audio"), image=r.get("image"), frame_paths=r.get("frame_paths"),
            labels=tuple(sorted({lookup[n] for n in r["labels"]}))))
    if report is not None:
        report.update(label_file=label_kind, vocabulary_fixed=vocab_csv is not None,
                      labels_unmatched=unmatched)
    return items, failures, vocab, kind
