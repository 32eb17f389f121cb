"""Converts videos (or the official datafile JSON, or a CSV of visual/audio pairs) to ArrayRecord.

    python -m data_prep.convert --input PATH --output DIR [--labels CSV] [--workers N]
        [--num_frames 16] [--window_length 416] [--target_length 1024] [--mix first|mean]
        [--split NAME] [--split_long] [--clip_seconds 10] [--shard_size 1024] [--strict]

Inputs (PATH):
  * a folder: every video file under it (recursive; by extension, see VIDEO_EXTS), id = path
    relative to PATH without extension; `--label_dirs` takes each file's first folder as label;
  * an official datafile `*.json` `{"data": [{"wav", "video_id", "video_path", "labels"}]}`:
    frames are read from `video_path/frame_{i}/<video_id>.jpg` (i < num_frames), audio from `wav`;
  * a `*.csv` of pairs: columns `visual,audio[,labels][,id][,split]` (header optional when in
    that order); `visual` is a video or a still image (repeated for all N frames); `audio` may
    be empty (then the visual file's audio track is used).
  Labels are comma-separated strings (AudioSet mids or names). With `--labels` (the official
  `class_labels_indices.csv`: index,mid,display_name) they map to its indices; otherwise the
  vocabulary is the sorted set of label strings seen. A JSON entry / CSV row may carry `split`.

Per clip (the official recipe, spec §3 and §1.6): decode audio, first channel (`--mix`),
resample to 16 kHz, remove the mean, Kaldi fbank, pad/cut to `target_length`; the window table;
N frames at the official indices, shorter side -> 224 + center crop, JPEG. Clips shorter than
10 s are zero-padded in the fbank (log) domain exactly as the official loader does; audio with
fewer than 400 samples (one 25 ms frame) yields no fbank frame at all and is REJECTED to
failures.jsonl (the official loader would silently substitute an all-zero fbank). With
`--split_long`, an input longer than `clip_seconds` becomes consecutive `clip_seconds` records
(`<id>_seg000`, ...); a trailing piece shorter than half a clip is dropped.

Output: `DIR/<split>.array_record-xxxxx-of-yyyyy` (records from `cavmae_jax.data.records`,
ArrayRecord "group_size:1,uncompressed"), `DIR/metadata.json`, `DIR/failures.jsonl`.
Shard i of a split holds the inputs i*shard_size .. (i+1)*shard_size-1 in input order (folders
sorted), so reruns give byte-identical shards. Shards are written to `*.tmp` and renamed when
complete; per-shard bookkeeping lives in `DIR/.convert/`, so a rerun skips finished shards.
Exit status is 0 unless nothing converted, or `--strict` and anything failed.
"""

from __future__ import annotations

import argparse
import collections
import concurrent.futures
import csv
import dataclasses
import hashlib
import itertools
import json
import math
import multiprocessing
import os
import pathlib
import sys
import time
from collections.abc import Iterable, Iterator, Sequence
from typing import Any

import numpy as np

from cavmae_jax import audio, video
from cavmae_jax.data import records

CONVERTER_VERSION = "1"
ARRAY_RECORD_OPTIONS = "group_size:1,uncompressed"
VIDEO_EXTS = (".mp4", ".m4v", ".mkv", ".webm", ".avi", ".mov", ".flv", ".mpg", ".mpeg", ".ts",
              ".3gp", ".ogv", ".wmv")
IMAGE_EXTS = (".jpg", ".jpeg", ".png", ".bmp", ".webp")
SILENCE_PEAK = 1e-4  # |x| <= this everywhere (-80 dBFS) counts as silent: kept, but flagged
STATE_DIR = ".convert"


class ClipError(Exception):
    """A per-input problem with a plain-language reason (goes to failures.jsonl)."""


@dataclasses.dataclass(frozen=True)
class ConvertConfig:
    """Everything that changes the records' content (stored in metadata.json)."""

    num_frames: int = 16
    window_length: int = 416
    target_length: int = 1024
    clip_seconds: float = 10.0
    image_size: int = video.IMAGE_SIZE
    jpeg_quality: int = video.JPEG_QUALITY
    mix: str = "first"
    split_long: bool = False
    sample_rate: int = audio.SAMPLE_RATE


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


# ----------------------------------------------------------------------------- per clip


