"""Model behaviour beyond the fixtures: other sizes, options, and official-code edge cases."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from cavmae_jax import losses
from cavmae_jax.models import masking
from cavmae_jax.models.cavmae import CAVMAE, init_params
from cavmae_jax.models.config import ModelConfig, from_official_kwargs

TINY = dict(embed_dim=32, num_heads=2, modality_specific_depth=1, joint_depth=1,
            decoder_embed_dim=16, decoder_depth=1, decoder_num_heads=2, audio_length=48,
            img_size=32)


def make(**overrides) -> tuple[CAVMAE, dict]:
    config = ModelConfig(**{**TINY, **overrides})
    return CAVMAE(config), init_params(config, jax.random.key(0))


def inputs(config: ModelConfig, batch: int = 3, seed: int = 0):
    k = jax.random.split(jax.random.key(seed), 4)
    audio = jax.random.normal(k[0], (batch, config.audio_length, 128))
    video = jax.random.normal(k[1], (batch, config.img_size, config.img_size, 3))
    return (audio, video, jax.random.uniform(k[2], (batch, config.num_patches_a)),
            jax.random.uniform(k[3], (batch, config.num_patches_v)))


def features(model, params, audio, video):
    return jax.jit(lambda p, a, v: model.apply({"params": p}, a, v, method=CAVMAE.features))(
        params, audio, video)


def pretrain(model, params, *args):
    return jax.jit(lambda p, *a: model.apply({"params": p}, *a, method=CAVMAE.pretrain))(
        params, *args)


@pytest.mark.parametrize("overrides", [
    dict(arch="sync", num_register_tokens=3, norm_pix_loss=True),
    dict(arch="sync", num_register_tokens=0, global_tokens=False, embed_dim=48, num_heads=3),
    dict(arch="sync", contrastive_heads=True, global_local_losses=True, audio_length=64),
    dict(arch="cavmae", global_tokens=False, num_register_tokens=0, mask_ratio_a=0.5,
         mask_ratio_v=0.7),
])
def test_shapes_and_finite_losses_across_configs(overrides):
    model, params = make(**overrides)
    c = model.config
    args = inputs(c)
    out = pretrain(model, params, *args)
    keep_a = masking.num_kept(c.num_patches_a, c.mask_ratio_a)
    assert out["pred_a"].shape == (3, c.num_patches_a, 256)
    assert out["pred_v"].shape == (3, c.num_patches_v, 768)
    assert int(out["mask_a"].sum()) == 3 * (c.num_patches_a - keep_a)
    for k in ("loss", "loss_mae_a", "loss_mae_v", "loss_c"):
        assert np.isfinite(out[k]), k
    np.testing.assert_allclose(out["loss"], out["loss_mae"] + out["loss_c"], rtol=1e-6)
    feats = features(model, params, args[0], args[1])
    assert feats["patches_a"].shape == (3, c.num_patches_a, c.embed_dim)
    assert feats["global_v"].shape == (3, c.embed_dim)


def test_batch_size_one_works():
    """The official code squeezes the global token to [D] at B=1 and crashes; we do not."""
    model, params = make(arch="sync", num_register_tokens=2)
    out = pretrain(model, params, *inputs(model.config, batch=1))
    assert out["loss_c"] == 0.0 and out["c_acc"] == 1.0  # one candidate: log_softmax = 0
    assert np.isfinite(out["loss"])


def test_zero_mae_weight_skips_the_decoder():
    """mae_loss_weight=0 crashes the official Sync forward; here it is contrastive-only."""
    model, params = make(arch="sync", num_register_tokens=2, mae_loss_weight=0.0)
    assert "decoder_embed" in params  # checkpoints stay complete
    out = pretrain(model, params, *inputs(model.config))
    assert "pred_a" not in out and out["loss_mae"] == 0.0
    np.testing.assert_allclose(out["loss"], out["loss_c"])
    grads = jax.jit(jax.grad(lambda p: pretrain(model, p, *inputs(model.config))["loss"]))(params)
    assert float(jnp.abs(grads["decoder_embed"]["kernel"]).max()) == 0.0


@pytest.mark.parametrize("overrides", [
    dict(arch="sync", num_register_tokens=2),
    dict(arch="sync", num_register_tokens=2, global_local_losses=True, contrastive_heads=True),
    dict(arch="cavmae", global_tokens=False, num_register_tokens=0),
])
def test_unmasked_contrast_uses_the_retrieval_features(overrides):
    """contrastive_unmasked: loss_c is InfoNCE of the unmasked features; the MAE is unchanged."""
    model, params = make(contrastive_unmasked=True, contrastive_direction="both",
                         contrast_loss_weight=0.5, **overrides)
    c = model.config
    args = inputs(c, batch=4)
    out = pretrain(model, params, *args)
    f = features(model, params, args[0], args[1])
    if c.global_tokens:
        want, _ = losses.info_nce(f["global_a"], f["global_v"], c.temperature, "both")
        if c.global_local_losses:
            local, _ = losses.info_nce(f["patches_a"].mean(1), f["patches_v"].mean(1),
                                       c.temperature, "both")
            want = (want + local) / 2
    else:
        want, _ = losses.info_nce(f["patches_a"].mean(1), f["patches_v"].mean(1),
                                  c.temperature, "both")
    np.testing.assert_allclose(out["loss_c"], 0.5 * want, rtol=1e-5)
    masked = pretrain(CAVMAE(c.replace(contrastive_unmasked=False)), params, *args)
    np.testing.assert_allclose(out["loss_mae"], masked["loss_mae"], rtol=1e-6)
    assert abs(float(out["loss_c"]) - float(masked["loss_c"])) > 1e-4


def test_joint_blocks_apply_cumulatively():
    """With 2 joint layers the first one must influence the modality passes (the official
    loop would use only the last block)."""
    model, params = make(arch="sync", num_register_tokens=1, joint_depth=2)
    audio, video, _, _ = inputs(model.config)
    feats = features(model, params, audio, video)
    changed = jax.tree.map(lambda x: x, params)
    bias = params["blocks_u_0"]["mlp"]["fc2"]["bias"]
    changed["blocks_u_0"]["mlp"]["fc2"]["bias"] = bias + jnp.linspace(-1.0, 1.0, 32)
    feats2 = features(model, changed, audio, video)
    assert float(jnp.abs(feats["global_a"] - feats2["global_a"]).max()) > 1e-3


def test_remat_and_fused_attention_match_the_plain_model():
    model, params = make(arch="sync", num_register_tokens=2)
    args = inputs(model.config)
    loss = lambda m: (lambda p: pretrain(m, p, *args)["loss"])
    ref_loss, ref_grads = jax.jit(jax.value_and_grad(loss(model)))(params)
    for variant in (dict(remat=True), dict(remat=True, remat_policy="dots_saveable"),
                    dict(attention_impl="fused")):
        other = CAVMAE(model.config.replace(**variant))
        value, grads = jax.jit(jax.value_and_grad(loss(other)))(params)
        np.testing.assert_allclose(value, ref_loss, rtol=1e-5, err_msg=str(variant))
        for a, b in zip(jax.tree.leaves(grads), jax.tree.leaves(ref_grads), strict=True):
            np.testing.assert_allclose(a, b, atol=2e-5, rtol=1e-4, err_msg=str(variant))


@pytest.mark.parametrize("overrides", [dict(), dict(contrastive_heads=True, joint_depth=2)])
def test_global_token_only_modality_passes_match_the_full_passes(overrides):
    """Sync pretraining computes only the global token in the modality passes' last block; the
    loss and every gradient equal the full passes' (taken when intermediates are collected)."""
    model, params = make(arch="sync", num_register_tokens=2, **overrides)
    args = inputs(model.config)

    def loss(p, full):
        out, _ = model.apply({"params": p}, *args, method=CAVMAE.pretrain,
                             mutable=["intermediates"] if full else [])
        return out["loss"]

    fast, fast_grads = jax.jit(jax.value_and_grad(lambda p: loss(p, False)))(params)
    full, full_grads = jax.jit(jax.value_and_grad(lambda p: loss(p, True)))(params)
    np.testing.assert_allclose(fast, full, rtol=1e-6)
    for a, b in zip(jax.tree.leaves(fast_grads), jax.tree.leaves(full_grads), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    # The block method behind it: the first Q tokens of the full output, for both attentions.
    from cavmae_jax.models.layers import Block

    x = jax.random.normal(jax.random.key(3), (2, 7, 32))
    for impl in ("xla", "fused"):
        blk = Block(num_heads=2, attention_impl=impl)
        p = blk.init(jax.random.key(4), x)
        full_out = blk.apply(p, x, "a")
        first = blk.apply(p, x, "a", 2, method=Block.first_tokens)
        assert first.shape == (2, 2, 32)
        np.testing.assert_allclose(first, full_out[:, :2], rtol=1e-5, atol=1e-6)


def test_bfloat16_compute_keeps_float32_params_and_stays_close():
    model, params = make(arch="sync", num_register_tokens=2)
    args = inputs(model.config)
    bf = CAVMAE(model.config.replace(dtype="bfloat16"))
    assert all(x.dtype == jnp.float32
               for x in jax.tree.leaves(init_params(bf.config, jax.random.key(0))))
    ref = pretrain(model, params, *args)
    out = pretrain(bf, params, *args)
    assert out["pred_a"].dtype == jnp.float32  # outputs are returned in float32
    # bf16 has ~3 significant digits: the losses agree to a few percent.
    for k in ("loss_mae_a", "loss_mae_v"):
        np.testing.assert_allclose(out[k], ref[k], rtol=5e-2)


def test_structured_audio_masking_removes_whole_columns():
    f, t = 8, 6
    noise = masking.structured_noise(jax.random.key(1), 4, f, t, 0.5, "time")
    x = jnp.zeros((4, f * t, 1))
    mask = np.asarray(masking.mask_tokens(x, noise, 0.5).mask).reshape(4, f, t)
    for m in mask:  # exactly int(t * 0.5) = 3 time columns fully removed, the rest kept
        assert sorted(m.sum(0).tolist()) == [0, 0, 0, 8, 8, 8]
    noise = masking.structured_noise(jax.random.key(2), 4, f, t, 0.5, "freq")
    mask = np.asarray(masking.mask_tokens(x, noise, 0.5).mask).reshape(4, f, t)
    for m in mask:
        assert sorted(m.sum(1).tolist()) == [0] * 4 + [6] * 4
    with pytest.raises(ValueError, match="structured mask mode"):
        masking.structured_noise(jax.random.key(0), 1, f, t, 0.5, "diagonal")


def test_info_nce_directions_and_negative_groups():
    k1, k2 = jax.random.split(jax.random.key(3))
    a, v = jax.random.normal(k1, (6, 8)), jax.random.normal(k2, (6, 8))
    za, zv = losses.l2_normalize(a), losses.l2_normalize(v)
    s = np.asarray(za @ zv.T / 0.05)
    # video_to_audio: softmax over audio rows for each video column (official dim=0).
    ref = -np.mean(np.diag(s - np.log(np.exp(s).sum(0, keepdims=True))))
    np.testing.assert_allclose(losses.info_nce(a, v)[0], ref, rtol=1e-5)
    ref_t = -np.mean(np.diag(s - np.log(np.exp(s).sum(1, keepdims=True))))
    np.testing.assert_allclose(losses.info_nce(a, v, direction="audio_to_video")[0], ref_t,
                               rtol=1e-5)
    np.testing.assert_allclose(losses.info_nce(a, v, direction="both")[0], (ref + ref_t) / 2,
                               rtol=1e-5)
    # Two groups: each half only sees its own negatives; the losses are averaged.
    halves = [losses.info_nce(a[i:i + 3], v[i:i + 3])[0] for i in (0, 3)]
    np.testing.assert_allclose(losses.info_nce(a, v, negative_groups=2)[0], np.mean(halves),
                               rtol=1e-6)


def test_learnable_temperature_gets_a_gradient():
    model, params = make(arch="sync", num_register_tokens=1, learnable_temperature=True)
    np.testing.assert_allclose(params["logit_scale"], np.log(20.0), rtol=1e-6)
    g = jax.grad(lambda p: pretrain(model, p, *inputs(model.config))["loss"])(params)
    assert float(jnp.abs(g["logit_scale"])) > 0


def test_bad_inputs_and_configs_are_clear_errors():
    model, params = make(arch="sync", num_register_tokens=1)
    audio, video, na, nv = inputs(model.config)
    with pytest.raises(ValueError, match="channels-last"):
        pretrain(model, params, audio, jnp.transpose(video, (0, 3, 1, 2)), na, nv)
    with pytest.raises(ValueError, match="noise must have shape"):
        pretrain(model, params, audio, video, na[:, :-1], nv)
    with pytest.raises(ValueError, match="multiple of patch_size"):
        ModelConfig(audio_length=420)
    with pytest.raises(ValueError, match="keeps no video token"):
        ModelConfig(img_size=32, mask_ratio_v=0.9)
    with pytest.raises(ValueError, match="no global/register tokens"):
        ModelConfig(arch="cavmae")
    with pytest.raises(ValueError, match="keep_register_tokens"):
        from_official_kwargs("sync", keep_register_tokens=True)


def test_official_constructor_defaults_are_mapped():
    released = from_official_kwargs("sync", audio_length=416, modality_specific_depth=11,
                                    num_register_tokens=8, cls_token=True, total_frame=16,
                                    contrastive_heads=False)
    assert released == ModelConfig()  # our defaults are the released Sync model
    ft = from_official_kwargs("cavmae_ft", label_dim=527)
    assert ft.trainable_pos_embed and ft.audio_length == 1024 and not ft.global_tokens
