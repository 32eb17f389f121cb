"""Checkpointer: state + real Grain iterator together, resharding restores, retention, SIGTERM."""

import os
import signal
import time

import grain
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from array_record.python.array_record_module import ArrayRecordWriter
from jax.sharding import NamedSharding, PartitionSpec

from cavmae_jax import parallel
from cavmae_jax.train import checkpoint

NUM_RECORDS = 40


class _Decode(grain.transforms.Map):
    """bytes -> {'x': float32 [4], 'idx': int32}; record i holds i * [1, 2, 3, 4]."""

    def map(self, element: bytes) -> dict:
        x = np.frombuffer(element, np.float32)
        return {"x": x, "idx": np.int32(x[0])}


@pytest.fixture(scope="module")
def record_path(tmp_path_factory) -> str:
    path = str(tmp_path_factory.mktemp("data") / "train.array_record-00000-of-00001")
    writer = ArrayRecordWriter(path, "group_size:1,uncompressed")
    for i in range(NUM_RECORDS):
        writer.write((np.float32(i) * np.arange(1, 5, dtype=np.float32)).tobytes())
    writer.close()
    return path


def _iterator(record_path: str) -> grain.DatasetIterator:
    source = grain.sources.ArrayRecordDataSource([record_path])
    ds = (
        grain.MapDataset.source(source)
        .shuffle(seed=7)
        .map(_Decode())
        .batch(4, drop_remainder=True)
        .repeat()
        .to_iter_dataset()
    )
    return iter(ds)


def _state(mesh):
    """A train-state-like pytree (params, adam state, step) with FSDP shardings on `mesh`."""
    rng = np.random.default_rng(0)
    params = {
        "encoder": {"kernel": rng.normal(size=(16, 24)), "bias": rng.normal(size=(24,))},
        "mlp_head": {"kernel": rng.normal(size=(24, 8))},
    }
    params = jax.tree.map(lambda x: jnp.asarray(x, jnp.float32), params)
    state = {"params": params, "opt_state": optax.adam(1e-3).init(params), "step": jnp.int32(3)}
    # Make the Adam moments non-trivial so a wrong restore would show.
    state["opt_state"] = jax.tree.map(lambda x: x + 0.5, state["opt_state"])
    return jax.device_put(state, parallel.tree_shardings(state, mesh))


def _abstract(state, shardings):
    return jax.tree.map(
        lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), state, shardings
    )


def _assert_trees_equal(a, b):
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def _assert_batches_equal(got, expected):
    for g, e in zip(got, expected, strict=True):
        np.testing.assert_array_equal(g["x"], e["x"])
        np.testing.assert_array_equal(g["idx"], e["idx"])


def test_state_and_iterator_restore_onto_other_meshes(tmp_path, record_path):
    mesh8 = parallel.make_mesh(1, 8)
    state = _state(mesh8)
    assert state["params"]["encoder"]["kernel"].sharding.spec == PartitionSpec(None, "fsdp")

    it = _iterator(record_path)
    for _ in range(3):
        next(it)
    ckpt = checkpoint.Checkpointer(tmp_path / "ckpt", max_to_keep=2, save_interval_steps=3)
    assert ckpt.restore_latest(_abstract(state, parallel.tree_shardings(state, mesh8))) is None
    assert ckpt.save(3, state, it)
    expected = [next(it) for _ in range(3)]  # what a resumed run must see next
    ckpt.close()

    # "Restart" on a (2, 4) mesh: arrays resharded over fsdp=4, iterator continues.
    mesh24 = parallel.make_mesh(2, 4)
    ckpt = checkpoint.Checkpointer(tmp_path / "ckpt", max_to_keep=2, save_interval_steps=3)
    it2 = _iterator(record_path)
    restored, step = ckpt.restore_latest(
        _abstract(state, parallel.tree_shardings(state, mesh24)), it2
    )
    assert step == 3
    _assert_trees_equal(restored, state)
    kernel = restored["params"]["encoder"]["kernel"]
    assert kernel.sharding.mesh.shape == mesh24.shape
    assert {s.data.shape for s in kernel.addressable_shards} == {(16, 6)}
    mu = restored["opt_state"][0].mu["encoder"]["kernel"]
    assert mu.sharding.spec == PartitionSpec(None, "fsdp")
    _assert_batches_equal([next(it2) for _ in range(3)], expected)

    # And onto a single device.
    one = NamedSharding(parallel.make_mesh(devices=jax.devices()[:1]), PartitionSpec())
    restored1 = ckpt.restore(3, _abstract(state, jax.tree.map(lambda _: one, state)))
    _assert_trees_equal(restored1, state)
    assert len(restored1["params"]["encoder"]["kernel"].sharding.device_set) == 1
    ckpt.close()


