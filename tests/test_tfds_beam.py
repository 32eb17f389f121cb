"""The TFDS/Beam path (data_prep.tfds_builder) gives the local CLI's records, without TensorFlow."""

import csv
import json
import pathlib
import sys
import tempfile

import numpy as np
import pytest

tfds = pytest.importorskip(
    "tensorflow_datasets", reason="needs the [tfds] extra: pip install 'cavmae-jax[tfds]'")
pytest.importorskip("apache_beam", reason="needs the [beam] extra: pip install 'cavmae-jax[beam]'")

from array_record.python.array_record_module import ArrayRecordReader  # noqa: E402

from cavmae_jax.data import records, tfds_source  # noqa: E402
from cavmae_jax.data import synthetic as synth  # noqa: E402
from data_prep import convert, tfds_builder  # noqa: E402
from data_prep import synthetic as prep  # noqa: E402

CFG = convert.ConvertConfig(num_frames=4)


@pytest.fixture(scope="module", autouse=True)
def _beam_temp_in_tmp_path(tmp_path_factory):
    """Beam 2.77's DirectRunner leaves an empty `beam-temp*` folder in the system temp dir
    after every pipeline (its job server's temp root); keep those out of /tmp."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(tempfile, "tempdir", str(tmp_path_factory.mktemp("beam_tmp")))
        yield


@pytest.fixture(scope="module")
def pairs_csv(tmp_path_factory) -> pathlib.Path:
    """4 real synthetic mp4s (2 s) in two splits, plus three inputs that must be rejected."""
    root = tmp_path_factory.mktemp("clips")
    config = synth.ClipConfig(duration=2.0, fps=8, height=48, width=48, num_classes=3)
    rows = prep.write_dataset(root, 4, seed=3, config=config, progress=False)
    (root / "broken.mp4").write_text("not a video\n")
    with open(root / "pairs.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["visual", "labels", "id", "split"])
        for i, r in enumerate(rows):
            w.writerow([r["path"], r["label_name"], r["id"], "test" if i == 3 else "train"])
        w.writerow(["broken.mp4", rows[0]["label_name"], "broken", "train"])  # FFmpeg fails
        w.writerow(["missing.mp4", rows[1]["label_name"], "missing", "train"])  # no such file
        w.writerow([rows[2]["path"], rows[2]["label_name"], rows[0]["id"], "train"])  # dup id
    return root / "pairs.csv"


@pytest.fixture(scope="module")
def local_cli(pairs_csv, tmp_path_factory) -> pathlib.Path:
    out = tmp_path_factory.mktemp("convert")
    rc = convert.main(["--input", str(pairs_csv), "--output", str(out), "--num_frames", "4",
                       "--workers", "1", "--no_progress"])
    assert rc == 0
    return out


def test_folder_with_label_file_and_holdout_equals_local_cli(pairs_csv, tmp_path):
    """Folder input + the synthetic labels.csv (per-clip labels) + a hash holdout, via Beam."""
    root = pairs_csv.parent
    out = tmp_path / "convert"
    assert convert.main(["--input", str(root), "--labels", str(root / "labels.csv"),
                         "--holdout", "0.25", "--output", str(out), "--num_frames", "4",
                         "--workers", "1", "--no_progress"]) == 0
    source = tfds_builder.Source(str(root), labels=str(root / "labels.csv"), holdout=0.25)
    built = tfds_builder.build(source, str(tmp_path / "tfds"), CFG, beam_runner="DirectRunner")
    meta, want = built.info.metadata, json.loads((out / "metadata.json").read_text())
    assert sorted(meta["splits"]) == sorted(want["splits"]) == ["test", "train"]
    for split in ("train", "test"):
        got = _source_records(built.as_data_source(split))
        assert got == _cli_records(out, split) and got
    assert meta["labels"] == want["labels"] and meta["num_classes"] == 3
    assert meta["input"] == want["input"] | {"path": str(root)}
    lines = (built.data_path / "failures.jsonl").read_text().splitlines()
    assert lines == (out / "failures.jsonl").read_text().splitlines()
    assert "no labels entry" in json.loads(lines[0])["reason"]  # broken.mp4 is not in labels.csv


@pytest.fixture(scope="module")
def beam_built(pairs_csv, tmp_path_factory) -> tfds_builder.CavmaeRecords:
    data_dir = tmp_path_factory.mktemp("tfds")
    return tfds_builder.build(tfds_builder.Source(str(pairs_csv)), str(data_dir), CFG,
                              name="beam", beam_runner="DirectRunner")


def _cli_records(out: pathlib.Path, split: str) -> dict[str, bytes]:
    recs = {}
    for shard in sorted(out.glob(f"{split}.array_record-*")):
        reader = ArrayRecordReader(str(shard))
        recs.update({records.decode(b, decode_frames=False)["id"]: b for b in reader.read_all()})
        reader.close()
    return recs


def _source_records(src) -> dict[str, bytes]:
    out = {}
    for i in range(len(src)):
        ex = src[i]
        assert ex["id"].decode() == records.decode(ex["record"], decode_frames=False)["id"]
        out[ex["id"].decode()] = ex["record"]
    return out


def test_beam_records_equal_local_cli(beam_built, local_cli):
    data_dir = beam_built.data_path.parent.parent.parent
    for split, ids in (("train", ["clip_00000", "clip_00001", "clip_00002"]),
                       ("test", ["clip_00003"])):
        src = tfds.data_source("cavmae_records/beam", data_dir=str(data_dir), split=split)
        got, want = _source_records(src), _cli_records(local_cli, split)
        assert sorted(got) == sorted(want) == ids
        for clip_id in ids:
            assert got[clip_id] == want[clip_id]  # the very same record bytes
            a = records.decode(got[clip_id], decode_frames=False, fbank_dtype=np.float16)
            b = records.decode(want[clip_id], decode_frames=False, fbank_dtype=np.float16)
            assert a["fbank"].tobytes() == b["fbank"].tobytes()
            np.testing.assert_array_equal(a["windows"], b["windows"])
            np.testing.assert_array_equal(a["labels"], b["labels"])
            assert a["frames_jpeg"] == b["frames_jpeg"] and len(a["frames_jpeg"]) == 4
            assert a["labels"].size == 1
    assert "tensorflow" not in sys.modules


def test_failures_reported_not_raised(beam_built, local_cli):
    lines = (beam_built.data_path / "failures.jsonl").read_text().splitlines()
    fails = [json.loads(x) for x in lines]
    assert [f["id"] for f in fails] == ["clip_00000", "broken", "missing"]  # early, then inputs
    reasons = {f["id"]: f["reason"] for f in fails}
    assert "duplicate id" in reasons["clip_00000"]
    assert "FFmpeg cannot read it" in reasons["broken"]
    assert "not found" in reasons["missing"]
    # The local CLI reports the very same failures, in the same order.
    assert lines == (local_cli / "failures.jsonl").read_text().splitlines()


def test_metadata_matches_local_cli(beam_built, local_cli):
    meta = beam_built.info.metadata
    want = json.loads((local_cli / "metadata.json").read_text())
    for key in ("labels", "num_classes", "num_records", "num_failed", "silent_ids",
                "normalization", "schema_version", "format"):
        assert meta[key] == want[key], key
    for split in ("train", "test"):
        got, exp = meta["splits"][split], want["splits"][split]
        assert got["num_records"] == exp["num_records"]
        assert got["num_failed"] == exp["num_failed"]
        assert got["fbank_stats"]["num_values"] == exp["fbank_stats"]["num_values"]
        np.testing.assert_allclose(got["fbank_stats"]["mean"], exp["fbank_stats"]["mean"],
                                   rtol=1e-9)
    assert beam_built.info.splits["train"].num_examples == 3
    assert not list(beam_built.data_path.glob("_*"))  # side outputs merged and removed


def test_local_generator_path_and_grain(pairs_csv, beam_built, tmp_path):
    """Without Beam options the same builder runs in-process; both read as Grain sources."""
    import grain

    local = tfds_builder.build(tfds_builder.Source(str(pairs_csv)), str(tmp_path), CFG)
    assert local.data_path == tmp_path / "cavmae_records" / "1.0.0"
    for built in (local, beam_built):
        src = tfds_builder.open_records(str(built.data_path), "train")
        ds = grain.MapDataset.source(src).map(records.decode)
        ids = sorted(ds[i]["id"] for i in range(len(ds)))
        assert ids == ["clip_00000", "clip_00001", "clip_00002"]
        assert ds[0]["frames"].shape == (4, 224, 224, 3)
    a = _source_records(tfds.builder_from_directory(str(local.data_path)).as_data_source("train"))
    b = _source_records(beam_built.as_data_source("train"))
    assert a == b
    assert (local.data_path / "failures.jsonl").read_text() == (
        beam_built.data_path / "failures.jsonl").read_text()


def test_pipelines_read_the_tfds_dataset(beam_built, local_cli):
    """`--config.data.dir` may be a TFDS build: the same clips as convert's folder gives."""
    from cavmae_jax.data import pipeline

    def clips(data_dir) -> dict[str, tuple]:
        it = pipeline.make_retrieval_iterator(data_dir, "train", process_index=0,
                                              process_count=1, window_length=256)
        return {c["id"]: (c["audio"], c["video"], c["labels"]) for c in it if c["valid"]}

    built, converted = clips(beam_built.data_path), clips(local_cli)
    assert sorted(built) == sorted(converted) == ["clip_00000", "clip_00001", "clip_00002"]
    for clip_id, arrays in built.items():
        for got, want in zip(arrays, converted[clip_id], strict=True):
            np.testing.assert_array_equal(got, want)
    # The build wrote the labels index that class-balanced sampling reads.
    names = tfds_source.shard_names(beam_built.data_path, "train")
    assert names and all(n.startswith("cavmae_records-train.array_record-") for n in names)
    index = records.read_labels_index(records.labels_index_path(beam_built.data_path, "train"),
                                      names)
    src = tfds_source.RecordSource(beam_built.data_path, "train")
    assert [x.tolist() for x in index] == [
        records.decode(src[i], decode_frames=False)["labels"].tolist() for i in range(len(src))]
    # Training from it, class-balanced.
    batch = next(pipeline.make_train_iterator(
        beam_built.data_path, "train", global_batch_size=2, seed=0, process_index=0,
        process_count=1, balanced_sampling=True, window_length=256))
    assert batch["audio"].shape == (2, 256, 128) and batch["video"].shape == (2, 224, 224, 3)
    root = beam_built.data_path.parent.parent.parent  # the --data_dir given to the builder
    with pytest.raises(FileNotFoundError, match="use its versioned folder: .*beam/1.0.0"):
        pipeline.make_eval_iterator(root, "train", global_batch_size=2, process_index=0,
                                    process_count=1)
    with pytest.raises(FileNotFoundError, match="no split 'val'.*test, train"):
        pipeline.make_eval_iterator(beam_built.data_path, "val", global_batch_size=2,
                                    process_index=0, process_count=1)


