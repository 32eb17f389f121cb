"""The scale-out twin of `data_prep.convert`: a TFDS builder (ArrayRecord, no TensorFlow), on Beam.

    python -m data_prep.tfds_builder --input PATH --data_dir DIR [--labels CSV] [--name NAME]
        [--beam_runner DirectRunner] [--beam_options "--runner=... --project=..."]
        [--vocabulary CSV] [--label_dirs] [--split NAME] [--holdout F --holdout_split NAME]
        [--num_frames 16 ... the per-clip flags of data_prep.convert] [--num_shards N]

Same inputs and input flags as `data_prep.convert` (folder of videos / official datafile JSON /
pairs CSV, read by `convert.collect_items`) and the same per-clip code (`convert.process_item`),
so every example holds exactly the record bytes the local CLI writes for that clip, as features
`{"record": bytes (a `cavmae_jax.data.records` record), "id": text}` and `records.decode`
reads both. With `--beam_runner`/`--beam_options` the clips are converted by an Apache Beam
pipeline (DirectRunner here; Dataflow, Flink or Spark by pipeline options); without them TFDS
runs the same code in this process.

Output: `DIR/cavmae_records[/NAME]/1.0.0/` with TFDS's `cavmae_records-<split>.array_record-*`
shards, `dataset_info.json`, `features.json`, `metadata.json` (label vocabulary, settings, counts,
fbank stats: the keys of convert's metadata.json), `failures.jsonl` (one line per rejected
input: path, id, split, reason) and `<split>.labels.npz` (convert's labels index). Per-clip
failures are a side output of the pipeline, never a crash. TFDS builds in an `incomplete.*`
folder and renames it when done; an existing dataset is reused as is (`--overwrite` rebuilds).
Examples are stored in TFDS's hashed-key order.
Read it with `tfds.data_source(...)`, `tfds.builder_from_directory(dir).as_data_source(split)`,
or `open_records(dir, split)` (a Grain source of record bytes); the training and evaluation
pipelines read the versioned folder directly (`--config.data.dir=DIR/cavmae_records/NAME/1.0.0`).
Limitation: TFDS cannot write an empty split, so a split whose every input fails stops the build.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import shlex
import sys
from collections.abc import Iterable, Iterator, Sequence
from typing import Any

import numpy as np
import tensorflow_datasets as tfds
from etils import epath

from cavmae_jax import audio, cli, video
from cavmae_jax.data import records, sampling, tfds_source
from cavmae_jax.data.tfds_source import RecordSource
from data_prep import convert

DATASET_NAME = "cavmae_records"
DATASET_VERSION = "1.0.0"
FAILURES_FILE = "failures.jsonl"
_ITEMS = "_items-{split}.jsonl"  # the split's inputs, read back by the pipeline workers
_FAILED = "_failures-{split}.jsonl"  # per-split side output, merged into failures.jsonl
_STATS = "_stats-{split}.json"  # per-split fbank sums and silent ids, merged into metadata


# TFDS's words for a split without examples (Beam writer / in-process writer).
_EMPTY_SPLIT_MESSAGES = ("total number of generated examples is 0", "No examples were yielded")


class EmptySplitError(RuntimeError):
    """Every input of a split failed: TFDS cannot write an empty split."""


# ----------------------------------------------------------------------------- per clip


def _item_to_json(index: int, item: convert.Item) -> str:
    return json.dumps({"index": index, "item": dataclasses.asdict(item)}, sort_keys=True)


def _item_from_json(line: str) -> tuple[int, convert.Item]:
    d = json.loads(line)
    it = d["item"]
    if it["frame_paths"] is not None:
        it["frame_paths"] = tuple(it["frame_paths"])
    it["labels"] = tuple(it["labels"])
    return d["index"], convert.Item(**it)


def _empty_stats() -> dict[str, Any]:
    return {"sum": 0.0, "sumsq": 0.0, "count": 0, "records": 0, "silent": []}


def merge_stats(parts: Iterable[dict[str, Any]]) -> dict[str, Any]:
    """Sums per-record stats (associative, so Beam may apply it to partial merges)."""
    out = _empty_stats()
    for p in parts:
        out["sum"] += p["sum"]
        out["sumsq"] += p["sumsq"]
        out["count"] += p["count"]
        out["records"] += p["records"]
        out["silent"] += p["silent"]
    return out


def convert_item(line: str, cfg: convert.ConvertConfig) -> Iterator[tuple[str, Any]]:
    """One `_items` line -> ("example", (key, features)) / ("stats", dict) / ("failure", json)."""
    index, item = _item_from_json(line)
    for j, res in enumerate(convert.process_item(item, cfg)):
        if res[0] == "ok":
            _, clip_id, data, (s, ss, n), silent = res
            yield "example", (f"{index:010d}-{j:04d}", {"record": data, "id": clip_id})
            yield "stats", {"sum": s, "sumsq": ss, "count": n, "records": 1,
                            "silent": [[index, j, clip_id]] if silent else []}
        else:
            yield "failure", json.dumps({"path": item.source, "id": item.id, "split": item.split,
                                         "reason": res[1], "_order": index})


def _beam_convert_item(line: str, cfg: convert.ConvertConfig) -> Iterator[Any]:
    import apache_beam as beam

    for tag, value in convert_item(line, cfg):
        yield value if tag == "example" else beam.pvalue.TaggedOutput(tag, value)


def _beam_split(pbegin: Any, items_path: str, failed_path: str, stats_path: str,
                cfg: convert.ConvertConfig) -> Any:
    """PTransform body: items file -> (key, example); failures and stats go to side files."""
    import apache_beam as beam

    out = (pbegin
           | "ReadItems" >> beam.io.ReadFromText(items_path)
           | "Spread" >> beam.Reshuffle()
           | "Convert" >> beam.FlatMap(_beam_convert_item, cfg).with_outputs(
               "failure", "stats", main="example"))
    _ = out.failure | "WriteFailures" >> beam.io.WriteToText(
        failed_path, shard_name_template="", num_shards=1)
    _ = (out.stats
         | "SumStats" >> beam.CombineGlobally(merge_stats)
         | "StatsJson" >> beam.Map(json.dumps, sort_keys=True)
         | "WriteStats" >> beam.io.WriteToText(stats_path, shard_name_template="", num_shards=1))
    return out.example


def _local_split(items_path: epath.Path, failed_path: epath.Path, stats_path: epath.Path,
                 cfg: convert.ConvertConfig) -> Iterator[tuple[str, dict[str, Any]]]:
    """The same as `_beam_split`, in this process (TFDS without a Beam runner)."""
    failures, stats = [], []
    for line in items_path.read_text().splitlines():
        for tag, value in convert_item(line, cfg):
            if tag == "example":
                yield value
            elif tag == "stats":
                stats.append(value)
            else:
                failures.append(value)
    failed_path.write_text("".join(f + "\n" for f in failures))
    stats_path.write_text(json.dumps(merge_stats(stats), sort_keys=True) + "\n")


# ----------------------------------------------------------------------------- builder


@dataclasses.dataclass(frozen=True)
class Source:
    """What to convert: `data_prep.convert`'s input arguments (same names, same meaning)."""

    input: str
    labels: str | None = None  # a vocabulary or, for a folder, a per-clip label file
    label_dirs: bool = False
    split: str = "train"
    vocabulary: str | None = None
    holdout: float = 0.0
    holdout_split: str = "test"


