"""Mesh construction, global batch assembly and FSDP param sharding on 8 fake CPU devices."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import AxisType, PartitionSpec

from cavmae_jax import parallel


def test_eight_fake_devices():
    assert jax.device_count() == 8


@pytest.mark.parametrize(
    "data,fsdp,expected",
    [(-1, 1, (8, 1)), (2, 4, (2, 4)), (2, -1, (2, 4)), (-1, 8, (1, 8)), (1, 1, None)],
)
def test_make_mesh_shapes(data, fsdp, expected):
    if expected is None:  # 1 x 1 over all 8 devices does not tile them
        with pytest.raises(ValueError, match="does not tile 8"):
            parallel.make_mesh(data, fsdp)
        return
    mesh = parallel.make_mesh(data, fsdp)
    assert mesh.axis_names == ("data", "fsdp")
    assert tuple(mesh.shape.values()) == expected
    assert mesh.axis_types == (AxisType.Auto, AxisType.Auto)
    assert sorted(d.id for d in mesh.devices.flat) == list(range(8))


def test_make_mesh_on_a_device_subset():
    mesh = parallel.make_mesh(devices=jax.devices()[:1])
    assert tuple(mesh.shape.values()) == (1, 1)


def test_host_batch_to_global_assembles_sharded_batch():
    mesh = parallel.make_mesh(2, 4)
    rng = np.random.default_rng(0)
    batch = {
        "audio": rng.normal(size=(16, 32, 8)).astype(np.float32),  # [B, T, F]
        "label": np.arange(16, dtype=np.int32),
        "id": np.array([f"clip_{i}" for i in range(16)]),
    }
    out = parallel.host_batch_to_global(batch, mesh)
    assert out["audio"].shape == (16, 32, 8)
    assert out["audio"].sharding.spec == PartitionSpec(("data", "fsdp"))
    assert {s.data.shape for s in out["audio"].addressable_shards} == {(2, 32, 8)}
    np.testing.assert_array_equal(np.asarray(out["audio"]), batch["audio"])
    np.testing.assert_array_equal(np.asarray(out["label"]), batch["label"])
    assert isinstance(out["id"], np.ndarray) and out["id"][3] == "clip_3"  # stays on host
    # Every device holds a different contiguous slice of the batch.
    firsts = sorted(int(s.data[0]) for s in out["label"].addressable_shards)
    assert firsts == list(range(0, 16, 2))
    with pytest.raises(ValueError, match="scalar"):
        parallel.host_batch_to_global({"x": np.float32(1.0)}, mesh)


def test_fsdp_shape_rule():
    assert parallel.fsdp_spec((768, 3072), 4) == PartitionSpec(None, "fsdp")
    assert parallel.fsdp_spec((3072, 768), 4) == PartitionSpec("fsdp", None)
    assert parallel.fsdp_spec((6, 5), 4) == PartitionSpec()  # nothing divisible
    assert parallel.fsdp_spec((768,), 1) == PartitionSpec()  # no fsdp axis
    assert parallel.fsdp_spec((), 4) == PartitionSpec()  # scalars (opt step count)
    assert parallel.fsdp_spec((8, 8), 4, min_elements=100) == PartitionSpec()


class _Tiny(nn.Module):
    """Dense with logical names on its kernel, an unnamed param, and a non-divisible named one."""

    @nn.compact
    def __call__(self, x):  # x: [B, 16]
        kernel = self.param(
            "kernel",
            nn.with_logical_partitioning(nn.initializers.lecun_normal(), ("embed", "mlp")),
            (16, 12),
        )
        odd = self.param(
            "odd", nn.with_logical_partitioning(nn.initializers.ones, ("embed",)), (6,)
        )
        plain = self.param("plain", nn.initializers.normal(), (12, 8))
        return (x @ kernel) @ plain + odd.sum()  # [B, 8]


def test_tree_shardings_logical_and_shape_rules_and_jit_init():
    mesh = parallel.make_mesh(2, 4)
    model = _Tiny()
    x = jnp.ones((8, 16))
    abstract = jax.eval_shape(model.init, jax.random.key(0), x)
    shardings = parallel.tree_shardings(abstract, mesh)
    p = shardings["params"]
    assert p["kernel"].spec == PartitionSpec("fsdp", None)  # 'embed' -> fsdp by the rules table
    assert p["odd"].spec == PartitionSpec(None)  # 6 % 4 != 0: replicated
    assert p["plain"].spec == PartitionSpec("fsdp", None)  # shape rule: 12 divisible by 4

    init = jax.jit(lambda k: nn.meta.unbox(model.init(k, x)), out_shardings=shardings)
    params = init(jax.random.key(0))
    assert params["params"]["kernel"].sharding.spec == PartitionSpec("fsdp", None)
    assert {s.data.shape for s in params["params"]["kernel"].addressable_shards} == {(4, 12)}

    # A jitted forward over the sharded params and batch equals the single-device result.
    batch = parallel.host_batch_to_global({"x": np.random.rand(8, 16).astype(np.float32)}, mesh)
    y = jax.jit(lambda p, b: model.apply(p, b["x"]))(params, batch)
    y_ref = model.apply(jax.device_get(params), np.asarray(batch["x"]))
    np.testing.assert_allclose(np.asarray(y), np.asarray(y_ref), rtol=1e-5, atol=1e-5)

    # Without an fsdp axis everything is replicated.
    repl = parallel.tree_shardings(abstract, parallel.make_mesh(8, 1))
    assert repl["params"]["plain"].spec == PartitionSpec()


def test_maybe_initialize_distributed_is_a_noop_without_flag_or_env(monkeypatch):
    for key in ("JAX_COORDINATOR_ADDRESS", "SLURM_NTASKS", "OMPI_COMM_WORLD_SIZE"):
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setenv("TPU_WORKER_HOSTNAMES", "localhost")  # single-worker TPU VM
    assert parallel.maybe_initialize_distributed(False) is False
    monkeypatch.setenv("SLURM_NTASKS", "4")
    assert parallel._distributed_env_present()