def _check_file(path: str, what: str) -> None:
    if not os.path.exists(path):
        raise ClipError(f"{what} file not found: {path}")
    if os.path.isdir(path):
        raise ClipError(f"{what} path is a directory: {path}")
    if os.path.getsize(path) == 0:
        raise ClipError(f"{what} file is empty (0 bytes): {path}")


def _media_error(e: Exception, what: str) -> ClipError:
    """A decoder exception -> a plain reason. (PyAV's errors also subclass ValueError.)"""
    import av

    if isinstance(e, ClipError):
        return e
    if isinstance(e, av.error.FFmpegError):
        return ClipError(f"{what}: FFmpeg cannot read it (not a media file, truncated or "
                         f"corrupt): {getattr(e, 'strerror', None) or e}")
    if isinstance(e, ValueError):
        return ClipError(f"{what}: {e}")
    return ClipError(f"{what}: {type(e).__name__}: {e}")


def _load_wave(path: str, cfg: ConvertConfig) -> np.ndarray:
    try:
        return audio.load_audio(path, cfg.sample_rate, cfg.mix)
    except Exception as e:  # noqa: BLE001 - every decoder error becomes a failure reason
        raise _media_error(e, "audio") from None


def _image_jpeg(path: str, cfg: ConvertConfig) -> bytes:
    """A still image as the JPEG to store: 224x224 JPEGs are kept byte for byte."""
    from PIL import Image, UnidentifiedImageError

    _check_file(path, "image")
    try:
        with open(path, "rb") as f:
            data = f.read()
        with Image.open(path) as img:
            img.load()
            if img.format == "JPEG" and img.size == (cfg.image_size, cfg.image_size) and (
                    img.mode == "RGB"):
                return data
            arr = video.resize_center_crop(img, cfg.image_size)
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as e:
        raise ClipError(f"unreadable image {path}: {e}") from None
    return video.encode_jpeg(arr, cfg.jpeg_quality)


def _segments(num_samples: int, cfg: ConvertConfig) -> list[tuple[int, int]]:
    """[start, end) sample ranges: the whole clip, or clip_seconds pieces with --split_long."""
    if not cfg.split_long:
        return [(0, num_samples)]
    seg = int(round(cfg.clip_seconds * cfg.sample_rate))
    out = [(0, min(seg, num_samples))]
    start = seg
    while num_samples - start >= seg / 2:
        out.append((start, min(start + seg, num_samples)))
        start += seg
    return out