def fingerprint(source: Source, cfg: convert.ConvertConfig, items: Sequence[convert.Item]) -> str:
    """Changes iff the inputs or settings change (a rebuild would give other records)."""
    doc = {"converter": convert.CONVERTER_VERSION, "config": dataclasses.asdict(cfg),
           "source": dataclasses.asdict(source), "items": [dataclasses.asdict(i) for i in items]}
    return hashlib.sha256(json.dumps(doc, sort_keys=True).encode()).hexdigest()


def _fbank_stats(s: float, ss: float, n: int) -> dict[str, Any]:
    if n == 0:
        return {"mean": None, "std": None, "num_values": 0}
    mean = s / n
    return {"mean": mean, "std": float(np.sqrt(max(ss / n - mean * mean, 0.0))), "num_values": n}


class CavmaeRecords(tfds.core.GeneratorBasedBuilder, skip_registration=True):
    """ArrayRecord dataset of `cavmae_jax.data.records` bytes, one example per clip.

    Not registered by name (this module may be imported twice: as `__main__` and as a module);
    read a built dataset with `tfds.builder_from_directory` or `tfds.data_source(name, data_dir)`.
    """

    name = DATASET_NAME
    VERSION = tfds.core.Version(DATASET_VERSION)
    RELEASE_NOTES = {DATASET_VERSION: "Records of data_prep.convert (schema version 1)."}

    @tfds.core.utils.classproperty
    @classmethod
    def code_path(cls) -> epath.Path:
        # TFDS 4.9.10's own lookup touches `importlib_resources`, which it only declares for
        # Python < 3.9; for a builder inside a package that raises ModuleNotFoundError.
        return epath.Path(__file__)

    def __init__(self, *, source: Source | None = None,
                 convert_config: convert.ConvertConfig | None = None, **kwargs: Any):
        """`source` is only needed to build; kwargs go to the TFDS builder (data_dir, config...)."""
        self._source = source
        self._cfg = convert_config or convert.ConvertConfig()
        self._prepared: dict[str, Any] | None = None
        self._use_beam = False  # set from the DownloadConfig when building
        kwargs.setdefault("file_format", "array_record")
        super().__init__(**kwargs)

    def _info(self) -> tfds.core.DatasetInfo:
        return tfds.core.DatasetInfo(
            builder=self,
            description="CAV-MAE clips: msgpack records of cavmae_jax.data.records "
                        "(decode with records.decode(example['record'])).",
            features=tfds.features.FeaturesDict({
                "record": tfds.features.Tensor(shape=(), dtype=np.object_),  # bytes
                "id": tfds.features.Text(),
            }),
            metadata=tfds.core.MetadataDict(),
        )

    def collect(self) -> dict[str, Any]:
        """Reads the input description once: items by split, early failures, vocab, fingerprint."""
        if self._prepared is None:
            if self._source is None:
                raise ValueError("CavmaeRecords needs source=Source(input=...) to build")
            src = self._source
            report: dict[str, Any] = {}
            items, early, vocab, kind = convert.collect_items(
                src.input, src.split, self._cfg.num_frames, src.labels, src.label_dirs,
                vocabulary_csv=src.vocabulary, holdout=src.holdout,
                holdout_split=src.holdout_split, report=report)
            by_split: dict[str, list[convert.Item]] = {}
            for it in items:
                by_split.setdefault(it.split, []).append(it)
            # data_prep.convert's `input` block of metadata.json.
            input_info = {"path": src.input, "kind": kind, "label_csv": src.labels,
                          "label_file": report.get("label_file"),
                          "vocabulary_csv": src.vocabulary, "label_dirs": src.label_dirs,
                          "split": src.split, "holdout": src.holdout,
                          "holdout_split": src.holdout_split if src.holdout else None,
                          "labels_unmatched": report.get("labels_unmatched", 0)}
            self._prepared = {"by_split": dict(sorted(by_split.items())),
                              "early": sorted(early, key=lambda f: f["split"]),  # stable
                              "vocab": vocab, "input": input_info,
                              "fingerprint": fingerprint(src, self._cfg, items)}
        return self._prepared

    def _download_and_prepare(self, dl_manager: Any, download_config: Any) -> None:
        self._use_beam = (download_config.beam_runner is not None
                          or download_config.beam_options is not None)
        prep = self.collect()
        if not prep["by_split"]:
            why = "; ".join(f"{f['id'] or f['path']!r}: {f['reason']}" for f in prep["early"][:3])
            raise SystemExit(f"no usable inputs in {self._source.input} "
                             f"({len(prep['early'])} rejected: {why or 'none found'})")
        try:
            super()._download_and_prepare(dl_manager, download_config)
        except (ValueError, AssertionError) as e:
            if any(m in str(e) for m in _EMPTY_SPLIT_MESSAGES):
                raise EmptySplitError(
                    f"{e}\nEvery input of that split failed and TFDS cannot write an empty "
                    "split; `python -m data_prep.convert` on the same input lists the reasons "
                    "in its failures.jsonl.") from e
            raise
        self._finish(prep)

    def _split_generators(self, dl_manager: Any) -> dict[str, Any]:
        del dl_manager
        prep = self.collect()
        out = {}
        for split, items in prep["by_split"].items():
            items_path = self.data_path / _ITEMS.format(split=split)
            items_path.write_text("".join(_item_to_json(i, it) + "\n"
                                          for i, it in enumerate(items)))
            failed = self.data_path / _FAILED.format(split=split)
            stats = self.data_path / _STATS.format(split=split)
            if self._use_beam:
                import apache_beam as beam

                out[split] = beam.ptransform_fn(_beam_split)(
                    str(items_path), str(failed), str(stats), self._cfg)
            else:
                out[split] = _local_split(items_path, failed, stats, self._cfg)
        return out

    def _generate_examples(self, **kwargs: Any) -> Iterator[Any]:
        raise NotImplementedError("examples come from _split_generators")

    def _finish(self, prep: dict[str, Any]) -> None:
        """Merges the side outputs into failures.jsonl and metadata; removes the part files."""
        failures = list(prep["early"])
        splits, stats_all, silent_ids = {}, [], []
        for split, items in prep["by_split"].items():
            parts = [self.data_path / p.format(split=split) for p in (_ITEMS, _FAILED, _STATS)]
            failed = [json.loads(x) for x in parts[1].read_text().splitlines() if x.strip()]
            failed.sort(key=lambda f: f["_order"])  # input order, as convert writes them
            failures += [{k: v for k, v in f.items() if k != "_order"} for f in failed]
            lines = [x for x in parts[2].read_text().splitlines() if x.strip()]
            st = merge_stats(json.loads(x) for x in lines)
            stats_all.append(st)
            silent_ids += [s[2] for s in sorted(st["silent"])]  # input order within the split
            splits[split] = {"num_records": st["records"], "num_inputs": len(items),
                             "num_failed": len(failed), "input": prep["input"],
                             "fbank_stats": _fbank_stats(st["sum"], st["sumsq"], st["count"])}
            for p in parts:
                p.unlink()
        (self.data_path / FAILURES_FILE).write_text("".join(
            json.dumps(f, sort_keys=True, ensure_ascii=False) + "\n" for f in failures))
        tot = merge_stats(stats_all)
        self.info.metadata.update({
            "format": "cavmae_jax.data.records",
            "schema_version": records.SCHEMA_VERSION,
            "tool": "data_prep.tfds_builder",
            "converter_version": convert.CONVERTER_VERSION,
            "fingerprint": prep["fingerprint"],
            "input": prep["input"],
            "settings": dataclasses.asdict(self._cfg) | {"split": self._source.split},
            "num_records": tot["records"],
            "num_failed": len(failures),
            "splits": splits,
            "labels": prep["vocab"],
            "num_classes": len(prep["vocab"]),
            "fbank_stats": _fbank_stats(tot["sum"], tot["sumsq"], tot["count"]),
            "normalization": {"fbank_mean": audio.FBANK_MEAN, "fbank_std": audio.FBANK_STD,
                              "image_mean": video.IMAGENET_MEAN.tolist(),
                              "image_std": video.IMAGENET_STD.tolist()},
            "silent_ids": silent_ids,
            "silence_peak": convert.SILENCE_PEAK,
        })


