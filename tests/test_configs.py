"""The config tree: every recipe builds; every field is settable; bad keys fail with one line."""

import dataclasses
import json
import re
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from cavmae_jax import config
from cavmae_jax.train import state as state_lib
from configs import cavmae_pretrain, demo, finetune, sync_pretrain

CONFIGS = [(cavmae_pretrain, ""), (cavmae_pretrain, "local"), (sync_pretrain, ""),
           (sync_pretrain, "local"), (demo, ""), (demo, "long"), (demo, "test"),
           (finetune, "as20k"), (finetune, "as2m"), (finetune, "vggsound"),
           (finetune, "vggsound_local")]


@pytest.mark.parametrize("module,arg", CONFIGS)
def test_every_config_builds_and_round_trips(module, arg):
    cfg = config.build(module.get_config(arg))
    assert cfg.data.window_length == cfg.model.audio_length  # filled in from the model
    assert cfg.data.image_size == cfg.model.img_size
    assert config.from_dict(json.loads(json.dumps(cfg.to_dict()))) == cfg


def test_recipes_match_the_official_scripts():
    c = cavmae_pretrain.get_config()
    assert (c.train.global_batch_size, c.optim.lr, c.optim.weight_decay, c.train.num_epochs) == (
        48, 5e-5, 5e-7, 25)
    assert (c.optim.b1, c.optim.b2, c.model.norm_pix_loss) == (0.95, 0.999, True)
    vgg = finetune.get_config("vggsound")
    assert (vgg.finetune.loss, vgg.optim.head_lr_mult, vgg.finetune.wa_start) == ("ce", 10.0, 3)
    assert finetune.get_config("as20k").train.global_batch_size == 36
    # Class-balanced draws for AS-2M and VGGSound training (the eval pipelines never sample).
    for name, balanced in (("as20k", False), ("as2m", True), ("vggsound", True)):
        assert config.build(finetune.get_config(name)).data.balanced_sampling is balanced


def test_every_section_field_is_in_the_tree():
    """Each constructor's every argument can be set from the command line."""
    tree = config.base()
    for section in config.SECTIONS:
        cls = type(getattr(config.Config(), section))
        assert set(tree[section]) == {f.name for f in dataclasses.fields(cls)}, section
    for key in ("mixup_alpha", "crop_scale", "flip_prob"):
        assert key in tree.data.augment
    for key in ("eval_frame", "num_frames", "read_threads", "use_data_stats"):
        assert key in tree.data


@pytest.mark.parametrize("change,message", [
    (("model", "embed_dimm", 64), "unknown key config.model.embed_dimm"),
    (("data", "augment", {"flip": 1.0}), "unknown key config.data.augment.flip"),
    (("train", "global_batch_size", "many"), "config.train.global_batch_size must be int"),
    (("model", "audio_length", 420), "config.model: audio_length must be a positive multiple"),
    (("eval", "strategy", "median"), "config.eval: strategy must be one of"),
    (("finetune", "loss", "hinge"), "config.finetune: loss must be 'bce' or 'ce'"),
    (("optim", "name", "sgd"), "config.optim: name must be one of"),
    (("data", "window_length", 64), "config.data.window_length=64 differs"),
    (("data", "image_size", 112), "config.data.image_size=112 differs"),
])
def test_build_names_the_bad_key(change, message):
    values = config.base().to_dict()
    section, key, value = change
    values[section][key] = value
    with pytest.raises(config.ConfigError, match=re.escape(message)):
        config.build(values)
    with pytest.raises(ValueError, match="unknown finetune recipe"):
        finetune.get_config("audioset")


def test_missing_data_dir_is_one_clear_error():
    with pytest.raises(config.ConfigError, match="config.data.dir is empty"):
        config.require_data(config.build(demo.get_config()))


def test_resume_accepts_optimizer_changes_and_refuses_model_and_data_changes():
    saved = config.build(demo.get_config()).to_dict()
    changed = json.loads(json.dumps(saved))
    changed["optim"]["lr"] = 1.0
    changed["train"]["log_every"] = 7
    changed["model"]["num_heads"] = 2
    changed["model"]["dtype"] = "bfloat16"
    changed["data"]["dir"] = "/elsewhere"
    changed["data"]["augment"]["noise"] = True
    refused, allowed = config.split_resume_changes(saved, changed)
    assert [k for k, _, _ in refused] == ["data.augment.noise", "model.num_heads"]
    assert [k for k, _, _ in allowed] == ["data.dir", "model.dtype", "optim.lr",
                                          "train.log_every"]


@pytest.mark.parametrize("override,message", [
    ("--config.model.embed_dimm=64", "embed_dimm"),
    ("--config.train.global_batch_size=many", "global_batch_size"),
])
def test_command_line_rejects_unknown_or_ill_typed_keys(tmp_path, override, message):
    proc = subprocess.run(
        [sys.executable, "-m", "cavmae_jax.main", "--config=configs/demo.py",
         f"--workdir={tmp_path}", override], capture_output=True, text=True, timeout=120)
    assert proc.returncode != 0
    assert message in proc.stderr
    assert not (tmp_path / "checkpoints").exists()  # stopped before building anything


def test_weight_average_is_the_mean_of_the_snapshots():
    params = {"w": jnp.zeros((3,)), "b": jnp.zeros(())}
    state = state_lib.create(params, optax.sgd(1.0), seed=0, weight_averaging=True)
    snapshots = [np.array([1.0, 2.0, 3.0]), np.array([3.0, 2.0, 1.0]), np.array([2.0, 8.0, 5.0])]
    for i, snap in enumerate(snapshots):
        state = state.replace(params={"w": jnp.asarray(snap), "b": jnp.asarray(float(i))})
        state = jax.jit(state_lib.add_to_average)(state)
    np.testing.assert_allclose(state.avg_params["w"], np.mean(snapshots, 0), rtol=1e-6)
    np.testing.assert_allclose(state.avg_params["b"], 1.0)
    assert int(state.avg_count) == 3
    plain = state_lib.create(params, optax.sgd(1.0), seed=0)
    assert plain.avg_params is None and plain.avg_count is None
