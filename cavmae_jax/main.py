"""Train CAV-MAE / CAV-MAE Sync from a config; rerun with the same --workdir to resume.

    python -m cavmae_jax.main --config=configs/sync_pretrain.py --workdir=W \\
        --config.data.dir=DATA [--config.train.global_batch_size=96 ...]
    python -m cavmae_jax.main --config=configs/demo.py --workdir=W --config.data.dir=DATA

Multi-host (TPU pod, SLURM, or any jax.distributed launch): add --multihost (or set
JAX_COORDINATOR_ADDRESS); every process runs the same command.
"""

import logging

from absl import app, flags
from ml_collections import config_flags

_CONFIG = config_flags.DEFINE_config_file("config", None, "Config file (configs/*.py[:arg]).",
                                          lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Checkpoints, logs and config go here.")
_MULTIHOST = flags.DEFINE_bool("multihost", False, "Call jax.distributed.initialize() first.")
flags.mark_flags_as_required(["config", "workdir"])


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    from cavmae_jax import hostmem, parallel

    parallel.maybe_initialize_distributed(_MULTIHOST.value)  # before anything touches devices
    import jax

    from cavmae_jax.train import loop
    from configs import common

    logging.getLogger().setLevel(logging.INFO)
    model_cfg = common.validate(_CONFIG.value)
    logging.info("JAX %s: %d process(es), %d device(s) [%s]", jax.__version__,
                 jax.process_count(), jax.device_count(), jax.devices()[0].platform)
    if hint := hostmem.cpu_hint(jax.devices()[0].platform):
        logging.info(hint)
    loop.train(_CONFIG.value, model_cfg, _WORKDIR.value)


if __name__ == "__main__":
    app.run(main)