# ----------------------------------------------------------------------------- reading


def open_records(dataset_dir: str, split: str = "train") -> RecordSource:
    """`dataset_dir` = the versioned folder (`.../cavmae_records[/NAME]/1.0.0`)."""
    return RecordSource(dataset_dir, split)  # cavmae_jax.data.tfds_source


def write_labels_index(dataset_dir: Any, split: str, rewrite: bool = True,
                       progress: bool = False) -> None:
    """`<split>.labels.npz` beside the split's shards, as data_prep.convert writes it, so that
    class-balanced sampling need not read every record when a run starts. TFDS picks the record
    order, so the labels are read back from the built split once (with `rewrite` False, only if
    the index is missing or written for other shards; only on local storage)."""
    if "://" in str(dataset_dir):
        print(f"note: no labels index on remote storage ({dataset_dir}); balanced sampling "
              "will read the records' labels when a run starts", file=sys.stderr)
        return
    names = tfds_source.shard_names(dataset_dir, split)
    path = records.labels_index_path(str(dataset_dir), split)
    if rewrite or records.read_labels_index(path, names) is None:
        labels = sampling.record_labels(RecordSource(str(dataset_dir), split), progress)
        records.write_labels_index(path, names, labels)


# ----------------------------------------------------------------------------- CLI


