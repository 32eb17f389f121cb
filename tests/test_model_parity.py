"""Our model against the official PyTorch code, on the parity fixtures.

Tolerances (the issue's): scale-relative error max|ours - ref| / max|ref| <= 1e-5 for outputs
and losses, <= 5e-5 for gradients; masks, ids_restore and c_acc exactly equal.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P
from parity_utils import assert_close, group, load_case, nchw_to_nhwc

from cavmae_jax import convert
from cavmae_jax.models.cavmae import CAVMAE, audio_to_image
from cavmae_jax.models.layers import patchify, unpatchify

OUT_TOL, GRAD_TOL = 1e-5, 5e-5
CASES = {"sync_tiny": "sync", "cavmae_tiny": "cavmae"}


class Case:
    """A fixture, converted: model, params and inputs in our layout."""

    def __init__(self, name: str):
        self.meta, arrays = load_case(name)
        self.arch = CASES[name]
        self.params_sd = group(arrays, "param")
        self.out = group(arrays, "output")
        self.grads = group(arrays, "grad")
        inputs, noise = group(arrays, "input"), group(arrays, "noise")
        self.model, self.params = convert.load_torch_model(
            self.params_sd, arch=self.arch, **self.meta["constructor_kwargs"])
        self.audio = jnp.asarray(inputs["audio"])
        self.video = jnp.asarray(nchw_to_nhwc(inputs["video"]))
        self.noise_a = jnp.asarray(noise["audio"])
        self.noise_v = jnp.asarray(noise["video"])
        unused_key = "trainable_but_unused_in_pretraining_forward (grad stored as 0)"
        self.unused = set(self.meta[unused_key])

    def pretrain(self, params, *inputs, mutable=("intermediates",)):
        inputs = inputs or (self.audio, self.video, self.noise_a, self.noise_v)
        return self.model.apply({"params": params}, *inputs, method=CAVMAE.pretrain,
                                mutable=list(mutable))

    def loss(self, params, *inputs):
        return self.pretrain(params, *inputs, mutable=())[0]["loss"]


@pytest.fixture(scope="module", params=sorted(CASES))
def case(request) -> Case:
    return Case(request.param)


@pytest.fixture(scope="module")
def run(case) -> dict:
    """One jitted call on one device: features, pretrain outputs, intermediates and gradients."""

    def everything(params):
        def loss_fn(p):
            res, state = case.pretrain(p)
            return res["loss"], (res, state["intermediates"])

        (_, (res, inter)), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
        feats = case.model.apply({"params": params}, case.audio, case.video,
                                 method=CAVMAE.features)
        return feats, res, {k: v[0] for k, v in inter.items()}, grads

    params = jax.device_put(case.params, jax.devices()[0])
    feats, res, inter, grads = jax.jit(everything)(params)
    return dict(feats=feats, res=res, inter=inter, grads=grads)


def test_features(case, run):
    feats = run["feats"]
    if case.arch == "sync":
        refs = dict(patches_a="feat_patches_a", patches_v="feat_patches_v",
                    global_a="feat_cls_a", global_v="feat_cls_v")
    else:
        refs = dict(patches_a="feat_tokens_a", patches_v="feat_tokens_v")
        # CAV-MAE's retrieval vector is the token mean of forward_feat's tokens.
        for m in "av":
            np.testing.assert_allclose(feats[f"global_{m}"],
                                       case.out[f"feat_tokens_{m}"].mean(1), atol=1e-6)
    for ours, ref in refs.items():
        assert_close(feats[ours], case.out[ref], OUT_TOL, ours)


def test_pretrain_outputs_and_intermediates(case, run):
    res, inter = run["res"], run["inter"]
    for key in ("loss", "loss_mae", "loss_mae_a", "loss_mae_v", "loss_c", "pred_a", "pred_v"):
        assert_close(res[key], case.out[key], OUT_TOL, key)
    for key in ("mask_a", "mask_v"):
        np.testing.assert_array_equal(res[key], case.out[key])
    assert float(res["c_acc"]) == float(case.out["c_acc"])
    for m in "av":
        np.testing.assert_array_equal(inter[f"ids_restore_{m}"], case.out[f"ids_restore_{m}"])
        assert_close(inter[f"tokens_{m}"], case.out[f"enc_tokens_{m}"], OUT_TOL, f"tokens_{m}")
        assert_close(inter[f"contrastive_in_{m}"], case.out[f"contrastive_in_{m}"], OUT_TOL,
                     f"contrastive_in_{m}")
    assert_close(inter["latent"], case.out["enc_latent"], OUT_TOL, "enc_latent")
    assert_close(inter["nce_unweighted"], case.out["nce_unweighted"], OUT_TOL, "nce")
    if case.arch == "sync":
        for m in "av":
            assert_close(inter[f"global_{m}"], case.out[f"enc_cls_{m}"], OUT_TOL, f"enc_cls_{m}")
            # forward()'s last two outputs are the visible patch tokens of the masked pass.
            assert_close(inter[f"tokens_{m}"], case.out[f"fwd_patch_tokens_{m}"], OUT_TOL, m)
        # forward()'s recon_* are the predictions unpatchified to channels-last images.
        fa, ta = case.model.config.audio_grid
        recon_a = unpatchify(res["pred_a"], fa, ta, 16, 1)  # [B, 128, T, 1]
        recon_v = unpatchify(res["pred_v"], 14, 14, 16, 3)
        assert_close(recon_a, case.out["recon_a"], OUT_TOL, "recon_a")
        assert_close(recon_v, case.out["recon_v"], OUT_TOL, "recon_v")


def _check_grads(case: Case, grads) -> None:
    ours = convert.params_to_torch(grads)
    assert set(case.grads) <= set(ours), set(case.grads) - set(ours)
    for name, ref in case.grads.items():
        if name in case.unused:
            np.testing.assert_array_equal(ours[name], 0.0, err_msg=name)
        else:
            assert_close(ours[name], ref, GRAD_TOL, f"grad {name}")
    # The fixed sin-cos tables are frozen: no gradient flows into them.
    for name in convert.POS_TABLES:
        np.testing.assert_array_equal(ours[name], 0.0)


def test_gradients_jit_one_device(case, run):
    assert len(case.grads) > 100
    _check_grads(case, run["grads"])


def test_sharded_over_8_devices_matches(case):
    """Batch over 'data' and params FSDP-sharded over 'fsdp' on a 2 x 4 mesh of 8 devices."""
    from cavmae_jax import parallel

    mesh = parallel.make_mesh(data=2, fsdp=4)
    batch_sharding = NamedSharding(mesh, P("data"))
    inputs = [jax.device_put(x, batch_sharding)
              for x in (case.audio, case.video, case.noise_a, case.noise_v)]
    params = jax.device_put(case.params, parallel.tree_shardings(case.params, mesh))
    loss, grads = jax.jit(jax.value_and_grad(case.loss))(params, *inputs)
    assert_close(loss, case.out["loss"], OUT_TOL, "loss")
    _check_grads(case, grads)


def test_per_example_outputs_with_batch_over_all_8_devices(case):
    """The 2-clip batch tiled to 8 and split one clip per device: per-clip outputs unchanged.

    (The MAE losses are means over all removed patches, so tiling leaves them unchanged too;
    the contrastive loss is not, since copies become negatives of each other.)
    """
    from cavmae_jax import parallel

    mesh = parallel.make_mesh(data=8, fsdp=1)
    tile = lambda x: jax.device_put(jnp.tile(x, (4,) + (1,) * (x.ndim - 1)),
                                    NamedSharding(mesh, P("data")))
    inputs = [tile(x) for x in (case.audio, case.video, case.noise_a, case.noise_v)]
    run = jax.jit(lambda p, *x: case.pretrain(p, *x, mutable=())[0])
    res = run(case.params, *inputs)
    assert res["pred_a"].sharding.spec[0] == "data"
    for key in ("pred_a", "pred_v", "mask_a", "mask_v"):
        ours = np.asarray(res[key]).reshape((4,) + case.out[key].shape)
        for copy in ours:
            assert_close(copy, case.out[key], OUT_TOL, key)
    for key in ("loss_mae_a", "loss_mae_v"):
        assert_close(res[key], case.out[key], OUT_TOL, key)
    feats = jax.jit(lambda p, a, v: case.model.apply({"params": p}, a, v,
                                                     method=CAVMAE.features))(
        case.params, inputs[0], inputs[1])
    ref = case.out["feat_cls_a"] if case.arch == "sync" else case.out["feat_tokens_a"].mean(1)
    for copy in np.asarray(feats["global_a"]).reshape((4,) + ref.shape):
        assert_close(copy, ref, OUT_TOL, "global_a")


def test_mae_target_layout_matches_official_patchify(case):
    """Audio patches are frequency-major and flattened (p, q, c): check against the definition."""
    x = np.asarray(case.audio)  # [B, T, 128]
    b, t, f = x.shape
    img = np.transpose(x, (0, 2, 1))  # [B, 128 (freq), T]
    ours = np.asarray(patchify(audio_to_image(case.audio), 16))
    for fi in range(f // 16):
        for ti in range(t // 16):
            want = img[:, fi * 16:(fi + 1) * 16, ti * 16:(ti + 1) * 16].reshape(b, -1)
            np.testing.assert_array_equal(ours[:, fi * (t // 16) + ti], want)
