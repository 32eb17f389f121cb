"""Devices, mesh and shardings: one jit over a named ('data', 'fsdp') mesh.

* `maybe_initialize_distributed` must run before anything touches `jax.devices()`.
* `make_mesh` builds the 2-D mesh with `AxisType.Auto` (classic GSPMD propagation; note that
  `jax.make_mesh` defaults to Explicit axes in jax 0.10).
* `tree_shardings` turns a (possibly abstract, possibly boxed) pytree into NamedShardings:
  params carrying `nn.with_logical_partitioning` metadata go through a logical-axis rules table,
  the rest get a shape rule (shard the largest dim divisible by the fsdp size, else replicate).
* `host_batch_to_global` assembles each process's slice of the batch into global jax.Arrays.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping, Sequence
from typing import Any

import flax.linen as nn
import jax
import numpy as np
from jax.experimental import mesh_utils
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec

DATA_AXIS = "data"
FSDP_AXIS = "fsdp"
MESH_AXES = (DATA_AXIS, FSDP_AXIS)
BATCH_AXES = (DATA_AXIS, FSDP_AXIS)  # the batch dim is split over every device

# Logical axis name -> mesh axis (or None = replicated). Models name their param dims with
# `nn.with_logical_partitioning(init, ('embed', 'mlp'))`; the first rule whose mesh axis is still
# free wins (flax semantics). Only 'embed' is sharded: it is present in every ViT weight matrix,
# so FSDP splits every large param once, and nothing else needs splitting at ViT-B scale.
LOGICAL_AXIS_RULES: tuple[tuple[str, str | tuple[str, ...] | None], ...] = (
    ("batch", BATCH_AXES),
    ("embed", FSDP_AXIS),
    ("mlp", None),
    ("heads", None),
    ("qkv", None),
    ("kv", None),
    ("patch", None),
    ("length", None),
    ("classes", None),
)

LogicalRules = Sequence[tuple[str, str | tuple[str, ...] | None]]

# Environment variables that mean "this is one process of a multi-process job".
_DISTRIBUTED_ENV = ("JAX_COORDINATOR_ADDRESS",)
_PROCESS_COUNT_ENV = ("SLURM_NTASKS", "OMPI_COMM_WORLD_SIZE")


def _distributed_env_present() -> bool:
    """True when the environment describes a multi-process launch (explicit or cluster)."""
    if any(os.environ.get(k) for k in _DISTRIBUTED_ENV):
        return True
    for key in _PROCESS_COUNT_ENV:
        try:
            if int(os.environ.get(key, "1")) > 1:
                return True
        except ValueError:
            pass
    # Multi-worker Cloud TPU slices list every worker's hostname.
    return "," in os.environ.get("TPU_WORKER_HOSTNAMES", "")


def maybe_initialize_distributed(flag: bool = False) -> bool:
    """Calls `jax.distributed.initialize()` when asked by `flag` or by the environment.

    Must run before the first `jax.devices()` call. JAX auto-detects the coordinator, process
    count and id on Cloud TPU, SLURM and Open MPI, or reads `JAX_COORDINATOR_ADDRESS`,
    `JAX_NUM_PROCESSES`, `JAX_PROCESS_ID`. Returns True if JAX is (now) running distributed.
    """
    if jax.distributed.is_initialized():
        return True
    if not (flag or _distributed_env_present()):
        return False
    kwargs = {}
    if os.environ.get("JAX_NUM_PROCESSES"):
        kwargs["num_processes"] = int(os.environ["JAX_NUM_PROCESSES"])
    if os.environ.get("JAX_PROCESS_ID"):
        kwargs["process_id"] = int(os.environ["JAX_PROCESS_ID"])
    jax.distributed.initialize(**kwargs)
    logging.getLogger(__name__).info(
        "jax.distributed: process %d/%d, %d local / %d global devices",
        jax.process_index(),
        jax.process_count(),
        jax.local_device_count(),
        jax.device_count(),
    )
    return True


def make_mesh(data: int = -1, fsdp: int = 1, devices: Sequence[Any] | None = None) -> Mesh:
    """A ('data', 'fsdp') mesh over `devices` (default: all), with Auto axis types.

    One of `data`/`fsdp` may be -1, meaning "all remaining devices". The device order comes from
    `mesh_utils.create_device_mesh`, which keeps the fsdp axis on nearby chips on TPU.
    """
    devices = list(jax.devices() if devices is None else devices)
    n = len(devices)
    if data == -1 and fsdp == -1:
        raise ValueError("At most one of mesh data/fsdp may be -1.")
    if data == -1:
        data = n // fsdp if fsdp > 0 and n % fsdp == 0 else -1
    elif fsdp == -1:
        fsdp = n // data if data > 0 and n % data == 0 else -1
    if data < 1 or fsdp < 1 or data * fsdp != n:
        raise ValueError(f"Mesh (data={data}, fsdp={fsdp}) does not tile {n} devices.")
    if n == 1:
        device_grid = np.array(devices).reshape(1, 1)
    else:
        device_grid = mesh_utils.create_device_mesh(
            (data, fsdp), devices=devices, allow_split_physical_axes=True
        )
    return Mesh(device_grid, MESH_AXES, axis_types=(AxisType.Auto,) * len(MESH_AXES))


def replicated(mesh: Mesh) -> NamedSharding:
    """Sharding that puts a full copy on every device."""
    return NamedSharding(mesh, PartitionSpec())


def batch_sharding(mesh: Mesh) -> NamedSharding:
    """Leading (batch) dim split over ('data', 'fsdp'); other dims replicated."""
    return NamedSharding(mesh, PartitionSpec(BATCH_AXES))


def _axis_size(mesh: Mesh, axes: str | tuple[str, ...] | None) -> int:
    if axes is None:
        return 1
    names = (axes,) if isinstance(axes, str) else axes
    return int(np.prod([mesh.shape[a] for a in names]))


def fsdp_spec(shape: Sequence[int], fsdp_size: int, min_elements: int = 0) -> PartitionSpec:
    """Shape rule: shard the largest dim divisible by `fsdp_size` over 'fsdp', else replicate.

    Params with fewer than `min_elements` elements stay replicated (not worth a collective).
    Ties go to the earlier dim.
    """
    if fsdp_size <= 1 or int(np.prod(shape, dtype=np.int64)) < max(min_elements, 1):
        return PartitionSpec()
    best = None
    for i, d in enumerate(shape):
        if d % fsdp_size == 0 and (best is None or d > shape[best]):
            best = i
    if best is None:
        return PartitionSpec()
    spec: list[str | None] = [None] * len(shape)
    spec[best] = FSDP_AXIS
    return PartitionSpec(*spec)


def _logical_spec(
    names: Sequence[str | None], shape: Sequence[int], mesh: Mesh, rules: LogicalRules
) -> PartitionSpec:
    """Maps logical dim names through `rules`; drops an axis that does not divide its dim."""
    axes = list(nn.logical_to_mesh_axes(tuple(names), rules))
    for i, ax in enumerate(axes):
        if ax is not None and shape[i] % _axis_size(mesh, ax) != 0:
            logging.warning(
                "Dim %d (%s, size %d) not divisible by mesh axes %s; replicating it.",
                i,
                names[i],
                shape[i],
                ax,
            )
            axes[i] = None
    return PartitionSpec(*axes)


def tree_shardings(
    tree: Any,
    mesh: Mesh,
    rules: LogicalRules = LOGICAL_AXIS_RULES,
    min_elements: int = 0,
) -> Any:
    """NamedShardings for every leaf of `tree` (params, optimizer state, or a whole train state).

    Leaves may be arrays or `jax.ShapeDtypeStruct`s (from `jax.eval_shape`), optionally boxed in
    `nn.LogicallyPartitioned` (logical names, mapped by `rules`) or `nn.Partitioned` (mesh axis
    names used as-is). The result has the tree's structure with the boxes removed, i.e. the
    structure of `nn.meta.unbox(tree)`. Unboxed leaves get `fsdp_spec` (replicated if fsdp == 1).
    """
    fsdp_size = mesh.shape[FSDP_AXIS]

    def one(leaf: Any) -> NamedSharding:
        if isinstance(leaf, nn.LogicallyPartitioned):
            spec = _logical_spec(leaf.names, leaf.value.shape, mesh, leaf.rules or rules)
        elif isinstance(leaf, nn.Partitioned):
            spec = PartitionSpec(*leaf.names)
        else:
            spec = fsdp_spec(np.shape(leaf), fsdp_size, min_elements)
        return NamedSharding(mesh, spec)

    return jax.tree.map(one, tree, is_leaf=lambda x: isinstance(x, nn.Partitioned))


def host_batch_to_global(batch: Mapping[str, Any], mesh: Mesh) -> dict[str, Any]:
    """Assembles each process's slice of a batch into global arrays sharded by `batch_sharding`.

    `batch` maps names to numpy arrays whose leading dim is this process's share of the global
    batch (global batch / process count). Arrays with a string/object dtype (clip ids) cannot
    live on devices and are returned unchanged, as host numpy arrays.
    """
    sharding = batch_sharding(mesh)
    out: dict[str, Any] = {}
    for key, value in batch.items():
        value = np.asarray(value)
        if value.dtype.kind in "OSUV":
            out[key] = value
            continue
        if value.ndim == 0:
            raise ValueError(f"Batch entry {key!r} is a scalar; every entry needs a batch dim.")
        out[key] = jax.make_array_from_process_local_data(sharding, value)
    return out
