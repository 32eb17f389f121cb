"""`python -m cavmae_jax.evaluate --checkpoint=C --data_dir=D --task=retrieval|classification`.

C is a training run folder (its latest step), one of its `checkpoints/<step>` directories, or a
params directory (`python -m cavmae_jax.export`, or a converted official model). The model is
built from the config saved in C. `--config=configs/X.py` is optional: its data and eval
sections (and `--config.section.field=value` overrides) are used, and its whole config for
checkpoints saved without one.
"""

from absl import app, flags
from ml_collections import config_flags

from cavmae_jax.config import STRATEGIES

_CONFIG = config_flags.DEFINE_config_file("config", None, "Optional recipe (data and eval "
                                          "settings; the model comes from the checkpoint).",
                                          lock_config=True)
_CHECKPOINT = flags.DEFINE_string("checkpoint", None, "Run folder, step directory or params "
                                  "directory to evaluate.")
_WORKDIR = flags.DEFINE_string("workdir", None, "Same as --checkpoint=W (the run's latest step).")
_DATA_DIR = flags.DEFINE_string("data_dir", None, "Data folder (default: the checkpoint's).")
_SPLIT = flags.DEFINE_string("split", None, "Split to evaluate (default: config.data.eval_split).")
_OUTPUT = flags.DEFINE_string("output", None, "Report folder (default: W/eval, W/eval/step_N "
                              "for an older step, or PARAMS/eval).")
_TASK = flags.DEFINE_enum("task", "retrieval", ["retrieval", "classification"], "What to run.")
_STRATEGY = flags.DEFINE_enum("strategy", None, list(STRATEGIES),
                              "Aggregation over pairs (default: config.eval.strategy).")
_NUM_CLIPS = flags.DEFINE_integer("num_clips", None, "Score only the first N clips.")
_MULTIHOST = flags.DEFINE_bool("multihost", False, "Call jax.distributed.initialize() first.")


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    from cavmae_jax import cli, parallel
    from cavmae_jax.train import console

    verbosity = flags.FLAGS.verbosity
    console.setup(verbosity)
    with cli.user_errors(verbosity):
        checkpoint = _CHECKPOINT.value or _WORKDIR.value
        if not checkpoint:
            cli.fail("give --checkpoint=RUN_OR_STEP_OR_PARAMS_DIR (or --workdir=W)")
        parallel.maybe_initialize_distributed(_MULTIHOST.value)
        from cavmae_jax import config
        from cavmae_jax.evaluate import run

        overrides = config.build(_CONFIG.value) if _CONFIG.value is not None else None
        run.evaluate(checkpoint, _TASK.value, overrides, data_dir=_DATA_DIR.value,
                     split=_SPLIT.value, output=_OUTPUT.value, strategy=_STRATEGY.value,
                     num_clips=_NUM_CLIPS.value)


if __name__ == "__main__":
    from cavmae_jax import cli

    app.run(main, flags_parser=cli.parse_flags)
