"""`python -m cavmae_jax.evaluate --config=... --workdir=W --task=retrieval|classification`."""

import logging

from absl import app, flags
from ml_collections import config_flags

_CONFIG = config_flags.DEFINE_config_file("config", None, "Config file (configs/*.py[:arg]).",
                                          lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Training workdir (checkpoints); eval/ is "
                               "written here.")
_TASK = flags.DEFINE_enum("task", "retrieval", ["retrieval", "classification"], "What to run.")
_CHECKPOINT = flags.DEFINE_string("checkpoint", None, "Params directory to evaluate instead of "
                                  "the workdir's latest checkpoint (python -m cavmae_jax.convert).")
_STRATEGY = flags.DEFINE_enum("strategy", None, ["diagonal_mean", "diagonal_max", "mean", "max"],
                              "Aggregation over pairs (default: config.eval.strategy).")
_NUM_CLIPS = flags.DEFINE_integer("num_clips", None, "Score only the first N clips.")
_MULTIHOST = flags.DEFINE_bool("multihost", False, "Call jax.distributed.initialize() first.")
flags.mark_flags_as_required(["config", "workdir"])


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    from cavmae_jax import parallel

    parallel.maybe_initialize_distributed(_MULTIHOST.value)
    from cavmae_jax.evaluate import run
    from configs import common

    logging.getLogger().setLevel(logging.INFO)
    config = _CONFIG.value
    with config.unlocked():
        if _STRATEGY.value:
            config.eval.strategy = _STRATEGY.value
        if _NUM_CLIPS.value is not None:
            config.eval.num_clips = _NUM_CLIPS.value
    run.evaluate(config, common.validate(config), _WORKDIR.value, _TASK.value, _CHECKPOINT.value)


if __name__ == "__main__":
    app.run(main)
