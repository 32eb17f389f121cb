"""Train steps built in-process from the loop's pieces, for tests/test_train.py.

    python tests/_train_helpers.py DATA_DIR OUT.json NUM_STEPS   (XLA_FLAGS: 8 host devices)

Builds each variant as `loop.train` does (`Run.build`, `run.init_state`, `run.train_step`, the
logging branch on every step), feeds it the first batches of the real
Grain pipeline and writes each step's metrics: the demo:test recipe (with NUM_STEPS, so the LR
schedule equals the subprocess runs') on 1 device, the same with local negatives, and local
negatives on 8 devices. The test compares them with the 8-device `main` run. It runs as a
subprocess so that it has its own XLA flags and overlaps with the other runs.
"""

import json
import pathlib
import sys
from collections.abc import Sequence
from typing import Any

import jax
import numpy as np

from cavmae_jax import config as config_lib
from cavmae_jax.data import pipeline
from cavmae_jax.train.run import Run
from configs import demo


def make_config(data_dir: str, num_steps: int, **sections: dict[str, Any]):
    """The demo:test recipe as `main` runs it with --config.train.num_steps=num_steps."""
    c = demo.get_config("test")
    c.data.dir = data_dir
    c.train.num_steps = num_steps
    for section, values in sections.items():
        c[section].update(values)
    return c


def train_steps(config, batches: Sequence[dict[str, np.ndarray]],
                devices: Sequence[jax.Device] | None = None) -> dict[str, Any]:
    """Metrics of len(batches) steps from a fresh state, plus what the run was built as."""
    run = Run.build(config_lib.build(config), devices=devices)
    state = run.init_state()
    metrics = []
    for host in batches:
        state, m = run.train_step(state, run.global_batch(host), np.bool_(True))
        metrics.append({k: float(v) for k, v in jax.device_get(m).items()})
    shardings = jax.tree.leaves(run.state_shardings.params)
    return {"metrics": metrics, "mesh": dict(run.mesh.shape),
            "negative_groups": run.model.config.negative_groups,
            "sharded_params": sum(not s.is_fully_replicated for s in shardings),
            "num_params": len(shardings)}


def main(data_dir: str, out: str, num_steps: str) -> None:
    assert jax.device_count() == 8, jax.devices()
    config = make_config(data_dir, int(num_steps))
    it = pipeline.make_train_iterator(
        data_dir, "train", global_batch_size=config.train.global_batch_size, seed=0,
        process_index=0, process_count=1,
        config=config_lib.build(config).data)
    batches = [next(it) for _ in range(3)]
    one = jax.devices()[:1]
    local = make_config(data_dir, int(num_steps), model=dict(negative_groups=0))
    results = {
        "single": train_steps(config, batches, devices=one),
        "local_single": train_steps(local, batches, devices=one),
        "local8": train_steps(local, batches[:1]),
    }
    pathlib.Path(out).write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    from absl import flags

    flags.FLAGS.mark_as_parsed()  # Grain reads absl flags
    main(*sys.argv[1:])
