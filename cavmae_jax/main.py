"""Train CAV-MAE / CAV-MAE Sync from a config; rerun with the same --workdir to resume.

    python -m cavmae_jax.main --config=configs/sync_pretrain.py --workdir=W \\
        --config.data.dir=DATA [--config.train.global_batch_size=96 ...]
    python -m cavmae_jax.main --config=configs/demo.py --workdir=W --config.data.dir=DATA

Every field of the config tree can be set with --config.section.field=value (see
cavmae_jax/config.py). Multi-host (TPU pod, SLURM, or any jax.distributed launch): add
--multihost (or set JAX_COORDINATOR_ADDRESS); every process runs the same command.
"""

import contextlib

from absl import app, flags
from ml_collections import config_flags

_CONFIG = config_flags.DEFINE_config_file("config", None, "Recipe file (configs/*.py[:arg]).",
                                          lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Checkpoints, logs and config go here.")
_MULTIHOST = flags.DEFINE_bool("multihost", False, "Call jax.distributed.initialize() first.")
flags.mark_flags_as_required(["config", "workdir"])


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    from cavmae_jax import cli, hostmem, parallel
    from cavmae_jax.train import console

    verbosity = flags.FLAGS.verbosity
    console.setup(verbosity)
    with cli.user_errors(verbosity):
        parallel.maybe_initialize_distributed(_MULTIHOST.value)  # before touching devices
        import jax

        from cavmae_jax import config
        from cavmae_jax.train import loop

        cfg = config.build(_CONFIG.value)
        config.require_data(cfg)
        if hint := hostmem.cpu_hint(jax.devices()[0].platform):
            console.say(hint)
        lock = cli.workdir_lock(_WORKDIR.value) if jax.process_index() == 0 else None
        with lock or contextlib.nullcontext():
            loop.train(cfg, _WORKDIR.value)


if __name__ == "__main__":
    from cavmae_jax import cli

    app.run(main, flags_parser=cli.parse_flags)