def process_clip(item: Item, cfg: ConvertConfig) -> list[dict[str, Any]]:
    """One input -> record examples (dicts for `records.encode`). Raises ClipError.

    Importable on its own (a TFDS/Beam builder can map it over items).
    """
    visual = item.video
    if visual is not None:
        _check_file(visual, "video")
        try:
            info = video.probe(visual)
        except Exception as e:  # noqa: BLE001
            raise _media_error(e, "video") from None
        if info.frame_count <= 0 or info.fps <= 0:
            raise ClipError("video: stream has no frames")
    audio_path = item.audio or item.video
    if audio_path is None:
        raise ClipError("no audio source given")
    if item.audio is not None:
        _check_file(item.audio, "audio")
    elif not info.has_audio:
        raise ClipError("video has no audio stream")
    wave = _load_wave(audio_path, cfg)

    still = None
    if item.image is not None:
        still = _image_jpeg(item.image, cfg)
    pre_extracted = None
    if item.frame_paths is not None:
        missing = [p for p in item.frame_paths if not os.path.isfile(p)]
        if missing:
            have = len(item.frame_paths) - len(missing)
            raise ClipError(f"missing {len(missing)} of {len(item.frame_paths)} pre-extracted "
                            f"frames (first: {missing[0]}); extract {cfg.num_frames} frames per "
                            f"clip or pass --num_frames {have}")
        pre_extracted = [_image_jpeg(p, cfg) for p in item.frame_paths]

    windows = audio.window_table(cfg.num_frames, cfg.window_length, cfg.target_length)
    segments = _segments(wave.shape[0], cfg)
    examples = []
    for j, (s0, s1) in enumerate(segments):
        piece = wave[s0:s1]
        if piece.shape[0] < audio.FRAME_LENGTH:
            raise ClipError(f"audio too short: {piece.shape[0]} samples at {cfg.sample_rate} Hz "
                            f"(< {audio.FRAME_LENGTH}, one 25 ms frame), no fbank frame")
        fbank, n_real = audio.wave_to_fbank(piece, cfg.sample_rate, cfg.target_length)
        src_idx = np.full(cfg.num_frames, -1, np.int64)
        fps = 0.0
        if visual is not None:
            start_frame = int(round(j * info.fps * cfg.clip_seconds)) if cfg.split_long else 0
            if start_frame >= info.frame_count:
                break  # video ends before the audio does: no frames for this segment
            try:
                frames, src_idx, fps = video.read_frames(
                    visual, cfg.num_frames, cfg.clip_seconds, start_frame, cfg.image_size, info)
            except Exception as e:  # noqa: BLE001
                raise _media_error(e, "video") from None
            jpegs = [video.encode_jpeg(f, cfg.jpeg_quality) for f in frames]
        elif still is not None:
            jpegs = [still] * cfg.num_frames
        else:
            jpegs = pre_extracted
        real = fbank[:n_real].astype(np.float64)
        clip_id = f"{item.id}_seg{j:03d}" if cfg.split_long and len(segments) > 1 else item.id
        silent = bool(np.max(np.abs(piece)) <= SILENCE_PEAK)
        examples.append({
            "id": clip_id,
            "fbank": fbank,
            "num_fbank_frames": n_real,
            "frames_jpeg": jpegs,
            "windows": windows,
            "labels": list(item.labels),
            "source_frame_index": src_idx,
            "source": {
                "path": item.source,
                "audio_path": item.audio or "",
                "segment": j,
                "start_s": s0 / cfg.sample_rate,
                "duration_s": piece.shape[0] / cfg.sample_rate,
                "fps": float(fps),
                "silent": silent,
            },
            # Not stored in the record: running sums for metadata's fbank mean/std.
            "_stats": (float(real.sum()), float(np.square(real).sum()), int(real.size)),
        })
    return examples


def process_item(item: Item, cfg: ConvertConfig) -> list[tuple]:
    """process_clip that never raises: [("ok", id, bytes, stats, silent), ...] / [("fail", why)]."""
    try:
        out = []
        for ex in process_clip(item, cfg):
            stats = ex.pop("_stats")
            out.append(("ok", ex["id"], records.encode(ex, cfg.jpeg_quality), stats,
                        ex["source"]["silent"]))
        if not out:
            return [("fail", "no record produced")]
        return out
    except ClipError as e:
        return [("fail", str(e))]
    except Exception as e:  # noqa: BLE001 - one bad input must not stop the run
        return [("fail", f"{type(e).__name__}: {e}")]


_WORKER_CFG: ConvertConfig | None = None


def _init_worker(cfg: ConvertConfig) -> None:
    global _WORKER_CFG
    _WORKER_CFG = cfg


def _work(item: Item) -> list[tuple]:
    assert _WORKER_CFG is not None
    return process_item(item, _WORKER_CFG)


# ----------------------------------------------------------------------------- inputs


def read_label_csv(path: str) -> tuple[list[dict[str, Any]], dict[str, int]]:
    """The official class_labels_indices.csv (index,mid,display_name) -> (vocab, lookup)."""
    vocab, lookup = [], {}
    with open(path, newline="", encoding="utf-8") as f:
        for row in csv.DictReader(f):
            idx = int(row["index"])
            mid = row.get("mid") or row.get("display_name")
            name = row.get("display_name") or mid
            vocab.append({"index": idx, "mid": mid, "display_name": name})
            lookup[mid] = idx
            lookup.setdefault(name, idx)
    vocab.sort(key=lambda v: v["index"])
    return vocab, lookup


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


def _raw_from_folder(root: pathlib.Path, split: str, label_dirs: bool) -> Iterator[dict]:
    files = sorted(p for p in root.rglob("*") if p.is_file() and p.suffix.lower() in VIDEO_EXTS)
    for p in files:
        rel = p.relative_to(root)
        labels = [rel.parts[0]] if label_dirs and len(rel.parts) > 1 else []
        yield {"id": rel.with_suffix("").as_posix(), "split": split, "source": rel.as_posix(),
               "video": str(p), "labels": labels}


