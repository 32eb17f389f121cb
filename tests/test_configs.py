"""Configs build and validate; bad keys fail at start-up; finetuning keeps a weight average."""

import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from cavmae_jax.train import loop
from cavmae_jax.train import state as state_lib
from configs import cavmae_pretrain, common, demo, finetune, sync_pretrain

CONFIGS = [(cavmae_pretrain, ""), (cavmae_pretrain, "local"), (sync_pretrain, ""),
           (sync_pretrain, "local"), (demo, ""), (demo, "test"), (finetune, "as20k"),
           (finetune, "as2m"), (finetune, "vggsound"), (finetune, "vggsound_local")]


@pytest.mark.parametrize("module,arg", CONFIGS)
def test_every_config_validates(module, arg):
    c = module.get_config(arg)
    c.data.dir = "somewhere"
    model = common.validate(c)
    assert model.audio_length % 16 == 0


def test_recipes_match_the_official_scripts():
    c = cavmae_pretrain.get_config()
    assert (c.train.global_batch_size, c.optim.lr, c.optim.weight_decay, c.train.num_epochs) == (
        48, 5e-5, 5e-7, 25)
    assert (c.optim.b1, c.optim.b2, c.model.norm_pix_loss) == (0.95, 0.999, True)
    vgg = finetune.get_config("vggsound")
    assert (vgg.finetune.loss, vgg.optim.head_lr_mult, vgg.finetune.wa_start) == ("ce", 10.0, 3)
    assert finetune.get_config("as20k").train.global_batch_size == 36
    # Class-balanced draws for AS-2M and VGGSound training only (never for evaluation).
    for name, balanced in (("as20k", False), ("as2m", True), ("vggsound", True)):
        c = finetune.get_config(name)
        c.data.dir = "somewhere"
        model_cfg = common.validate(c)
        assert loop.pipeline_config(c, model_cfg)["balanced_sampling"] is balanced
        assert loop.pipeline_config(c, model_cfg, train=False)["balanced_sampling"] is False


def test_validate_names_the_bad_key():
    c = demo.get_config()
    with pytest.raises(ValueError, match="config.data.dir is empty"):
        common.validate(c)
    c.data.dir = "x"
    c.train.negatives = "neighbours"
    with pytest.raises(ValueError, match="config.train.negatives"):
        common.validate(c)
    c = demo.get_config()
    c.data.dir = "x"
    c.model.audio_length = 420
    with pytest.raises(ValueError, match="config.model: .*audio_length"):
        common.validate(c)
    with pytest.raises(ValueError, match="unknown finetune recipe"):
        finetune.get_config("audioset")


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