def test_rebuild_is_a_reuse_and_other_settings_are_refused(pairs_csv, beam_built):
    data_dir = str(beam_built.data_path.parent.parent.parent)
    shard = pathlib.Path(next(beam_built.data_path.glob("*train.array_record-*")))
    before = shard.stat().st_mtime_ns
    again = tfds_builder.build(tfds_builder.Source(str(pairs_csv)), data_dir, CFG, name="beam",
                               beam_runner="DirectRunner")
    assert shard.stat().st_mtime_ns == before and again.info.metadata["num_records"] == 4
    with pytest.raises(SystemExit, match="other inputs or settings"):
        tfds_builder.build(tfds_builder.Source(str(pairs_csv)), data_dir,
                           convert.ConvertConfig(num_frames=8), name="beam")


def test_split_where_every_input_fails_is_a_clear_error(pairs_csv, tmp_path):
    bad = tmp_path / "bad.csv"
    bad.write_text(f"visual,split\n{pairs_csv.parent / 'clip_00000.mp4'},train\n"
                   f"{pairs_csv.parent / 'broken.mp4'},test\n")
    with pytest.raises(tfds_builder.EmptySplitError, match="split \"?test"):
        tfds_builder.build(tfds_builder.Source(str(bad)), str(tmp_path / "out"), CFG)
    assert not list((tmp_path / "out" / "cavmae_records").glob("*"))  # nothing half-built left