def build(source: Source, data_dir: str, cfg: convert.ConvertConfig, name: str | None = None,
          beam_runner: str | None = None, beam_options: Sequence[str] | None = None,
          num_shards: int | None = None, overwrite: bool = False) -> CavmaeRecords:
    """Builds (or reuses) the dataset and returns its builder (`builder.data_path`, `.info`).

    Raises SystemExit if `data_dir` already holds this dataset built from other inputs/settings.
    """
    config = tfds.core.BuilderConfig(name=name) if name else None
    builder = CavmaeRecords(source=source, convert_config=cfg, data_dir=data_dir, config=config)
    exists = (builder.data_path / "dataset_info.json").exists()
    if exists and not overwrite:
        old = builder.info.metadata.get("fingerprint")
        if old != builder.collect()["fingerprint"]:
            raise SystemExit(f"{builder.data_path} holds a dataset built from other inputs or "
                             "settings; use another --name/--data_dir, or --overwrite")
    options = None
    if beam_runner is not None or beam_options is not None:
        from apache_beam.options.pipeline_options import PipelineOptions

        options = PipelineOptions(list(beam_options or []))  # never this program's sys.argv
    mode = (tfds.download.GenerateMode.FORCE_REDOWNLOAD if overwrite
            else tfds.download.GenerateMode.REUSE_DATASET_IF_EXISTS)
    builder.download_and_prepare(download_config=tfds.download.DownloadConfig(
        beam_runner=beam_runner, beam_options=options, num_shards=num_shards,
        download_mode=mode))
    for split in builder.info.splits:  # a fresh build always gets a fresh index
        write_labels_index(builder.data_path, split, rewrite=overwrite or not exists)
    return builder


