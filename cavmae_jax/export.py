"""Export any checkpoint's params: to a params directory, and to an official-layout state dict.

    python -m cavmae_jax.export --checkpoint=W --output=PARAMS_DIR
    python -m cavmae_jax.export --checkpoint=W/checkpoints/300 --output=P --torch=model.pth

The checkpoint is a run folder (its latest step), a step directory or a params directory. The
params directory holds the params and a metadata JSON with the run's config, so evaluation and
finetuning (`train.init_from`) read it without the training config. `--torch` also writes the
official PyTorch state dict (`.pth` needs the torch extra, `pip install -e '.[torch]'`; `.npz`
needs nothing): the names and layouts of the official CAV-MAE / Sync code, which
`python -m cavmae_jax.convert --torch FILE` reads back.
"""

from __future__ import annotations

import os
import pathlib
from typing import Any

import jax
from absl import app, flags

_CHECKPOINT = flags.DEFINE_string("checkpoint", None, "Run folder, step directory or params "
                                  "directory.")
_OUTPUT = flags.DEFINE_string("output", None, "Params directory to write (must not exist).")
_TORCH = flags.DEFINE_string("torch", None, "Also write the official state dict here "
                             "(.pth with torch installed, or .npz).")


def export(checkpoint: str | os.PathLike, output: str | os.PathLike | None = None,
           torch_path: str | os.PathLike | None = None) -> dict[str, Any]:
    """Writes the params of `checkpoint` to `output` and/or `torch_path`; returns the metadata."""
    from cavmae_jax import convert
    from cavmae_jax.train import checkpoint as ckpt_lib
    from cavmae_jax.train.run import load_checkpoint

    if output is None and torch_path is None:
        raise ValueError("nothing to write: give --output=DIR and/or --torch=FILE")
    if output is not None and pathlib.Path(output).exists():
        raise FileExistsError(f"{output} exists; choose a new --output folder")
    if torch_path is not None and pathlib.Path(torch_path).suffix not in (".pth", ".pt", ".npz"):
        raise ValueError(f"--torch={torch_path}: the file name must end in .pth, .pt or .npz")
    loaded = load_checkpoint(checkpoint)
    params = jax.device_get(loaded.params)
    metadata = {"source": loaded.path, "step": loaded.step, "kind": loaded.kind,
                **({"config": loaded.config.to_dict()} if loaded.config else {})}
    if output is not None:
        ckpt_lib.save_params(output, params, metadata)
    if torch_path is not None:
        convert.write_state_dict(convert.params_to_torch(params), torch_path)
    return metadata


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    from cavmae_jax import cli
    from cavmae_jax.train import console

    verbosity = flags.FLAGS.verbosity
    console.setup(verbosity)
    with cli.user_errors(verbosity):
        if not _CHECKPOINT.value:
            cli.fail("give --checkpoint=RUN_OR_STEP_OR_PARAMS_DIR")
        try:
            meta = export(_CHECKPOINT.value, _OUTPUT.value, _TORCH.value)
        except ModuleNotFoundError as e:
            cli.fail(f"writing {_TORCH.value} needs {e.name}: pip install -e '.[torch]', or "
                     "write .npz")
        what = " and ".join(x for x in (_OUTPUT.value, _TORCH.value) if x)
        console.say(f"exported {meta['kind']} {meta['source']} to {what}")


if __name__ == "__main__":
    from cavmae_jax import cli

    app.run(main, flags_parser=cli.parse_flags)
