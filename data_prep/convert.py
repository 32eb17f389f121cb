"""Converts videos (or the official datafile JSON, or a CSV of visual/audio pairs) to ArrayRecord.

    python -m data_prep.convert --input PATH --output DIR [--labels CSV] [--vocabulary CSV]
        [--split NAME] [--holdout FRACTION --holdout_split NAME] [--workers N]
        [--num_frames 16] [--window_length 416] [--target_length 1024] [--mix first|mean]
        [--split_long] [--clip_seconds 10] [--jpeg_quality 75] [--no_pcm16]
        [--frame_count opencv|packets] [--shard_size 1024] [--strict]

Inputs (PATH):
  * a folder: every video file under it (recursive, symlinked folders followed; by extension,
    see VIDEO_EXTS), id = path relative to PATH without extension (bytes of a name that are not
    UTF-8 escaped as `\\xNN`); `--label_dirs` takes each file's first folder as label;
  * an official datafile `*.json` `{"data": [{"wav", "video_id", "video_path", "labels"}]}`:
    frames are read from `video_path/frame_{i}/<video_id>.jpg` (i < num_frames), audio from `wav`;
  * a `*.csv` of pairs: columns `visual,audio[,labels][,id][,split]` (header optional when in
    that order); `visual` is a video or a still image (repeated for all N frames); `audio` may
    be empty (then the visual file's audio track is used).
  CSV and JSON files are read as UTF-8, with or without a byte-order mark.
  Labels in a JSON entry / pairs row are comma-separated strings (AudioSet mids or names); an
  entry / row may carry `split`.

Labels (`--labels CSV`; the kind is told by the header):
  * a VOCABULARY, the official `class_labels_indices.csv` (index,mid,display_name): label
    strings (mids or display names) map to its indices; a label outside it fails the clip;
  * a PER-CLIP file, for folder inputs: header with `id` (the clip id, i.e. the relative path
    without extension; the file stem or file name also match when unique) or `path` (relative
    to --input, or absolute), and `labels` (several labels separated by `;`, or by `,` when the
    field holds no `;`), optionally `split`. `data_prep.synthetic` writes such a file
    (`DIR/labels.csv`, columns id,labels). A clip missing from the file is a failure ("no labels
    entry"): an unlabeled record would silently read as "none of the classes"; list the clip
    with an empty labels field to keep it unlabeled on purpose. Entries that match no file are
    counted in metadata (`input.labels_unmatched`) and otherwise ignored.
  `--vocabulary CSV` (class_labels_indices.csv) fixes the indices for any input kind (with a
  per-clip file, a datafile or a pairs CSV). Without a vocabulary the classes are the sorted set
  of label strings seen.

Splits: an input's own `split` (datafile entry, pairs row, per-clip file column) wins; other
clips go to `--split`. `--holdout F --holdout_split test` moves round(F * n) of those n clips to
the holdout split: the ones with the smallest SHA-256 of their clip id, so the choice depends
only on the set of ids (not on order or workers), and the segments of a `--split_long` input
stay together. Converting another input into an existing DIR with a different `--split` adds
that split: finished splits are kept and metadata.json lists them all. Every split of a DIR
shares the settings and the label vocabulary; a new input whose label names are not in the DIR's
vocabulary is refused (pass `--vocabulary`, or convert all splits in one run). Reconverting a
split from other inputs is refused too (use a new DIR).

Per clip (`data_prep.clips`; the official recipe): decode audio, first channel (`--mix`),
resample to 16 kHz, round to 16-bit PCM (`--no_pcm16` keeps floats), remove the mean, Kaldi
fbank, pad/cut to `target_length`; the window table; N frames at the official indices (a
container without a frame count: OpenCV's round(duration x fps), `--frame_count`), shorter side
-> 224 + center crop, JPEG quality 75 (`--jpeg_quality`). Clips
shorter than 10 s are zero-padded in the fbank (log) domain exactly as the official loader does;
audio with fewer than 400 samples (one 25 ms frame) yields no fbank frame at all and is REJECTED
to failures.jsonl (the official loader would silently substitute an all-zero fbank). With
`--split_long`, an input longer than `clip_seconds` becomes consecutive `clip_seconds` records
(`<id>_seg000`, ...); a trailing piece shorter than half a clip is dropped.

Output: `DIR/<split>.array_record-xxxxx-of-yyyyy` (records from `cavmae_jax.data.records`,
ArrayRecord "group_size:1,uncompressed"), `DIR/<split>.labels.npz` (every record's labels, for
class-balanced sampling), `DIR/metadata.json`, `DIR/failures.jsonl` (all splits).
Shard i of a split holds that split's inputs i*shard_size .. (i+1)*shard_size-1 in input order
(folders sorted), so reruns give byte-identical shards. Shards are written to `*.tmp` and renamed
when complete; bookkeeping lives in `DIR/.convert/` (settings and vocabulary in dataset.json,
one split-<name>.json per split, one json per finished shard), so a rerun skips finished shards.
Exit status is 0 unless nothing converted, or `--strict` and anything failed (1); an input or
output it cannot use (a missing file, a CSV that is not UTF-8, an output folder it cannot write)
is one line `error: ...` on stderr and exit status 2 (`--verbosity 1`: the traceback).

Workers (`data_prep.pool`): memory per input stays bounded whatever its length (only the audio
and frames a record needs are decoded; --split_long makes one pass and spills large results to
`DIR/.convert/`). A worker that dies (e.g. killed for memory) fails only its input ("worker
process died (...)" in failures.jsonl; a rerun skips it) and a new one takes its place; workers
end with this process, also when it is killed.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import hashlib
import json
import math
import os
import pathlib
import sys
import time
from collections.abc import Iterable, Iterator, Sequence
from typing import Any

from cavmae_jax import audio, cli, video
from cavmae_jax.data import records
from data_prep.clips import (  # noqa: F401 - re-exported: the TFDS builder and tests use them
    SILENCE_PEAK,
    ClipError,
    ConvertConfig,
    encoded_records,
    failure_reason,
    process_clip,
    process_item,
)
from data_prep.inputs import (  # noqa: F401 - re-exported: the TFDS builder and tests use them
    IMAGE_EXTS,
    VIDEO_EXTS,
    Item,
    collect_items,
    holdout_rank,
    readable,
    valid_split_name,
    vocab_lookup,
)
from data_prep.pool import converted_items
from data_prep.shards import (
    ARRAY_RECORD_OPTIONS,
    STATE_DIR,
    Shard,
    ShardWriter,
    atomic_write_text,
    plan_shards,
    write_labels_index,
)

CONVERTER_VERSION = "1"


def _fingerprint(cfg: ConvertConfig, shards: Iterable[Shard],
                 vocab: Sequence[dict[str, Any]] | None = None) -> str:
    doc = {"converter": CONVERTER_VERSION, "config": dataclasses.asdict(cfg),
           "shards": [[s.name, [dataclasses.asdict(i) for i in s.items]] for s in shards]}
    if vocab is not None:
        doc["labels"] = list(vocab)
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


def _read_json(path: pathlib.Path) -> Any:
    return json.loads(path.read_text(encoding="utf-8")) if path.exists() else None


def _split_state_path(out: pathlib.Path, split: str) -> pathlib.Path:
    return out / STATE_DIR / f"split-{split}.json"


def _reconcile_vocab(out: pathlib.Path, stored: list[dict], vocab: list[dict], fixed: bool,
                     items: list[Item]) -> list[Item]:
    """Makes this run's items use the vocabulary the DIR's other splits use (or refuses)."""
    if vocab == stored:
        return items
    if fixed:
        raise SystemExit(
            f"{out} holds splits converted with another label vocabulary ({len(stored)} classes, "
            f"see its metadata.json) than this run's ({len(vocab)} classes); record label indices "
            "would disagree. Convert into a new --output, or convert every split with the same "
            "--vocabulary")
    lookup = vocab_lookup(stored)
    new = [v["mid"] for v in vocab if v["mid"] not in lookup]
    if new:
        shown = ", ".join(repr(n) for n in new[:5]) + (", ..." if len(new) > 5 else "")
        raise SystemExit(
            f"this input brings label names that {out}'s other splits do not have ({shown}; "
            f"their vocabulary has {len(stored)} classes), so the label indices would disagree "
            "between splits. Pass --vocabulary class_labels_indices.csv (index,mid,display_name) "
            "to fix the indices for every split, or convert all splits in one run (a per-clip "
            "--labels file with a split column, or --holdout); or use a new --output")
    remap = {v["index"]: lookup[v["mid"]] for v in vocab}
    return [dataclasses.replace(it, labels=tuple(sorted({remap[i] for i in it.labels})))
            for it in items]


def convert(input_path: str, output_dir: str, cfg: ConvertConfig, split: str = "train",
            label_csv: str | None = None, label_dirs: bool = False, shard_size: int = 1024,
            workers: int = 1, progress: bool = True, vocabulary_csv: str | None = None,
            holdout: float = 0.0, holdout_split: str = "test") -> dict[str, Any]:
    """Runs the whole conversion (resuming finished shards) and returns the metadata dict.

    Splits already in `output_dir` from other runs are kept and merged into metadata.json.
    Raises SystemExit when `output_dir` holds a conversion this run cannot join (other settings,
    another label vocabulary, or other inputs for one of this run's splits).
    """
    t0 = time.time()
    out = pathlib.Path(output_dir)
    if readable(str(out)) != str(out):
        raise SystemExit(f"--output {readable(str(out))}: the ArrayRecord shard files need a "
                         "path that is valid UTF-8; choose a folder with a UTF-8 name")
    state = out / STATE_DIR
    if (state / "fingerprint").exists():
        raise SystemExit(f"{out} was written by an older data_prep.convert; use a new --output "
                         "folder or delete it")
    report: dict[str, Any] = {}
    items, early_failures, vocab, kind = collect_items(
        input_path, split, cfg.num_frames, label_csv, label_dirs, vocabulary_csv, holdout,
        holdout_split, report)

    # The DIR-wide part: settings and vocabulary, shared by every split.
    dataset = _read_json(state / "dataset.json")
    cfg_doc = json.loads(json.dumps(dataclasses.asdict(cfg)))
    if dataset is not None:
        if dataset["converter_version"] != CONVERTER_VERSION or dataset["config"] != cfg_doc:
            changed = sorted(k for k in cfg_doc if dataset["config"].get(k) != cfg_doc[k])
            raise SystemExit(f"{out} holds the output of a different conversion (other settings: "
                             f"{', '.join(changed) or 'converter version'}); every split of a "
                             "folder shares them. Use a new --output folder or delete it")
        items = _reconcile_vocab(out, dataset["labels"], vocab, report["vocabulary_fixed"], items)
        vocab = dataset["labels"]

    # The per-split part: a split is converted from one input; a rerun resumes it.
    shards = plan_shards(items, shard_size) if items else []
    run_splits = sorted({it.split for it in items} | {f["split"] for f in early_failures})
    input_info = {"path": readable(str(input_path)), "kind": kind,
                  "label_csv": label_csv and readable(label_csv),
                  "label_file": report["label_file"],
                  "vocabulary_csv": vocabulary_csv and readable(vocabulary_csv),
                  "label_dirs": label_dirs, "split": split, "holdout": holdout,
                  "holdout_split": holdout_split if holdout else None,
                  "labels_unmatched": report["labels_unmatched"]}
    new_states = {}
    for s in run_splits:
        sh = [x for x in shards if x.split == s]
        new_states[s] = {"fingerprint": _fingerprint(cfg, sh, vocab),
                         "shards": [x.name for x in sh], "shard_size": shard_size,
                         "input": input_info,
                         "early_failures": [f for f in early_failures if f["split"] == s]}
        old = _read_json(_split_state_path(out, s))
        if old is not None and old["shards"] and old["fingerprint"] != new_states[s]["fingerprint"]:
            raise SystemExit(
                f"split {s!r} in {out} holds a different conversion (other inputs or settings, "
                f"from {old['input']['path']}); convert into another --split or a new --output "
                "folder, or delete the folder")
    state.mkdir(parents=True, exist_ok=True)
    if dataset is None:
        atomic_write_text(state / "dataset.json", json.dumps(
            {"converter_version": CONVERTER_VERSION, "config": cfg_doc, "labels": vocab,
             "labels_fixed": report["vocabulary_fixed"]}, indent=1, sort_keys=True) + "\n")
    for s, st in new_states.items():
        atomic_write_text(_split_state_path(out, s), json.dumps(st, sort_keys=True) + "\n")
        for stale in out.glob(f"{s}.array_record-*.tmp"):
            stale.unlink()

    def done(sh: Shard) -> bool:
        return (out / sh.name).exists() and (state / (sh.name + ".json")).exists()

    pending = [sh for sh in shards if not done(sh)]
    total = sum(len(sh.items) for sh in pending)
    bar = None
    if progress and total:
        from tqdm import tqdm

        bar = tqdm(total=total, unit="clip", desc="convert", file=sys.stderr, dynamic_ncols=True)
    results = converted_items([it for sh in pending for it in sh.items], cfg, workers,
                              tmp_dir=state)
    for sh in pending:
        w = ShardWriter(out, sh)
        for it in sh.items:
            w.add(it, next(results))
            if bar is not None:
                bar.update(1)
        w.finish()
    results.close()
    if bar is not None:
        bar.close()

    # Merge every split of the folder (this run's and earlier runs') into the outputs.
    states = {p.name[len("split-"):-len(".json")]: _read_json(p)
              for p in sorted(state.glob("split-*.json"))}
    parts, incomplete = [], {}
    for s in sorted(states):
        for name in states[s]["shards"]:
            part = _read_json(state / (name + ".json"))
            if part is None or not (out / name).exists():
                incomplete.setdefault(s, []).append(name)
            else:
                parts.append(part)
    failures = [f for s in sorted(states) for f in states[s]["early_failures"]]
    failures += [f for p in parts for f in p["failures"]]
    atomic_write_text(out / "failures.jsonl", "".join(
        json.dumps(rec, sort_keys=True, ensure_ascii=False) + "\n" for rec in failures))

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
    for name, s in splits.items():
        s["fbank_stats"] = _stats(*s.pop("_sum"))
        s["input"] = states[name]["input"]
        if name in incomplete:
            s["missing_shards"] = incomplete[name]
        write_labels_index(out, name, [p for p in parts if p["split"] == name],
                            complete=name not in incomplete)
    num_records = sum(s["num_records"] for s in splits.values())
    meta = {
        "format": "cavmae_jax.data.records",
        "schema_version": records.SCHEMA_VERSION,
        "tool": "data_prep.convert",
        "tool_version": _tool_version(),
        "converter_version": CONVERTER_VERSION,
        "array_record_options": ARRAY_RECORD_OPTIONS,
        "input": input_info,  # this run's; each split's own is in splits[name]["input"]
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
    atomic_write_text(out / "metadata.json",
                       json.dumps(meta, indent=1, sort_keys=True, ensure_ascii=False) + "\n")
    meta["_seconds"] = time.time() - t0
    meta["_converted_now"] = total
    return meta


def add_input_args(ap: argparse.ArgumentParser) -> None:
    """The flags that say what to read and how to split it (shared with the TFDS builder)."""
    ap.add_argument("--input", required=True, help="folder of videos, datafile .json or .csv")
    ap.add_argument("--labels", default=None, metavar="CSV",
                    help="label file, told apart by its header: the vocabulary "
                         "class_labels_indices.csv (index,mid,display_name), or, for a folder "
                         "input, a per-clip file with id or path, labels (';'- or "
                         "','-separated) and optionally split (e.g. data_prep.synthetic's "
                         "labels.csv); clips missing from a per-clip file fail with 'no labels "
                         "entry'")
    ap.add_argument("--vocabulary", default=None, metavar="CSV",
                    help="class_labels_indices.csv fixing the label indices (with a per-clip "
                         "--labels file, a datafile or a pairs CSV); needed to add a split "
                         "with new label names to an existing output")
    ap.add_argument("--label_dirs", action="store_true",
                    help="folder input: label = first sub-folder name")
    ap.add_argument("--split", default="train", help="split name for inputs that name none")
    ap.add_argument("--holdout", type=float, default=0.0, metavar="FRACTION",
                    help="move round(FRACTION * n) of the n clips without an explicit split to "
                         "--holdout_split (those with the smallest SHA-256 of the clip id: "
                         "deterministic, independent of order and workers)")
    ap.add_argument("--holdout_split", default="test", help="split name of the held-out clips")


def add_clip_args(ap: argparse.ArgumentParser) -> None:
    """The flags that change the records' content (ConvertConfig)."""
    d = ConvertConfig()
    ap.add_argument("--num_frames", type=int, default=d.num_frames)
    ap.add_argument("--window_length", type=int, default=d.window_length)
    ap.add_argument("--target_length", type=int, default=d.target_length)
    ap.add_argument("--clip_seconds", type=float, default=d.clip_seconds)
    ap.add_argument("--image_size", type=int, default=d.image_size)
    ap.add_argument("--jpeg_quality", type=int, default=d.jpeg_quality,
                    help="JPEG quality of the stored frames (75: what the official frame "
                         "extraction's save_image writes; 90 was this tool's earlier default)")
    ap.add_argument("--mix", choices=("first", "mean"), default=d.mix)
    ap.add_argument("--no_pcm16", dest="pcm16", action="store_false",
                    help="keep the float waveform instead of rounding it to 16-bit PCM (the "
                         "official path reads a 16-bit WAV; the earlier behaviour)")
    ap.add_argument("--frame_count", choices=video.FRAME_COUNT_MODES, default=d.frame_count,
                    help="frame count of a container that stores none: OpenCV's estimate "
                         "round(duration x fps), as the official extraction (opencv), or the "
                         "video packets counted (packets, the earlier behaviour)")
    ap.add_argument("--split_long", action="store_true",
                    help="cut inputs longer than clip_seconds into several records")


def config_from_args(ap: argparse.ArgumentParser, a: argparse.Namespace) -> ConvertConfig:
    """ConvertConfig from `add_clip_args` flags; checks them and the split flags."""
    cfg = ConvertConfig(num_frames=a.num_frames, window_length=a.window_length,
                        target_length=a.target_length, clip_seconds=a.clip_seconds,
                        image_size=a.image_size, jpeg_quality=a.jpeg_quality, mix=a.mix,
                        split_long=a.split_long, pcm16=a.pcm16, frame_count=a.frame_count)
    if not 0 < cfg.window_length <= cfg.target_length:
        ap.error("--window_length must be in (0, --target_length]")
    if cfg.num_frames <= 0:
        ap.error("--num_frames must be positive")
    if not 1 <= cfg.jpeg_quality <= 100:
        ap.error("--jpeg_quality must be in [1, 100]")
    for flag, name in (("--split", a.split), ("--holdout_split", a.holdout_split)):
        if not valid_split_name(name):
            ap.error(f"{flag} {name!r}: use letters, digits, '_' and '-'")
    if not 0.0 <= a.holdout < 1.0:
        ap.error("--holdout must be in [0, 1)")
    if a.holdout and a.holdout_split == a.split:
        ap.error("--holdout_split must differ from --split")
    return cfg


def main(argv: Sequence[str] | None = None) -> int:
    ap = cli.ArgumentParser(prog="python -m data_prep.convert",
                            description=__doc__.split("\n\n")[0])
    add_input_args(ap)
    ap.add_argument("--output", required=True,
                    help="output folder; may already hold other splits (they are kept)")
    ap.add_argument("--workers", type=int, default=max(1, (os.cpu_count() or 2) - 1))
    add_clip_args(ap)
    ap.add_argument("--shard_size", type=int, default=1024, help="inputs per shard")
    ap.add_argument("--strict", action="store_true", help="exit 1 if any input failed")
    ap.add_argument("--no_progress", action="store_true")
    ap.add_argument("--verbosity", type=int, default=0,
                    help="1: show the full traceback of an error instead of one line")
    a = ap.parse_args(argv)
    cfg = config_from_args(ap, a)
    if a.shard_size <= 0:
        ap.error("--shard_size must be positive")
    with one_line_errors(a.verbosity):
        meta = convert(a.input, a.output, cfg, a.split, a.labels, a.label_dirs, a.shard_size,
                       a.workers, progress=not a.no_progress, vocabulary_csv=a.vocabulary,
                       holdout=a.holdout, holdout_split=a.holdout_split)
    per_split = ", ".join(f"{k}: {v['num_records']}" for k, v in sorted(meta["splits"].items()))
    n_shards = sum(len(v["shards"]) for v in meta["splits"].values())
    print(f"converted {meta['num_records']} clips ({per_split or 'none'}) into {n_shards} shards "
          f"in {a.output}; {meta['num_failed']} failed (see failures.jsonl); "
          f"{len(meta['silent_ids'])} silent; {meta['_converted_now']} inputs processed now "
          f"in {meta['_seconds']:.1f} s")
    if meta["input"]["labels_unmatched"]:
        print(f"note: {meta['input']['labels_unmatched']} entries of {a.labels} match no input "
              "file (ignored)")
    for name, sp in sorted(meta["splits"].items()):
        if "missing_shards" in sp:
            print(f"warning: split {name!r} is incomplete ({len(sp['missing_shards'])} shards "
                  f"missing); rerun its conversion (input {sp['input']['path']})")
    return exit_status(meta, a.strict)


@contextlib.contextmanager
def one_line_errors(verbosity: int = 0) -> Iterator[None]:
    """`cli.user_errors`, plus this tool's refusals (SystemExit with a message): each becomes
    one line `error: ...` on stderr and exit status 2."""
    from cavmae_jax import cli

    with cli.user_errors(verbosity):
        try:
            yield
        except SystemExit as e:
            if isinstance(e.code, str) and verbosity < 1:
                cli.fail(e.code)
            raise


def exit_status(meta: dict, strict: bool) -> int:
    """The CLI's exit code: 1 if nothing was converted, or anything failed under --strict."""
    return int(meta["num_records"] == 0 or bool(strict and meta["num_failed"]))


if __name__ == "__main__":
    sys.exit(main())
