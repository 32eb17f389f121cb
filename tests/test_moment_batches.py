"""M moments per clip in a train batch (`data.moments_per_clip`): layout, content, resume,
config checks, that the clip's other moments are the contrastive loss's negatives, and the
in-clip loss (`model.in_clip_loss_weight`)."""

import pathlib

import grain
import jax
import numpy as np
import pytest

from cavmae_jax import audio, losses
from cavmae_jax import config as config_lib
from cavmae_jax.data import pipeline, records
from cavmae_jax.data import synthetic as synth
from cavmae_jax.models import config as model_config
from cavmae_jax.models.cavmae import CAVMAE, init_params
from cavmae_jax.train.run import Run, resolve_config
from configs import demo
from data_prep import convert
from data_prep import synthetic as prep

NUM_CLIPS, M, BATCH = 6, 4, 8  # 8 = 2 clips x 4 moments


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory) -> pathlib.Path:
    """6 real 2 s clips (48x48, 8 fps, 16 frames each) in 2 shards."""
    root = tmp_path_factory.mktemp("moments_data")
    cfg = synth.ClipConfig(duration=2.0, fps=8, height=48, width=48, num_classes=2)
    prep.write_dataset(root / "clips", NUM_CLIPS, seed=5, config=cfg, progress=False)
    out = root / "records"
    assert convert.main(["--input", str(root / "clips"), "--output", str(out), "--workers", "1",
                         "--shard_size", "3", "--no_progress"]) == 0
    return out


def _iterator(data_dir, **kw) -> grain.DatasetIterator:
    return pipeline.make_train_iterator(
        data_dir, "train", global_batch_size=BATCH, seed=1, process_index=0, process_count=1,
        moments_per_clip=M, **kw)