def main(argv: Sequence[str] | None = None) -> int:
    ap = cli.ArgumentParser(prog="python -m data_prep.tfds_builder",
                            description=__doc__.split("\n\n")[0])
    convert.add_input_args(ap)
    ap.add_argument("--data_dir", required=True,
                    help="TFDS data_dir; on a cluster runner, storage every worker can write")
    ap.add_argument("--name", default=None,
                    help="config name: the dataset goes to DATA_DIR/cavmae_records/NAME/1.0.0")
    ap.add_argument("--beam_runner", default=None,
                    help="run as a Beam pipeline on this runner (DirectRunner, DataflowRunner...)")
    ap.add_argument("--beam_options", default=None,
                    help='Beam pipeline options as one string, e.g. "--runner=DataflowRunner '
                         '--project=P --region=R --temp_location=gs://B/tmp"; implies Beam')
    ap.add_argument("--num_shards", type=int, default=None, help="shards per split (TFDS "
                    "picks by size when unset)")
    ap.add_argument("--overwrite", action="store_true", help="rebuild an existing dataset")
    ap.add_argument("--strict", action="store_true", help="exit 1 if any input failed")
    convert.add_clip_args(ap)
    a = ap.parse_args(argv)
    cfg = convert.config_from_args(ap, a)
    beam_options = shlex.split(a.beam_options) if a.beam_options is not None else None
    try:
        source = Source(a.input, a.labels, a.label_dirs, a.split, a.vocabulary, a.holdout,
                        a.holdout_split)
        builder = build(source, a.data_dir, cfg, a.name, a.beam_runner, beam_options,
                        a.num_shards, a.overwrite)
    except EmptySplitError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    meta = builder.info.metadata
    per_split = ", ".join(f"{k}: {v['num_records']}" for k, v in sorted(meta["splits"].items()))
    print(f"{meta['num_records']} clips ({per_split}) in {builder.data_path}; "
          f"{meta['num_failed']} failed (see {FAILURES_FILE}); {len(meta['silent_ids'])} silent")
    return convert.exit_status(meta, a.strict)


if __name__ == "__main__":
    from data_prep import tfds_builder  # the importable module, not __main__ (Beam pickles it)

    sys.exit(tfds_builder.main())
