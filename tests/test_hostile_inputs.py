"""Inputs a hostile tester found: odd file names, stray shards, symlinks, CSV encodings, and the
mistakes that must end in one line `error: ...` (exit status 2) instead of a traceback."""

import json
import os
import pathlib
import shutil

import numpy as np
import pytest
from _av_clips import write_clip
from _procs import run_cli

from cavmae_jax import convert as ckpt_convert
from cavmae_jax.data import pipeline, records
from data_prep import convert
from data_prep.inputs import collect_items


@pytest.fixture(scope="module")
def clips(tmp_path_factory) -> list[pathlib.Path]:
    """Two tiny real clips (16x16, 1 s) to copy into the test folders."""
    root = tmp_path_factory.mktemp("clips")
    return [write_clip(root / f"clip_{i:05d}.mp4", seconds=1.0, size=(16, 16)) for i in range(2)]


def _folder(path: pathlib.Path, clips: list[pathlib.Path]) -> pathlib.Path:
    path.mkdir(parents=True, exist_ok=True)
    for c in clips:
        shutil.copy(c, path / c.name)
    return path


def _convert(*args: str) -> int:
    return convert.main([*args, "--workers", "1", "--no_progress"])


def _one_error_line(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: "), err
    return err[0]


# ----------------------------------------------------------------------------- file names


def test_non_utf8_file_names_are_converted_or_reported_readably(tmp_path, clips):
    src = _folder(tmp_path / "in", clips)
    raw = os.fsencode(src)
    shutil.copy(clips[0], os.path.join(raw, b"caf\xe9.mp4"))  # Latin-1 name: not UTF-8
    with open(os.path.join(raw, b"bad\xff.mp4"), "wb") as f:  # not UTF-8, and not a video
        f.write(b"not a video")
    out = tmp_path / "out"
    assert _convert("--input", str(src), "--output", str(out)) == 0

    meta = json.loads((out / "metadata.json").read_text(encoding="utf-8"))
    assert meta["splits"]["train"]["num_records"] == 3 and meta["num_failed"] == 1
    failures = [json.loads(x) for x in (out / "failures.jsonl").read_text("utf-8").splitlines()]
    assert [(f["id"], f["path"]) for f in failures] == [("bad\\xff", "bad\\xff.mp4")]
    source, _ = pipeline.open_split(out, "train")
    ids = sorted(records.decode(source[i])["id"] for i in range(len(source)))
    assert ids == ["caf\\xe9", "clip_00000", "clip_00001"]
    # A rerun finds everything done (it used to fail the same way every time).
    assert _convert("--input", str(src), "--output", str(out)) == 0


# ----------------------------------------------------------------------------- shards


def test_readers_take_exactly_the_shards_metadata_lists(tmp_path, clips):
    out = tmp_path / "out"
    assert _convert("--input", str(_folder(tmp_path / "in", clips)), "--output", str(out)) == 0
    shard = out / "train.array_record-00000-of-00001"
    stray = out / "train.array_record-00003-of-00007"  # left by an older conversion
    shutil.copy(shard, stray)
    with pytest.raises(ValueError, match=f"{stray}.*delete them, or rerun data_prep.convert"):
        pipeline.open_split(out, "train")
    stray.unlink()
    source, names = pipeline.open_split(out, "train")
    assert len(source) == 2 and names == [shard.name]
    shard.rename(tmp_path / "elsewhere")
    with pytest.raises(FileNotFoundError, match=f"{shard} is missing"):
        pipeline.open_split(out, "train")
    with pytest.raises(FileNotFoundError, match="no split 'val'"):
        pipeline.open_split(out, "val")


# ----------------------------------------------------------------------------- discovery


def test_folder_discovery_follows_symlinks_and_says_what_it_skips(tmp_path, clips, capsys):
    src = _folder(tmp_path / "in", clips[:1])
    elsewhere = _folder(tmp_path / "elsewhere", clips[1:])
    (src / "linked").symlink_to(elsewhere, target_is_directory=True)
    (src / "sub").mkdir()
    (src / "sub" / "up").symlink_to("..", target_is_directory=True)  # a loop
    for name in ("a.wav", "b.flac", "c.mp3"):
        (src / name).write_bytes(b"")
    items, failures, _, _ = collect_items(str(src), "train", 16)
    assert sorted(it.id for it in items) == ["clip_00000", "linked/clip_00001"] and not failures
    err = capsys.readouterr().err
    assert err.count("(a loop); not followed") == 1 and f"{src / 'sub' / 'up'} links" in err
    assert "3 audio-only files skipped" in err and "CSV of visual,audio pairs" in err


# ----------------------------------------------------------------------------- CSV encodings


def test_csv_files_with_a_byte_order_mark_read_as_plain_utf8(tmp_path, clips):
    bom = "\ufeff"
    pairs = tmp_path / "pairs.csv"
    pairs.write_text(bom + f"visual,audio,id\n{clips[0]},,one\n{clips[1]},,two\n",
                     encoding="utf-8")
    items, failures, _, kind = collect_items(str(pairs), "train", 16)
    assert kind == "pairs" and not failures
    assert [(it.id, it.video) for it in items] == [("one", str(clips[0])), ("two", str(clips[1]))]

    src = _folder(tmp_path / "in", clips)
    labels = tmp_path / "labels.csv"
    labels.write_text(bom + "id,labels\nclip_00000,dog\nclip_00001,café\n", encoding="utf-8")
    items, failures, vocab, _ = collect_items(str(src), "train", 16, label_csv=str(labels))
    assert not failures and [v["mid"] for v in vocab] == ["café", "dog"]
    vocabulary = tmp_path / "vocab.csv"
    vocabulary.write_text(bom + "index,mid,display_name\n0,/m/dog,dog\n1,/m/cafe,café\n",
                          encoding="utf-8")
    items, failures, vocab, _ = collect_items(str(src), "train", 16, label_csv=str(labels),
                                              vocabulary_csv=str(vocabulary))
    assert not failures and [v["display_name"] for v in vocab] == ["dog", "café"]
    assert sorted(it.labels for it in items) == [(0,), (1,)]


def test_a_csv_that_is_not_utf8_is_one_clear_error(tmp_path, clips, capsys):
    labels = tmp_path / "labels.csv"
    labels.write_bytes("id,labels\nclip_00000,dog\nclip_00001,café\n".encode("latin-1"))
    src = _folder(tmp_path / "in", clips)
    with pytest.raises(SystemExit, match=f"--labels {labels} line 3: not UTF-8 text.*save"):
        collect_items(str(src), "train", 16, label_csv=str(labels))
    pairs = tmp_path / "pairs.csv"
    pairs.write_bytes(f"visual,labels\n{clips[0]},café\n".encode("latin-1"))
    with pytest.raises(SystemExit) as e:
        _convert("--input", str(pairs), "--output", str(tmp_path / "out"))
    assert e.value.code == 2
    assert f"--input {pairs} line 2: not UTF-8 text" in _one_error_line(capsys)


# ----------------------------------------------------------------------------- one line


def test_a_datafile_without_data_is_one_line(tmp_path, capsys):
    datafile = tmp_path / "datafile.json"
    datafile.write_text(json.dumps({"entries": []}))
    with pytest.raises(SystemExit) as e:
        _convert("--input", str(datafile), "--output", str(tmp_path / "a"))
    assert e.value.code == 2
    assert f'{datafile}: an official datafile is {{"data"' in _one_error_line(capsys)


def test_an_output_folder_that_cannot_be_written_is_one_line(tmp_path, clips, capsys):
    # An output folder that cannot be created. Tests run as root, whom chmod does not stop, so
    # the folder is put under a regular file: mkdir fails with ENOTDIR whoever runs it.
    blocker = tmp_path / "a_file"
    blocker.write_text("")
    with pytest.raises(SystemExit) as e:
        _convert("--input", str(_folder(tmp_path / "in", clips)), "--output",
                 str(blocker / "sub"))
    assert e.value.code == 2
    line = _one_error_line(capsys)
    assert str(blocker / "sub") in line and "choose another path" in line


def test_a_full_disk_is_one_line(tmp_path, clips, capsys, monkeypatch):
    """ArrayRecord reports a full disk as RuntimeError; the run ends with one line naming the
    shard. (Simulated: a real full disk needs a small mount.)"""
    from array_record.python import array_record_module

    class FullDisk:
        def __init__(self, path: str, options: str):
            self.path = path

        def write(self, data: bytes) -> None:
            raise RuntimeError(f"write() failed: No space left on device; writing {self.path}")

        def close(self) -> None:
            pass

    monkeypatch.setattr(array_record_module, "ArrayRecordWriter", FullDisk)
    out = tmp_path / "out"
    with pytest.raises(SystemExit) as e:
        _convert("--input", str(_folder(tmp_path / "in", clips)), "--output", str(out))
    assert e.value.code == 2
    line = _one_error_line(capsys)
    assert f"{out / 'train.array_record-00000-of-00001.tmp'}: No space left" in line
    assert "free some space" in line


def test_a_random_file_as_checkpoint_is_one_line(tmp_path, capsys):
    junk = tmp_path / "junk.npz"
    junk.write_bytes(np.random.default_rng(0).bytes(300))
    with pytest.raises(SystemExit) as e:
        ckpt_convert.main(["--torch", str(junk), "--arch", "sync", "--out", str(tmp_path / "p")])
    assert e.value.code == 2
    assert f"{junk} is not a checkpoint" in _one_error_line(capsys)


def test_to_torch_without_torch_is_one_line(tmp_path, capsys):
    try:
        import torch  # noqa: F401
    except ImportError:
        pass
    else:
        pytest.skip("torch is installed: this checks the error shown without it")
    with pytest.raises(SystemExit) as e:
        ckpt_convert.main(["--to_torch", "--params", str(tmp_path), "--out",
                           str(tmp_path / "sd.pth")])
    assert e.value.code == 2
    assert "sd.pth needs PyTorch" in _one_error_line(capsys)


def test_training_on_a_split_without_records_is_one_line(tmp_path, clips):
    src = tmp_path / "in"
    src.mkdir()
    (src / "broken.mp4").write_bytes(b"not a video")
    data = tmp_path / "data"
    assert _convert("--input", str(src), "--output", str(data)) == 1  # nothing converted
    proc = run_cli("cavmae_jax.main", "--config=configs/demo.py:test",
                   f"--workdir={tmp_path / 'w'}", f"--config.data.dir={data}")
    err = proc.stderr.strip().splitlines()
    assert proc.returncode == 2 and len(err) == 1, proc.stderr[-3000:]
    assert "split 'train'" in err[0] and "has no records" in err[0] and "failures.jsonl" in err[0]


def test_evaluating_a_params_dir_with_missing_keys_is_one_line(tmp_path):
    """A params directory whose arrays do not fit its config: one line naming the keys."""
    import jax

    from cavmae_jax import config as config_lib
    from cavmae_jax.models import init_model_params
    from cavmae_jax.train import checkpoint
    from cavmae_jax.train.run import build_model
    from configs import demo

    cfg = config_lib.build(demo.get_config("test"))
    params = jax.device_get(init_model_params(build_model(cfg), jax.random.PRNGKey(0)))
    del params["blocks_a_0"]
    bad = tmp_path / "params"
    checkpoint.save_params(bad, params, {"config": cfg.to_dict()})
    proc = run_cli("cavmae_jax.evaluate", f"--checkpoint={bad}", f"--data_dir={tmp_path}")
    err = proc.stderr.strip().splitlines()
    assert proc.returncode == 2 and len(err) == 1, proc.stderr[-2000:]
    assert "do not match its model config" in err[0] and "missing (blocks_a_0/" in err[0]