def _raw_from_datafile(path: pathlib.Path, split: str, num_frames: int) -> Iterator[dict]:
    with open(path, encoding="utf-8") as f:
        data = json.load(f)
    entries = data["data"] if isinstance(data, dict) else data
    for e in entries:
        vid = str(e.get("video_id", ""))
        vdir = _resolve(str(e.get("video_path", "")), path.parent)
        frames = tuple(os.path.join(vdir, f"frame_{i}", f"{vid}.jpg") for i in range(num_frames))
        wav = e.get("wav")
        yield {"id": vid, "split": str(e.get("split") or split), "source": str(wav or vid),
               "audio": _resolve(str(wav), path.parent) if wav else None,
               "frame_paths": frames, "labels": _split_labels(e.get("labels"))}


_CSV_COLUMNS = {"visual", "video", "image", "audio", "labels", "label", "id", "split"}


def _raw_from_pairs(path: pathlib.Path, split: str) -> Iterator[dict]:
    with open(path, newline="", encoding="utf-8") as f:
        rows = [r for r in csv.reader(f) if r and any(c.strip() for c in r)]
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
               "video": None if is_image else vis_path, "image": vis_path if is_image else None,
               "audio": _resolve(aud, path.parent) if aud else None,
               "labels": _split_labels(rec.get("labels") or rec.get("label"))}


def collect_items(input_path: str, split: str, num_frames: int, label_csv: str | None = None,
                  label_dirs: bool = False) -> tuple[list[Item], list[dict], list[dict], str]:
    """Reads the input description -> (items, early failures, label vocabulary, input kind)."""
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

    if label_csv:
        vocab, lookup = read_label_csv(label_csv)
    else:
        names = sorted({n for r in raw for n in r["labels"]})
        vocab = [{"index": i, "mid": n, "display_name": n} for i, n in enumerate(names)]
        lookup = {n: i for i, n in enumerate(names)}

    items, failures, seen = [], [], {}
    for r in raw:
        fail = None
        if not r["id"]:
            fail = "empty id"
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
    return items, failures, vocab, kind


# ----------------------------------------------------------------------------- writing


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


