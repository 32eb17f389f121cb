"""Official state dict <-> our params: round trip, key reports, shape errors, files, CLI."""

import numpy as np
import pytest
from parity_utils import group, load_case

from cavmae_jax import convert


@pytest.mark.parametrize("name,arch", [("sync_tiny", "sync"), ("cavmae_tiny", "cavmae"),
                                       ("cavmae_ft_tiny", "cavmae_ft")])
def test_round_trip_is_identity(name, arch):
    meta, arrays = load_case(name)
    sd = group(arrays, "param")
    model, params = convert.load_torch_model(sd, arch=arch, **meta["constructor_kwargs"])
    back = convert.params_to_torch(params, model)
    assert set(back) == set(sd)
    for k, v in sd.items():
        assert back[k].shape == v.shape, k
        np.testing.assert_array_equal(back[k], v, err_msg=k)


def test_module_prefix_is_stripped_and_tables_compared():
    meta, arrays = load_case("sync_tiny")
    sd = {"module." + k: v for k, v in group(arrays, "param").items()}
    model = convert.build_model("sync", **meta["constructor_kwargs"])
    params, report = convert.convert_state_dict(sd, model)
    assert not report.missing and not report.unexpected
    # The official Sync tables are float32 sin-cos: within ~1e-5 of ours, and the checkpoint's
    # own values are the ones used.
    assert set(report.pos_table_max_diff) == set(convert.POS_TABLES)
    assert max(report.pos_table_max_diff.values()) < 1e-5
    np.testing.assert_array_equal(params["pos_embed_a"], arrays["param/pos_embed_a"])


def test_missing_and_unexpected_keys_are_named():
    meta, arrays = load_case("sync_tiny")
    sd = group(arrays, "param")
    del sd["blocks_u.0.attn.qkv.weight"]
    sd["constrative_head_audio.0.norm1.weight"] = np.ones(64, np.float32)
    with pytest.raises(convert.ConversionError) as err:
        convert.load_torch_model(sd, arch="sync", **meta["constructor_kwargs"])
    assert "blocks_u.0.attn.qkv.weight" in str(err.value)
    assert "constrative_head_audio.0.norm1.weight" in str(err.value)


def test_shape_mismatch_names_both_shapes():
    meta, arrays = load_case("sync_tiny")
    kwargs = dict(meta["constructor_kwargs"], audio_length=64)  # checkpoint was built for 32
    with pytest.raises(convert.ConversionError, match=r"pos_embed_a.*\(1, 16, 64\).*\(1, 32, 64\)"):
        convert.load_torch_model(group(arrays, "param"), arch="sync", **kwargs)


def test_unknown_official_kwarg_is_an_error():
    with pytest.raises(ValueError, match="unknown official constructor argument 'embed_dimm'"):
        convert.build_model("sync", embed_dimm=64)


def test_npz_file_and_cli_round_trip(tmp_path):
    meta, arrays = load_case("sync_tiny")
    sd = group(arrays, "param")
    src = tmp_path / "official.npz"
    np.savez(src, **{"module." + k: v for k, v in sd.items()})
    assert convert.read_state_dict(src).keys() == sd.keys()
    import json

    out_dir = tmp_path / "params"
    assert convert.main(["--torch", str(src), "--arch", "sync", "--kwargs",
                         json.dumps(meta["constructor_kwargs"]), "--out", str(out_dir)]) == 0
    back = tmp_path / "back.npz"
    assert convert.main(["--to_torch", "--params", str(out_dir), "--out", str(back)]) == 0
    with np.load(back) as z:
        assert set(z.files) == set(sd)
        for k in sd:
            np.testing.assert_array_equal(z[k], sd[k], err_msg=k)


def test_reading_pth_without_torch_says_how_to_install(tmp_path):
    try:
        import torch  # noqa: F401
    except ImportError:
        path = tmp_path / "x.pth"
        path.write_bytes(b"\0")
        with pytest.raises(ImportError, match=r"cavmae-jax\[torch\]"):
            convert.read_state_dict(path)
        return
    # With torch installed (the [torch] extra), a real .pth round-trips.
    meta, arrays = load_case("sync_tiny")
    sd = group(arrays, "param")
    path = tmp_path / "x.pth"
    convert.write_state_dict(sd, path)
    loaded = convert.read_state_dict(path)
    for k in sd:
        np.testing.assert_array_equal(loaded[k], sd[k])
