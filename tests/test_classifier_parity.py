"""The classifier against the official CAVMAEFT on the `cavmae_ft_tiny` fixture."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from parity_utils import assert_close, group, load_case, nchw_to_nhwc

from cavmae_jax import convert, losses
from cavmae_jax.models import init_model_params
from cavmae_jax.models.heads import MODES, CAVMAEClassifier

OUT_TOL, GRAD_TOL = 1e-5, 5e-5


@pytest.fixture(scope="module")
def ft():
    meta, arrays = load_case("cavmae_ft_tiny")
    model, params = convert.load_torch_model(group(arrays, "param"), arch="cavmae_ft",
                                             **meta["constructor_kwargs"])
    inputs = group(arrays, "input")
    audio = jnp.asarray(inputs["audio"])
    video = jnp.asarray(nchw_to_nhwc(inputs["video"]))
    targets = jnp.asarray(inputs["targets"])

    def all_modes(p):
        return {m: model.apply({"params": p}, audio, video, m, method=CAVMAEClassifier.classify)
                for m in MODES}

    def bce(p):
        logits = model.apply({"params": p}, audio, video, "multimodal",
                             method=CAVMAEClassifier.classify)
        return losses.bce_with_logits(logits, targets)

    logits = jax.jit(all_modes)(params)
    loss, grads = jax.jit(jax.value_and_grad(bce))(params)
    return dict(meta=meta, arrays=arrays, model=model, logits=logits, loss=loss, grads=grads)


@pytest.mark.parametrize("mode", MODES)
def test_logits_every_mode(ft, mode):
    assert_close(ft["logits"][mode], ft["arrays"][f"output/logits_{mode}"], OUT_TOL, mode)


def test_bce_loss_and_gradients(ft):
    assert_close(ft["loss"], ft["arrays"]["output/bce_loss_multimodal"], OUT_TOL, "bce")
    ours = convert.params_to_torch(ft["grads"])
    refs = group(ft["arrays"], "grad")
    unused = set(ft["meta"]["trainable_but_unused_in_multimodal_forward (grad stored as 0)"])
    assert {"pos_embed_a", "pos_embed_v"} <= set(refs)  # tr_pos=True: the tables are trained
    for name, ref in refs.items():
        if name in unused:
            np.testing.assert_array_equal(ours[name], 0.0, err_msg=name)
        else:
            assert_close(ours[name], ref, GRAD_TOL, f"grad {name}")


def test_loading_a_pretraining_checkpoint_reports_the_official_key_lists(parity_dir):
    """A pretraining CAVMAE state dict into the classifier: head missing, decoder unexpected."""
    meta, _ = load_case("cavmae_ft_tiny")
    _, arrays = load_case("cavmae_tiny")
    pretrain_sd = {"module." + k: v for k, v in group(arrays, "param").items()}
    model = convert.build_model("cavmae_ft", **meta["constructor_kwargs"])
    fresh = init_model_params(model, jax.random.key(0))
    params, report = convert.convert_state_dict(pretrain_sd, model, fill=fresh)
    assert sorted(report.missing) == sorted(meta["from_pretrain_missing_keys"])
    assert sorted(report.unexpected) == sorted(meta["from_pretrain_unexpected_keys"])
    # Every encoder tensor came from the checkpoint; the head kept its fresh values.
    np.testing.assert_array_equal(params["norm"]["scale"], arrays["param/norm.weight"])
    np.testing.assert_array_equal(params["mlp_head_1"]["kernel"], fresh["mlp_head_1"]["kernel"])
    with pytest.raises(convert.ConversionError, match="mlp_head.0.weight"):
        convert.load_torch_model(pretrain_sd, arch="cavmae_ft", **meta["constructor_kwargs"])
    model, params = convert.load_torch_model(pretrain_sd, arch="cavmae_ft", strict=False,
                                             **meta["constructor_kwargs"])
    assert params["mlp_head_1"]["kernel"].shape == (64, 7)