def test_restore_without_saved_iterator_keeps_fresh_iterator(tmp_path, record_path):
    mesh = parallel.make_mesh()
    state = _state(mesh)
    with checkpoint.Checkpointer(tmp_path / "ckpt", save_interval_steps=1) as ckpt:
        ckpt.save(1, state)
        ckpt.wait()
        it = _iterator(record_path)
        restored, _ = ckpt.restore_latest(
            _abstract(state, parallel.tree_shardings(state, mesh)), it
        )
        _assert_trees_equal(restored, state)
        _assert_batches_equal([next(it)], [next(_iterator(record_path))])


def test_save_interval_force_and_max_to_keep(tmp_path):
    state = {"w": jnp.arange(4.0)}
    with checkpoint.Checkpointer(tmp_path / "ckpt", max_to_keep=2, save_interval_steps=2) as ckpt:
        saved = [ckpt.save(s, state) for s in range(1, 9)]
        assert saved == [False, True] * 4
        ckpt.wait()
        assert ckpt.all_steps() == [6, 8]
        assert ckpt.save(9, state, force=True)  # e.g. preemption at an off-interval step
        ckpt.wait()
        assert ckpt.all_steps() == [8, 9]
        assert ckpt.latest_step() == 9
    assert sorted(os.listdir(tmp_path / "ckpt")) == ["8", "9"]


def test_relative_workdir(tmp_path, monkeypatch):
    """`--workdir=runs/x` is relative; Orbax wants absolute paths (found by the demo)."""
    monkeypatch.chdir(tmp_path)
    state = {"w": jnp.arange(4.0), "b": jnp.ones((2, 3))}
    with checkpoint.Checkpointer("runs/ckpt", save_interval_steps=1) as ckpt:
        assert ckpt.save(1, state)
        ckpt.wait()
        restored, step = ckpt.restore_latest(jax.tree.map(np.asarray, state))
    assert step == 1
    np.testing.assert_array_equal(restored["b"], np.ones((2, 3)))
    checkpoint.save_params("runs/params", state, {"k": 1})
    params, meta = checkpoint.load_params("runs/params")
    assert meta == {"k": 1} and (tmp_path / "runs" / "ckpt" / "1").is_dir()


def test_sigterm_sets_stop_flag(tmp_path):
    previous = signal.getsignal(signal.SIGTERM)
    ckpt = checkpoint.Checkpointer(tmp_path / "ckpt")
    try:
        ckpt.install_sigterm_handler()
        assert not ckpt.should_stop(1)
        os.kill(os.getpid(), signal.SIGTERM)
        deadline = time.monotonic() + 2.0
        while not ckpt.should_stop(2) and time.monotonic() < deadline:
            time.sleep(0.01)  # the Python-level handler runs between bytecodes
        assert ckpt.should_stop(2)
    finally:
        ckpt.close()
    assert signal.getsignal(signal.SIGTERM) is previous


def test_params_only_checkpoint_roundtrip(tmp_path):
    params = {"blocks_0": {"kernel": np.arange(24.0, dtype=np.float32).reshape(4, 6)}}
    meta = {"source": "cav-mae-scale++.pth", "arch": "cavmae", "missing": []}
    checkpoint.save_params(tmp_path / "init", params, meta)
    loaded, loaded_meta = checkpoint.load_params(tmp_path / "init")
    assert loaded_meta == meta
    np.testing.assert_array_equal(
        np.asarray(loaded["blocks_0"]["kernel"]), params["blocks_0"]["kernel"]
    )

    mesh = parallel.make_mesh(2, 4)
    target = _abstract(params, parallel.tree_shardings(params, mesh))
    sharded, _ = checkpoint.load_params(tmp_path / "init", target)
    assert sharded["blocks_0"]["kernel"].sharding.spec == PartitionSpec("fsdp", None)
    np.testing.assert_array_equal(
        np.asarray(sharded["blocks_0"]["kernel"]), params["blocks_0"]["kernel"]
    )
    with pytest.raises(Exception):  # noqa: B017 - orbax refuses to overwrite silently
        checkpoint.save_params(tmp_path / "init", params, meta)
    checkpoint.save_params(tmp_path / "init", params, {"v": 2}, overwrite=True)
    assert checkpoint.load_params(tmp_path / "init")[1] == {"v": 2}