def test_a_batch_holds_m_distinct_moments_of_each_clip(data_dir):
    src = grain.sources.ArrayRecordDataSource(pipeline.shard_paths(data_dir, "train"))
    recs = [records.decode(src[i]) for i in range(len(src))]
    it = _iterator(data_dir)
    epoch_clips = []
    for _ in range(NUM_CLIPS * M // BATCH):  # one epoch: every clip once
        b = next(it)
        assert b["audio"].shape == (BATCH, 416, 128) and b["video"].shape[0] == BATCH
        blocks = b["clip_index"].reshape(-1, M)
        assert (blocks == blocks[:, :1]).all()  # a clip's moments sit next to each other
        epoch_clips += blocks[:, 0].tolist()
        for row in range(BATCH):
            rec, k = recs[int(b["clip_index"][row])], int(b["frame_k"][row])
            s, e = rec["windows"][k]
            np.testing.assert_allclose(b["audio"][row], audio.normalize(rec["fbank"][s:e]),
                                       rtol=1e-6)
            np.testing.assert_array_equal(b["video"][row], rec["frames"][k])
        ks = b["frame_k"].reshape(-1, M)
        assert all(len(set(r.tolist())) == M for r in ks)  # distinct moments
    assert sorted(epoch_clips) == list(range(NUM_CLIPS))


def test_moment_batches_resume_exactly(data_dir):
    it = _iterator(data_dir)
    next(it)
    state = it.get_state()
    want = [next(it) for _ in range(3)]
    again = _iterator(data_dir)
    again.set_state(state)
    for a, b in zip(want, [next(again) for _ in range(3)], strict=True):
        for key in a:
            np.testing.assert_array_equal(a[key], b[key], err_msg=key)


def test_one_moment_per_clip_is_the_official_stream(data_dir):
    """M = 1 (the default) keeps the official batches exactly."""
    kw = dict(global_batch_size=4, seed=1, process_index=0, process_count=1)
    a = next(pipeline.make_train_iterator(data_dir, "train", **kw))
    b = next(pipeline.make_train_iterator(data_dir, "train", moments_per_clip=1, **kw))
    for key in a:
        np.testing.assert_array_equal(a[key], b[key], err_msg=key)


def test_the_clips_other_moments_are_negatives():
    """Embeddings that know the clip but not the moment: with one moment per clip the loss is
    ~0; with M moments per clip it cannot go below log(M), since the other M - 1 moments of
    the same clip compete with the positive."""
    clips = 4
    one_hot = np.eye(clips, 8, dtype=np.float32) * 50.0  # clip identity only
    official, _ = losses.info_nce(one_hot, one_hot, 0.05, "both")
    layout = np.repeat(one_hot, M, axis=0)  # [clip0 x M, clip1 x M, ...]
    moments, acc = losses.info_nce(layout, layout, 0.05, "both")
    assert float(official) < 1e-3
    np.testing.assert_allclose(float(moments), np.log(M), rtol=1e-5)
    assert float(acc) <= 1.0 / M + 1e-6


def _cfg(**changes):
    c = demo.get_config("test")
    c.data.dir = "unused"
    for key, value in changes.items():
        section, name = key.split(".", 1)
        if "." in name:
            sub, name = name.split(".")
            c[section][sub][name] = value
        else:
            c[section][name] = value
    return c


@pytest.mark.parametrize("changes, message", [
    ({"data.moments_per_clip": 0}, "moments_per_clip must be >= 1"),
    ({"data.moments_per_clip": 3, "train.global_batch_size": 8}, "not a multiple of"),
    ({"data.moments_per_clip": 2, "data.augment.mixup": 0.5}, "does not combine with"),
])
def test_bad_moment_settings_name_the_key(changes, message):
    with pytest.raises(config_lib.ConfigError, match=message):
        config_lib.build(_cfg(**changes))


def test_the_in_clip_loss_takes_its_groups_from_the_data():
    cfg = config_lib.build(_cfg(**{"data.moments_per_clip": 4, "train.global_batch_size": 8,
                                   "model.in_clip_loss_weight": 1.0}))
    assert cfg.model.clip_moments == 0  # the built config keeps the data's word for it
    assert resolve_config(cfg, {}, 1).model.clip_moments == 4
    one = config_lib.build(_cfg(**{"model.in_clip_loss_weight": 1.0}))
    with pytest.raises(config_lib.ConfigError, match="needs several moments of a clip"):
        resolve_config(one, {}, 1)


def test_the_in_clip_loss_contrasts_each_clip_with_itself_only():
    """in_clip_loss_weight adds InfoNCE over each clip's own M moments (one group per clip):
    clip identity alone lowers the batch loss but not this one, and it is scaled by both
    weights."""
    c = model_config.ModelConfig(embed_dim=32, num_heads=2, modality_specific_depth=1,
                                 decoder_embed_dim=16, decoder_depth=1, decoder_num_heads=2,
                                 audio_length=48, img_size=32, num_register_tokens=1,
                                 contrastive_direction="both", contrast_loss_weight=0.5,
                                 contrastive_unmasked=True, in_clip_loss_weight=2.0,
                                 clip_moments=M)
    model, params = CAVMAE(c), init_params(c, jax.random.key(0))
    k = jax.random.split(jax.random.key(1), 4)
    b = 2 * M
    args = (jax.random.normal(k[0], (b, 48, 128)), jax.random.normal(k[1], (b, 32, 32, 3)),
            jax.random.uniform(k[2], (b, c.num_patches_a)),
            jax.random.uniform(k[3], (b, c.num_patches_v)))
    out = model.apply({"params": params}, *args, method=CAVMAE.pretrain)
    f = model.apply({"params": params}, args[0], args[1], method=CAVMAE.features)
    batch_nce, _ = losses.info_nce(f["global_a"], f["global_v"], c.temperature, "both")
    per_clip = [losses.info_nce(f["global_a"][i:i + M], f["global_v"][i:i + M], c.temperature,
                                "both")[0] for i in range(0, b, M)]
    np.testing.assert_allclose(out["loss_c_in_clip"], 0.5 * 2.0 * np.mean(per_clip), rtol=1e-5)
    np.testing.assert_allclose(out["loss_c"], 0.5 * batch_nce + out["loss_c_in_clip"],
                               rtol=1e-5)
    off = CAVMAE(c.replace(in_clip_loss_weight=0.0)).apply({"params": params}, *args,
                                                           method=CAVMAE.pretrain)
    assert "loss_c_in_clip" not in off
    np.testing.assert_allclose(off["loss_c"], 0.5 * batch_nce, rtol=1e-5)


def test_negative_groups_must_not_split_a_clip(data_dir):
    cfg = _cfg(**{"data.moments_per_clip": 4, "train.global_batch_size": 8,
                  "model.negative_groups": 4})
    cfg.data.dir = str(data_dir)
    with pytest.raises(config_lib.ConfigError, match="split the 4 moments"):
        Run.build(config_lib.build(cfg), devices=jax.devices()[:1])


def test_a_train_step_on_moment_batches(data_dir):
    """The run counts clips per epoch and trains on M-moment batches (finite loss)."""
    c = _cfg(**{"data.moments_per_clip": M, "train.global_batch_size": BATCH,
                "train.num_steps": 2})
    c.data.dir = str(data_dir)
    run = Run.build(config_lib.build(c), devices=jax.devices()[:1])
    assert run.steps_per_epoch == NUM_CLIPS // (BATCH // M)
    state = run.init_state()
    batch = next(pipeline.make_train_iterator(
        data_dir, "train", global_batch_size=BATCH, seed=1, process_index=0, process_count=1,
        config=run.config.data))
    assert (batch["clip_index"].reshape(-1, M) == batch["clip_index"][::M, None]).all()
    state, m = run.train_step(state, run.global_batch(batch), np.bool_(True))
    assert np.isfinite(float(m["loss"])) and float(m["loss_c"]) > 0
