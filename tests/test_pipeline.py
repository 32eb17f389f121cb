"""Grain pipelines on real shards: synthetic mp4s -> data_prep.convert -> train/eval/retrieval."""

import csv
import pathlib

import grain
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from cavmae_jax import audio, video
from cavmae_jax.data import pipeline, records, sampling
from cavmae_jax.data import synthetic as synth
from cavmae_jax.train import checkpoint
from data_prep import convert
from data_prep import synthetic as prep

NUM_TRAIN, NUM_EVAL, N = 7, 3, 16
# The official windows for N = 16 frames and L = 416.
SPEC_WINDOWS = [(0, 416)] * 4 + [(48, 464), (112, 528), (176, 592), (240, 656), (304, 720),
                                 (368, 784), (432, 848), (496, 912), (560, 976)] + [(608, 1024)] * 3
AUGMENT = {"noise": True, "freqm": 24, "timem": 60, "mixup": 0.5, "label_smooth": 0.1,
           "crop_and_flip": True}


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory) -> pathlib.Path:
    """10 real 2 s clips (64x64, 8 fps) converted to 7 train records in 2 shards + 3 eval."""
    root = tmp_path_factory.mktemp("pipeline_data")
    cfg = synth.ClipConfig(duration=2.0, fps=8, height=64, width=64, num_classes=4)
    rows = prep.write_dataset(root / "clips", NUM_TRAIN + NUM_EVAL, seed=0, config=cfg,
                              progress=False)
    classes = sorted({r["label_name"] for r in rows})
    with open(root / "pairs.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["visual", "labels", "id", "split"])
        for i, r in enumerate(rows):
            labels = r["label_name"]
            if i == 0:  # one multi-label clip
                labels = ",".join(sorted({labels, next(c for c in classes if c != labels)}))
            w.writerow([str(root / "clips" / r["path"]), labels, r["id"],
                        "train" if i < NUM_TRAIN else "eval"])
    out = root / "records"
    rc = convert.main(["--input", str(root / "pairs.csv"), "--output", str(out), "--workers",
                       "1", "--shard_size", "4", "--no_progress"])
    assert rc == 0
    return out


@pytest.fixture(scope="module")
def recs(data_dir) -> dict[str, list[dict]]:
    """All records decoded directly (the ground truth the pipeline must reproduce)."""
    out = {}
    for split in ("train", "eval"):
        src = grain.sources.ArrayRecordDataSource(pipeline.shard_paths(data_dir, split))
        out[split] = [records.decode(src[i]) for i in range(len(src))]
    return out


def _window(rec: dict, k: int, length: int = 416) -> np.ndarray:
    s, e = rec["windows"][k] if length == 416 else (0, 1024)
    return audio.normalize(rec["fbank"][s:e])


def _train(data_dir, **kw) -> grain.DatasetIterator:
    kw.setdefault("global_batch_size", 4)
    kw.setdefault("seed", 3)
    kw.setdefault("process_index", 0)
    kw.setdefault("process_count", 1)
    return pipeline.make_train_iterator(data_dir, "train", **kw)


def _assert_batches_equal(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for key in a:
        np.testing.assert_array_equal(a[key], b[key], err_msg=key)


def _assert_state_restores(data_dir, skip: int = 3, **kw) -> None:
    """After `skip` batches, get_state -> a fresh iterator's set_state gives the same batches."""
    it = _train(data_dir, **kw)
    for _ in range(skip):
        next(it)
    state = it.get_state()
    expected = [next(it) for _ in range(2)]
    it2 = _train(data_dir, **kw)
    it2.set_state(state)
    for want in expected:
        _assert_batches_equal(next(it2), want)


def _assert_processes_stack_to_single(data_dir, **kw) -> None:
    """make_array_from_process_local_data stacks process p's rows as block p: the stacked
    per-process batches must equal the single-process global batch, row for row."""
    single = _train(data_dir, global_batch_size=4, **kw)
    procs = [_train(data_dir, global_batch_size=4, process_index=p, process_count=2, **kw)
             for p in range(2)]
    for ref in single:
        parts = [next(it) for it in procs]
        assert all(len(p["clip_index"]) == 2 for p in parts)
        for key in ("clip_index", "frame_k", "audio"):
            np.testing.assert_array_equal(np.concatenate([p[key] for p in parts]), ref[key])


def test_normalize_image_on_device_equals_host():
    """The step normalizes the pipeline's uint8 (or float pixel) frames inside jit."""
    frames = np.random.default_rng(0).integers(0, 256, (2, 5, 7, 3), dtype=np.uint8)
    want = video.normalize_image(frames)
    assert want.dtype == np.float32
    for x in (frames, frames.astype(np.float32)):
        got = jax.jit(video.normalize_image)(jnp.asarray(x))
        assert got.dtype == jnp.float32
        np.testing.assert_allclose(np.asarray(got), want, rtol=0, atol=1e-6)


def test_records_carry_the_official_window_table(recs):
    assert len(recs["train"]) == NUM_TRAIN and len(recs["eval"]) == NUM_EVAL
    for rec in recs["train"]:
        assert rec["num_frames"] == N
        np.testing.assert_array_equal(rec["windows"], np.array(SPEC_WINDOWS))


def test_train_batch_matches_records(data_dir, recs):
    it = _train(data_dir)
    for _ in range(3):
        b = next(it)
        assert b["audio"].shape == (4, 416, 128) and b["audio"].dtype == np.float32
        assert b["video"].shape == (4, 224, 224, 3) and b["video"].dtype == np.uint8
        assert b["labels"].shape == (4, 4) and b["labels"].dtype == np.float32
        assert b["frame_k"].dtype == np.int32 and b["clip_index"].dtype == np.int64
        for i in range(4):
            rec, k = recs["train"][b["clip_index"][i]], int(b["frame_k"][i])
            assert 0 <= k < N
            # The window of the record's table for this k, normalized with the official stats.
            np.testing.assert_allclose(b["audio"][i], _window(rec, k), rtol=0, atol=1e-5)
            np.testing.assert_array_equal(b["video"][i], rec["frames"][k])  # pixels
            np.testing.assert_array_equal(b["labels"][i], records.multi_hot(rec["labels"], 4))
    assert recs["train"][0]["labels"].size == 2  # the multi-label clip


def test_train_epochs_k_and_determinism(data_dir):
    """Each epoch visits every clip once; k is redrawn per visit; same seed, same stream."""
    it = _train(data_dir, global_batch_size=1, num_epochs=3)
    visits = [(int(b["clip_index"][0]), int(b["frame_k"][0])) for b in it]
    assert len(visits) == 3 * NUM_TRAIN
    epochs = [visits[e * NUM_TRAIN:(e + 1) * NUM_TRAIN] for e in range(3)]
    for ep in epochs:
        assert sorted(c for c, _ in ep) == list(range(NUM_TRAIN))
    assert [c for c, _ in epochs[0]] != [c for c, _ in epochs[1]]  # reshuffled per epoch
    ks = {c: [dict(ep)[c] for ep in epochs] for c in range(NUM_TRAIN)}
    assert any(len(set(v)) > 1 for v in ks.values())
    again = [(int(b["clip_index"][0]), int(b["frame_k"][0]))
             for b in _train(data_dir, global_batch_size=1, num_epochs=3)]
    assert again == visits
    other = [(int(b["clip_index"][0]), int(b["frame_k"][0]))
             for b in _train(data_dir, global_batch_size=1, num_epochs=3, seed=4)]
    assert other != visits


@pytest.mark.parametrize("count", [2, 4])
def test_process_shards_disjoint_and_covering(data_dir, count):
    """Per epoch the P process streams partition the clips; a visit's k ignores the layout."""
    single = [(int(b["clip_index"][0]), int(b["frame_k"][0]))
              for b in _train(data_dir, global_batch_size=1, num_epochs=2)]
    per_process = []
    for p in range(count):
        it = _train(data_dir, global_batch_size=count, process_index=p, process_count=count,
                    num_epochs=2)
        per_process.append([(int(b["clip_index"][0]), int(b["frame_k"][0])) for b in it])
    # Process p holds row p of every global batch of P: position j is global position p + j * P.
    # Every process yields the same number of batches; the incomplete last global batch is
    # dropped, as a single process with the same global batch size would.
    assert len({len(vs) for vs in per_process}) == 1
    merged = {p + j * count: v for p, vs in enumerate(per_process) for j, v in enumerate(vs)}
    covered = 2 * NUM_TRAIN // count * count
    assert sorted(merged) == list(range(covered))
    assert [merged[i] for i in range(covered)] == single[:covered]
    first_epoch = [{merged[i][0] for i in range(NUM_TRAIN) if i % count == p}
                   for p in range(count)]
    assert set().union(*first_epoch) == set(range(NUM_TRAIN))
    assert sum(map(len, first_epoch)) == NUM_TRAIN  # disjoint


def test_balanced_sampling_draws_by_the_official_weights(data_dir, recs):
    """AS-2M / VGGSound finetuning: each epoch is N weighted draws with replacement."""
    weights = sampling.class_balanced_weights([r["labels"] for r in recs["train"]], 4)
    want = sampling.WeightedEpochs(weights, seed=3)
    it = _train(data_dir, balanced_sampling=True, num_epochs=8)
    clips = [int(c) for b in it for c in b["clip_index"]]
    assert clips == [want[i] for i in range(len(clips))]
    assert len(clips) == 8 * NUM_TRAIN // 4 * 4
    # The iterator state restores exactly, and two processes together give the global batches.
    _assert_state_restores(data_dir, skip=1, balanced_sampling=True)
    _assert_processes_stack_to_single(data_dir, balanced_sampling=True, num_epochs=2)


def test_labels_index_spares_reading_every_record(data_dir, recs, tmp_path):
    """Balanced sampling takes the labels from convert's `<split>.labels.npz`, not the records."""
    shards = pipeline.shard_paths(data_dir, "train")
    names = [pathlib.Path(p).name for p in shards]
    index = records.labels_index_path(data_dir, "train")
    want = [r["labels"].tolist() for r in recs["train"]]
    assert any(len(x) > 1 for x in want)  # the multi-label clip

    class Unread:  # a source of the right length that fails when a record is read
        def __len__(self):
            return NUM_TRAIN

        def __getitem__(self, i):
            raise AssertionError("read a record although the labels index exists")

    got = sampling.split_labels(index, names, Unread(), progress=False)
    assert [x.tolist() for x in got] == want
    # Without an index (a folder converted before it existed), or with one written for other
    # shards, the records are read instead.
    source = grain.sources.ArrayRecordDataSource(shards)
    for stale_index, stale_names in ((tmp_path / "train.labels.npz", names), (index, names[:1])):
        got = sampling.split_labels(stale_index, stale_names, source, progress=False)
        assert [x.tolist() for x in got] == want


def test_process_batches_concatenate_to_the_single_process_batch(data_dir):
    _assert_processes_stack_to_single(data_dir, num_epochs=2)


def test_augmented_train_batches(data_dir, recs):
    b = next(_train(data_dir, global_batch_size=7, augment=AUGMENT))
    assert b["audio"].shape == (7, 416, 128) and np.isfinite(b["audio"]).all()
    # Mixup on: float32 pixels for the whole batch (a mixed image is not an integer one).
    assert b["video"].shape == (7, 224, 224, 3) and b["video"].dtype == np.float32
    assert 0 <= b["video"].min() and b["video"].max() <= 255
    # Labels (label smoothing 0.1, K = 4): unmixed = positives 0.9, others 0.025; mixed =
    # 0.025 + lam * 0.9 * y1 + (1 - lam) * 0.9 * y2, so the clip's own positives exceed 0.025.
    mixed = 0
    for i in range(7):
        y = b["labels"][i]
        y1 = records.multi_hot(recs["train"][b["clip_index"][i]]["labels"], 4)
        if np.allclose(y, np.where(y1 > 0, 0.9, 0.025)):
            continue
        mixed += 1
        assert (y[y1 > 0] > 0.025).all() and y.min() >= 0.025 - 1e-6
        assert 0.1 + 0.9 - 1e-5 <= y.sum() <= 0.1 + 0.9 * 2 + 1e-5
    assert 0 < mixed < 7
    assert not np.allclose(b["audio"][0], _window(recs["train"][b["clip_index"][0]],
                                                  int(b["frame_k"][0])))


def test_iterator_state_restores_exactly(data_dir):
    _assert_state_restores(data_dir, augment=AUGMENT)


def test_checkpointer_saves_and_restores_the_iterator(data_dir, tmp_path):
    it = _train(data_dir)
    state = {"w": jnp.arange(3.0)}
    next(it)
    next(it)
    with checkpoint.Checkpointer(tmp_path / "ckpt", save_interval_steps=1) as ckpt:
        assert ckpt.save(2, state, it)
        ckpt.wait()
    expected = [next(it) for _ in range(2)]
    fresh = _train(data_dir)
    with checkpoint.Checkpointer(tmp_path / "ckpt") as ckpt:
        restored, step = ckpt.restore_latest(state, fresh)
    assert step == 2
    np.testing.assert_array_equal(restored["w"], np.arange(3.0))
    for want in expected:
        _assert_batches_equal(next(fresh), want)


def test_eval_uses_middle_frame_and_pads(data_dir, recs):
    batches = list(pipeline.make_eval_iterator(data_dir, "eval", global_batch_size=2,
                                               process_index=0, process_count=1))
    assert len(batches) == 2
    valid = np.concatenate([b["valid"] for b in batches])
    clips = np.concatenate([b["clip_index"] for b in batches])
    assert valid.tolist() == [True, True, True, False]
    assert clips[:3].tolist() == [0, 1, 2]
    for b in batches:
        assert (b["frame_k"] == N // 2).all()
        for i in range(2):
            rec = recs["eval"][b["clip_index"][i]]
            np.testing.assert_array_equal(rec["windows"][N // 2], [304, 720])
            np.testing.assert_allclose(b["audio"][i], _window(rec, N // 2), atol=1e-5)
            np.testing.assert_array_equal(b["video"][i], rec["frames"][N // 2])
    # Two processes: equal batch counts, and together every clip exactly once among the valid.
    per_p = [list(pipeline.make_eval_iterator(data_dir, "eval", global_batch_size=2,
                                              process_index=p, process_count=2))
             for p in range(2)]
    assert len(per_p[0]) == len(per_p[1]) == 2
    seen = [int(c) for bs in per_p for b in bs
            for c, v in zip(b["clip_index"], b["valid"], strict=True) if v]
    assert sorted(seen) == list(range(NUM_EVAL))


def test_cavmae_full_audio_and_configurable_eval_frame(data_dir, recs):
    b = next(pipeline.make_eval_iterator(data_dir, "eval", global_batch_size=3, process_index=0,
                                         process_count=1, window_length=1024, eval_frame=3))
    assert b["audio"].shape == (3, 1024, 128) and (b["frame_k"] == 3).all()
    for i in range(3):
        rec = recs["eval"][i]
        np.testing.assert_allclose(b["audio"][i], _window(rec, 3, 1024), atol=1e-5)
        np.testing.assert_array_equal(b["video"][i], rec["frames"][3])


def test_data_stats_normalization(data_dir, recs):
    meta = pipeline.load_metadata(data_dir)
    stats = meta["splits"]["train"]["fbank_stats"]
    b = next(_train(data_dir, use_data_stats=True))
    rec, k = recs["train"][b["clip_index"][0]], int(b["frame_k"][0])
    s, e = rec["windows"][k]
    want = (rec["fbank"][s:e] - stats["mean"]) / stats["std"]
    np.testing.assert_allclose(b["audio"][0], want, atol=1e-5)


def test_retrieval_yields_all_pairs_in_order(data_dir, recs):
    clips = list(pipeline.make_retrieval_iterator(data_dir, "eval", process_index=0,
                                                  process_count=1))
    assert [c["id"] for c in clips] == [r["id"] for r in recs["eval"]]
    for c, rec in zip(clips, recs["eval"], strict=True):
        assert c["audio"].shape == (N, 416, 128) and c["video"].shape == (N, 224, 224, 3)
        np.testing.assert_array_equal(c["frame_k"], np.arange(N))
        for k in range(N):
            np.testing.assert_allclose(c["audio"][k], _window(rec, k), atol=1e-5)
        assert c["video"].dtype == np.uint8
        np.testing.assert_array_equal(c["video"], rec["frames"])
    batched = list(pipeline.make_retrieval_iterator(data_dir, "eval", process_index=0,
                                                    process_count=1, clips_per_batch=2))
    assert batched[0]["audio"].shape == (2, N, 416, 128)
    assert np.concatenate([b["valid"] for b in batched]).tolist() == [True, True, True, False]
    np.testing.assert_array_equal(batched[1]["audio"][0], clips[2]["audio"])


def test_worker_process_gives_the_same_batches(data_dir):
    want = _train(data_dir, augment=AUGMENT)
    got = _train(data_dir, augment=AUGMENT, worker_count=1)
    for _ in range(2):
        _assert_batches_equal(next(got), next(want))
    got.close()  # stops the worker process now rather than at interpreter exit


def test_config_errors(data_dir):
    with pytest.raises(ValueError, match="multiple of process_count"):
        _train(data_dir, global_batch_size=3, process_count=2)
    with pytest.raises(ValueError, match="unknown pipeline config"):
        _train(data_dir, window_lenght=416)
    with pytest.raises(ValueError, match="unknown augment"):
        _train(data_dir, augment={"nosie": True})
    with pytest.raises(ValueError, match="expects num_frames=10"):
        _train(data_dir, num_frames=10)
    with pytest.raises(FileNotFoundError):
        _train(data_dir.parent)
    cfg = pipeline.make_config({"window_length": 1024, "augment": {"crop_scale": [0.5, 1.0]}})
    assert cfg.window_length == 1024 and cfg.augment.crop_scale == (0.5, 1.0)
    cd = ml_collections.ConfigDict({"eval_frame": 5, "augment": {"noise": True}})
    cfg = pipeline.make_config(cd, read_threads=0)
    assert (cfg.eval_frame, cfg.augment.noise, cfg.read_threads) == (5, True, 0)
    cfg = pipeline.make_config(cfg, augment={"mixup": 0.5})  # merges into the base augment
    assert cfg.augment.noise and cfg.augment.mixup == 0.5