def _atomic_write_text(path: pathlib.Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


class _ShardWriter:
    """Collects one shard's results in order; writes `<name>.tmp`, then renames."""

    def __init__(self, out_dir: pathlib.Path, shard: Shard):
        from array_record.python.array_record_module import ArrayRecordWriter

        self.out_dir, self.shard = out_dir, shard
        self.tmp = out_dir / (shard.name + ".tmp")
        self.writer = ArrayRecordWriter(str(self.tmp), ARRAY_RECORD_OPTIONS)
        self.part = {"shard": shard.name, "split": shard.split, "num_records": 0, "ids": [],
                     "failures": [], "silent_ids": [], "fbank_sum": 0.0, "fbank_sumsq": 0.0,
                     "fbank_count": 0, "num_inputs": len(shard.items)}

    def add(self, item: Item, results: list[tuple]) -> None:
        for res in results:
            if res[0] == "ok":
                _, clip_id, data, (s, ss, n), silent = res
                self.writer.write(data)
                self.part["num_records"] += 1
                self.part["ids"].append(clip_id)
                self.part["fbank_sum"] += s
                self.part["fbank_sumsq"] += ss
                self.part["fbank_count"] += n
                if silent:
                    self.part["silent_ids"].append(clip_id)
            else:
                self.part["failures"].append({"path": item.source, "id": item.id,
                                              "split": item.split, "reason": res[1]})

    def finish(self) -> dict:
        self.writer.close()
        _atomic_write_text(self.out_dir / STATE_DIR / (self.shard.name + ".json"),
                           json.dumps(self.part, sort_keys=True))
        os.replace(self.tmp, self.out_dir / self.shard.name)
        return self.part


def _results(pending: list[Shard], cfg: ConvertConfig, workers: int) -> Iterator[list[tuple]]:
    """Per-item results in item order, computed in `workers` spawned processes."""
    flat = [it for sh in pending for it in sh.items]
    if workers <= 1:
        for it in flat:
            yield process_item(it, cfg)
        return
    # A bounded window of futures keeps order and memory in check; a crashed worker raises
    # BrokenProcessPool instead of hanging (finished shards survive for the rerun).
    ctx = multiprocessing.get_context("spawn")
    with concurrent.futures.ProcessPoolExecutor(workers, mp_context=ctx, initializer=_init_worker,
                                                initargs=(cfg,)) as ex:
        window: collections.deque = collections.deque()
        it = iter(flat)
        for item in itertools.islice(it, 4 * workers):
            window.append(ex.submit(_work, item))
        while window:
            res = window.popleft().result()
            nxt = next(it, None)
            if nxt is not None:
                window.append(ex.submit(_work, nxt))
            yield res


def _fingerprint(cfg: ConvertConfig, shards: Iterable[Shard]) -> str:
    doc = {"converter": CONVERTER_VERSION, "config": dataclasses.asdict(cfg),
           "shards": [[s.name, [dataclasses.asdict(i) for i in s.items]] for s in shards]}
    return hashlib.sha256(json.dumps(doc, sort_keys=True).encode()).hexdigest()


def _tool_version() -> str:
    try:
        from importlib.metadata import version

        return version("cavmae-jax")
    except Exception:  # noqa: BLE001 - running from a plain checkout
        return "unknown"


def _stats(s: float, ss: float, n: int) -> dict[str, float | int]:
    if n == 0:
        return {"mean": None, "std": None, "num_values": 0}
    mean = s / n
    return {"mean": mean, "std": math.sqrt(max(ss / n - mean * mean, 0.0)), "num_values": n}


def convert(input_path: str, output_dir: str, cfg: ConvertConfig, split: str = "train",
            label_csv: str | None = None, label_dirs: bool = False, shard_size: int = 1024,
            workers: int = 1, progress: bool = True) -> dict[str, Any]:
    """Runs the whole conversion (resuming finished shards) and returns the metadata dict."""
    t0 = time.time()
    out = pathlib.Path(output_dir)
    (out / STATE_DIR).mkdir(parents=True, exist_ok=True)
    items, early_failures, vocab, kind = collect_items(
        input_path, split, cfg.num_frames, label_csv, label_dirs)
    shards = plan_shards(items, shard_size) if items else []
    fp = _fingerprint(cfg, shards)
    fp_path = out / STATE_DIR / "fingerprint"
    if fp_path.exists() and fp_path.read_text().strip() != fp:
        raise SystemExit(f"{out} holds the output of a different conversion (other inputs or "
                         "settings); use a new --output folder or delete it")
    _atomic_write_text(fp_path, fp + "\n")
    for stale in out.glob("*.tmp"):
        stale.unlink()

    def done(sh: Shard) -> bool:
        return (out / sh.name).exists() and (out / STATE_DIR / (sh.name + ".json")).exists()

    pending = [sh for sh in shards if not done(sh)]
    total = sum(len(sh.items) for sh in pending)
    bar = None
    if progress and total:
        from tqdm import tqdm

        bar = tqdm(total=total, unit="clip", desc="convert", file=sys.stderr, dynamic_ncols=True)
    results = _results(pending, cfg, workers)
    for sh in pending:
        w = _ShardWriter(out, sh)
        for it in sh.items:
            w.add(it, next(results))
            if bar is not None:
                bar.update(1)
        w.finish()
    results.close()
    if bar is not None:
        bar.close()

    parts = [json.loads((out / STATE_DIR / (sh.name + ".json")).read_text()) for sh in shards]
    failures = list(early_failures) + [f for p in parts for f in p["failures"]]
    with open(out / "failures.jsonl.tmp", "w", encoding="utf-8") as f:
        for rec in failures:
            f.write(json.dumps(rec, sort_keys=True, ensure_ascii=False) + "\n")
    os.replace(out / "failures.jsonl.tmp", out / "failures.jsonl")

    splits: dict[str, Any] = {}
    tot = [0.0, 0.0, 0]
    for p in parts:
        s = splits.setdefault(p["split"], {"num_records": 0, "num_inputs": 0, "num_failed": 0,
                                           "shards": [], "_sum": [0.0, 0.0, 0]})
        s["num_records"] += p["num_records"]
        s["num_inputs"] += p["num_inputs"]
        s["num_failed"] += len(p["failures"])
        s["shards"].append(p["shard"])
        for acc in (s["_sum"], tot):
            acc[0] += p["fbank_sum"]
            acc[1] += p["fbank_sumsq"]
            acc[2] += p["fbank_count"]
    for s in splits.values():
        s["fbank_stats"] = _stats(*s.pop("_sum"))
    num_records = sum(s["num_records"] for s in splits.values())
    meta = {
        "format": "cavmae_jax.data.records",
        "schema_version": records.SCHEMA_VERSION,
        "tool": "data_prep.convert",
        "tool_version": _tool_version(),
        "converter_version": CONVERTER_VERSION,
        "array_record_options": ARRAY_RECORD_OPTIONS,
        "input": {"path": str(input_path), "kind": kind,
                  "label_csv": label_csv, "label_dirs": label_dirs},
        "settings": dataclasses.asdict(cfg) | {"split": split, "shard_size": shard_size},
        "num_records": num_records,
        "num_failed": len(failures),
        "splits": splits,
        "labels": vocab,
        "num_classes": len(vocab),
        "fbank_stats": _stats(*tot),  # over real (unpadded) frames, unnormalized log-mel
        "normalization": {"fbank_mean": audio.FBANK_MEAN, "fbank_std": audio.FBANK_STD,
                          "image_mean": video.IMAGENET_MEAN.tolist(),
                          "image_std": video.IMAGENET_STD.tolist()},
        "silent_ids": [i for p in parts for i in p["silent_ids"]],
        "silence_peak": SILENCE_PEAK,
    }
    _atomic_write_text(out / "metadata.json",
                       json.dumps(meta, indent=1, sort_keys=True, ensure_ascii=False) + "\n")
    meta["_seconds"] = time.time() - t0
    meta["_converted_now"] = total
    return meta


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m data_prep.convert",
                                 description=__doc__.split("\n\n")[0])
    ap.add_argument("--input", required=True, help="folder of videos, datafile .json or .csv")
    ap.add_argument("--output", required=True, help="output folder")
    ap.add_argument("--labels", default=None, help="class_labels_indices.csv (index,mid,...)")
    ap.add_argument("--label_dirs", action="store_true",
                    help="folder input: label = first sub-folder name")
    ap.add_argument("--split", default="train", help="split name for inputs that name none")
    ap.add_argument("--workers", type=int, default=max(1, (os.cpu_count() or 2) - 1))
    ap.add_argument("--num_frames", type=int, default=16)
    ap.add_argument("--window_length", type=int, default=416)
    ap.add_argument("--target_length", type=int, default=1024)
    ap.add_argument("--clip_seconds", type=float, default=10.0)
    ap.add_argument("--image_size", type=int, default=video.IMAGE_SIZE)
    ap.add_argument("--jpeg_quality", type=int, default=video.JPEG_QUALITY)
    ap.add_argument("--mix", choices=("first", "mean"), default="first")
    ap.add_argument("--split_long", action="store_true",
                    help="cut inputs longer than clip_seconds into several records")
    ap.add_argument("--shard_size", type=int, default=1024, help="inputs per shard")
    ap.add_argument("--strict", action="store_true", help="exit 1 if any input failed")
    ap.add_argument("--no_progress", action="store_true")
    a = ap.parse_args(argv)
    cfg = ConvertConfig(num_frames=a.num_frames, window_length=a.window_length,
                        target_length=a.target_length, clip_seconds=a.clip_seconds,
                        image_size=a.image_size, jpeg_quality=a.jpeg_quality, mix=a.mix,
                        split_long=a.split_long)
    if not 0 < cfg.window_length <= cfg.target_length:
        ap.error("--window_length must be in (0, --target_length]")
    if cfg.num_frames <= 0 or a.shard_size <= 0:
        ap.error("--num_frames and --shard_size must be positive")
    meta = convert(a.input, a.output, cfg, a.split, a.labels, a.label_dirs, a.shard_size,
                   a.workers, progress=not a.no_progress)
    per_split = ", ".join(f"{k}: {v['num_records']}" for k, v in sorted(meta["splits"].items()))
    n_shards = sum(len(v["shards"]) for v in meta["splits"].values())
    print(f"converted {meta['num_records']} clips ({per_split or 'none'}) into {n_shards} shards "
          f"in {a.output}; {meta['num_failed']} failed (see failures.jsonl); "
          f"{len(meta['silent_ids'])} silent; {meta['_converted_now']} inputs processed now "
          f"in {meta['_seconds']:.1f} s")
    if meta["num_records"] == 0:
        return 1
    if a.strict and meta["num_failed"]:
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
