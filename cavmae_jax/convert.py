"""Official PyTorch CAV-MAE / CAV-MAE Sync checkpoints <-> our Flax params, both ways.

Naming is mechanical: `blocks_a.3.attn.qkv.weight` <-> params['blocks_a_3']['attn']['qkv']
['kernel'] (transposed), LayerNorm `weight` <-> `scale`, `patch_embed_a.proj.weight`
[D, C, p, p] <-> params['patch_embed_a']['kernel'] [p, p, C, D]. Top-level tensors
(`modality_a`, `pos_embed_a`, `register_tokens`, ...) keep their names.

    model, params = load_torch_model(state_dict, arch="sync", audio_length=416,
                                     num_register_tokens=8, cls_token=True)
    state_dict = params_to_torch(params, model)

CLI:
    python -m cavmae_jax.convert --torch cav_mae_sync.pth --arch sync \\
        --kwargs '{"audio_length": 416, "num_register_tokens": 8, "cls_token": true}' --out DIR
    python -m cavmae_jax.convert --to_torch --params DIR --out state_dict.pth
"""

import argparse
import dataclasses
import json
import logging
import pathlib
import re
import sys
from collections.abc import Mapping
from typing import Any

import jax
import numpy as np

from cavmae_jax import cli
from cavmae_jax.cli import UserError, user_errors
from cavmae_jax.models import init_model_params
from cavmae_jax.models.cavmae import CAVMAE
from cavmae_jax.models.config import from_official_kwargs
from cavmae_jax.models.heads import CAVMAEClassifier

log = logging.getLogger(__name__)

POS_TABLES = ("pos_embed_a", "pos_embed_v", "decoder_pos_embed_a", "decoder_pos_embed_v")
_LIST_MODULES = ("blocks_a", "blocks_v", "blocks_u", "decoder_blocks", "mlp_head",
                 "constrative_head_audio", "constrative_head_visual")


class ConversionError(ValueError):
    """A checkpoint does not fit the model it is converted into."""


class TorchMissing(UserError, ImportError):
    """A .pth file is read or written, and PyTorch is not installed."""


@dataclasses.dataclass
class ConversionReport:
    missing: list[str]  # official names the model needs but the checkpoint lacks
    unexpected: list[str]  # checkpoint names the model has no place for
    pos_table_max_diff: dict[str, float]  # checkpoint table vs our sin-cos table

    def summary(self) -> str:
        lines = [f"missing keys ({len(self.missing)}): {', '.join(self.missing) or '-'}",
                 f"unexpected keys ({len(self.unexpected)}): {', '.join(self.unexpected) or '-'}"]
        for k, d in self.pos_table_max_diff.items():
            lines.append(f"{k}: checkpoint table used (max |ckpt - sin-cos| = {d:.2e})")
        return "\n".join(lines)


# ----------------------------------------------------------------------------- names
def official_to_path(name: str, ndim: int) -> tuple[tuple[str, ...], str]:
    """Official parameter name -> (our param path, layout) with layout in
    {'copy', 'linear', 'conv'}: how the array is transposed."""
    parts = name.split(".")
    merged: list[str] = []
    for part in parts:
        if part.isdigit() and merged and merged[-1] in _LIST_MODULES:
            merged[-1] = f"{merged[-1]}_{part}"
        else:
            merged.append(part)
    if len(merged) >= 2 and merged[0].startswith("patch_embed_") and merged[1] == "proj":
        merged.pop(1)
    leaf = merged[-1]
    if len(merged) == 1:  # a bare nn.Parameter
        return tuple(merged), "copy"
    if leaf == "bias":
        return tuple(merged), "copy"
    if leaf == "weight":
        if ndim == 1:
            return tuple(merged[:-1]) + ("scale",), "copy"
        if ndim == 2:
            return tuple(merged[:-1]) + ("kernel",), "linear"
        if ndim == 4:
            return tuple(merged[:-1]) + ("kernel",), "conv"
    raise ConversionError(f"cannot map official parameter {name!r} (ndim {ndim})")


def path_to_official(path: tuple[str, ...]) -> tuple[str, str]:
    """Our param path -> (official name, layout)."""
    parts: list[str] = []
    for part in path:
        m = re.fullmatch(r"(.+)_(\d+)", part)
        if m and m.group(1) in _LIST_MODULES:
            parts.extend([m.group(1), m.group(2)])
        else:
            parts.append(part)
    layout = "copy"
    if parts[0].startswith("patch_embed_") and len(parts) > 1:
        parts.insert(1, "proj")
    if parts[-1] == "scale":
        parts[-1] = "weight"
    elif parts[-1] == "kernel":
        parts[-1] = "weight"
        layout = "conv" if parts[0].startswith("patch_embed_") else "linear"
    return ".".join(parts), layout


def _to_ours(x: np.ndarray, layout: str) -> np.ndarray:
    if layout == "linear":
        return x.T
    if layout == "conv":
        return np.transpose(x, (2, 3, 1, 0))  # [D, C, kh, kw] -> [kh, kw, C, D]
    return x


def _to_official(x: np.ndarray, layout: str) -> np.ndarray:
    if layout == "linear":
        return x.T
    if layout == "conv":
        return np.transpose(x, (3, 2, 0, 1))
    return x


def _flatten(tree: Mapping, prefix: tuple[str, ...] = ()) -> dict[tuple[str, ...], Any]:
    out = {}
    for k, v in tree.items():
        if isinstance(v, Mapping):
            out.update(_flatten(v, prefix + (k,)))
        else:
            out[prefix + (k,)] = v
    return out


def _unflatten(flat: Mapping[tuple[str, ...], Any]) -> dict:
    tree: dict = {}
    for path, v in flat.items():
        node = tree
        for k in path[:-1]:
            node = node.setdefault(k, {})
        node[path[-1]] = v
    return tree


def _as_numpy(x: Any) -> np.ndarray:
    if hasattr(x, "detach"):  # a torch tensor
        x = x.detach().cpu().float().numpy() if x.is_floating_point() else x.cpu().numpy()
    return np.asarray(x)


def clean_state_dict(state_dict: Mapping[str, Any]) -> dict[str, np.ndarray]:
    """numpy arrays under official names: `module.` (DataParallel) stripped."""
    return {k.removeprefix("module."): _as_numpy(v) for k, v in state_dict.items()}


# ----------------------------------------------------------------------------- models
def build_model(arch: str, **official_kwargs: Any) -> CAVMAE:
    """Our module for the official constructor call `arch(**official_kwargs)`."""
    label_dim = official_kwargs.get("label_dim")
    config = from_official_kwargs(arch, **official_kwargs)
    if arch == "cavmae_ft":
        if label_dim is None:
            raise ConversionError("arch='cavmae_ft' needs label_dim")
        return CAVMAEClassifier(config, label_dim=int(label_dim))
    return CAVMAE(config)


def abstract_params(model: CAVMAE) -> dict:
    """Shapes/dtypes of `model`'s params, without computing them."""
    return jax.eval_shape(lambda r: init_model_params(model, r), jax.random.key(0))


def convert_state_dict(state_dict: Mapping[str, Any], model: CAVMAE,
                       fill: dict | None = None) -> tuple[dict, ConversionReport]:
    """Official state dict -> params for `model`.

    Raises ConversionError on any shape mismatch (both shapes named). Keys the model needs but
    the checkpoint lacks are taken from `fill` (e.g. fresh params) when given, else reported
    as missing and left out.
    """
    sd = clean_state_dict(state_dict)
    wanted = _flatten(abstract_params(model))
    fill_flat = _flatten(fill) if fill is not None else {}
    out: dict[tuple[str, ...], np.ndarray] = {}
    unexpected = []
    for name, value in sd.items():
        try:
            path, layout = official_to_path(name, value.ndim)
        except ConversionError:
            unexpected.append(name)
            continue
        if path not in wanted:
            unexpected.append(name)
            continue
        converted = _to_ours(value, layout)
        want = tuple(wanted[path].shape)
        if converted.shape != want:
            raise ConversionError(
                f"shape mismatch for {name!r}: checkpoint has {tuple(value.shape)}, the model "
                f"expects {tuple(_to_official(np.zeros(want), layout).shape)} (ours: {want}); "
                "check the constructor kwargs (audio_length, embed_dim, register count, ...)")
        out[path] = np.asarray(converted, np.float32)
    missing_paths = [p for p in wanted if p not in out]
    missing = [path_to_official(p)[0] for p in missing_paths]
    for p in missing_paths:
        if p in fill_flat:
            out[p] = np.asarray(fill_flat[p])
    pos_diff = {}
    reference = _flatten(fresh_params_tables(model))
    for name in POS_TABLES:
        if (name,) in out and (name,) in reference:
            pos_diff[name] = float(np.max(np.abs(out[(name,)] - reference[(name,)])))
    return _unflatten(out), ConversionReport(missing, sorted(unexpected), pos_diff)


def fresh_params_tables(model: CAVMAE) -> dict:
    """Our sin-cos tables for `model` (for the checkpoint comparison)."""
    from cavmae_jax.models import posemb

    c = model.config
    fa, ta = c.audio_grid
    fv, tv = c.video_grid
    tables = {"pos_embed_a": posemb.sincos_2d(c.embed_dim, fa, ta),
              "pos_embed_v": posemb.sincos_2d(c.embed_dim, fv, tv)}
    if model.with_decoder:
        tables["decoder_pos_embed_a"] = posemb.sincos_2d(c.decoder_embed_dim, fa, ta)
        tables["decoder_pos_embed_v"] = posemb.sincos_2d(c.decoder_embed_dim, fv, tv)
    return tables


def load_torch_model(state_dict: Mapping[str, Any], *, arch: str, strict: bool = True,
                     **official_kwargs: Any) -> tuple[CAVMAE, dict]:
    """(model, params) for an official state dict and the official constructor kwargs.

    arch: 'cavmae' | 'sync' | 'cavmae_ft' (CAVMAEFT; pass its `label_dim`).
    strict=True raises on missing or unexpected keys, naming each; strict=False (the official
    loaders' behaviour) logs them and keeps fresh initial values for the missing ones.
    A shape mismatch always raises.
    """
    model = build_model(arch, **official_kwargs)
    fill = None if strict else init_model_params(model, jax.random.key(0))
    params, report = convert_state_dict(state_dict, model, fill)
    if strict and (report.missing or report.unexpected):
        raise ConversionError("checkpoint does not match the model:\n" + report.summary())
    log.info("converted checkpoint:\n%s", report.summary())
    for name, diff in report.pos_table_max_diff.items():
        if diff > 1e-4:
            log.warning("%s differs from the sin-cos table by %.3g: using the checkpoint's",
                        name, diff)
    return model, params


def params_to_torch(params_or_grads: Mapping, model: CAVMAE | None = None) -> dict[str, np.ndarray]:
    """Our params (or gradients) -> official state dict names and layouts (numpy float32)."""
    del model  # the mapping is determined by the names alone
    out = {}
    for path, value in _flatten(params_or_grads).items():
        name, layout = path_to_official(path)
        out[name] = np.ascontiguousarray(_to_official(np.asarray(value, np.float32), layout))
    return out


# ----------------------------------------------------------------------------- files
def import_torch(purpose: str, instead: str) -> Any:
    """The torch module; TorchMissing (saying what to install, or what to do `instead`)
    without it."""
    try:
        import torch
    except ImportError:
        raise TorchMissing(f"{purpose} needs PyTorch, which is not installed: pip install "
                           f"'cavmae-jax[torch]', or {instead}") from None
    return torch


def _not_a_checkpoint(path: pathlib.Path, what: str) -> ConversionError:
    return ConversionError(f"{path} is not a checkpoint: {what}; give the official .pth state "
                           "dict (needs PyTorch) or an .npz of it (np.savez)")


def _read_npz(path: pathlib.Path) -> dict[str, np.ndarray]:
    try:
        z = np.load(path)
    except Exception:  # noqa: BLE001 - numpy's errors for a non-archive vary
        raise _not_a_checkpoint(path, "not a numpy .npz archive of arrays") from None
    if not isinstance(z, np.lib.npyio.NpzFile):
        raise _not_a_checkpoint(path, "one array, not an .npz archive of named arrays")
    with z:
        try:
            return {k.removeprefix("param/"): z[k] for k in z.files
                    if "/" not in k or k.startswith("param/")}
        except Exception:  # noqa: BLE001 - a damaged or pickled member
            raise _not_a_checkpoint(path, "a damaged .npz archive, or one of objects, not "
                                    "arrays") from None


def _read_pth(path: pathlib.Path) -> Any:
    torch = import_torch(f"reading {path}", "save its state dict as .npz (np.savez) and give "
                         "that")
    try:
        sd = torch.load(path, map_location="cpu", weights_only=True)
    except Exception:  # noqa: BLE001 - torch's errors for a non-checkpoint vary
        raise _not_a_checkpoint(path, "torch.load cannot read it as a state dict") from None
    for key in ("state_dict", "model"):
        if isinstance(sd, Mapping) and key in sd and isinstance(sd[key], Mapping):
            sd = sd[key]
    if not isinstance(sd, Mapping):
        raise _not_a_checkpoint(path, f"it holds a {type(sd).__name__}, not a state dict of "
                                "named tensors")
    return sd


def read_state_dict(path: str | pathlib.Path) -> dict[str, np.ndarray]:
    """A `.pth` (needs torch: `pip install cavmae-jax[torch]`) or `.npz` state dict.

    Nested `{'state_dict': ...}` / `{'model': ...}` wrappers, `module.` and the fixtures'
    `param/` prefixes are stripped. A file that is not a checkpoint raises ConversionError.
    """
    path = pathlib.Path(path)
    if not path.exists():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    sd = _read_npz(path) if path.suffix == ".npz" else _read_pth(path)
    return clean_state_dict(sd)


def write_state_dict(state_dict: Mapping[str, np.ndarray], path: str | pathlib.Path) -> None:
    """Write `.npz`, or `.pth` when torch is installed."""
    path = pathlib.Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix == ".npz":
        np.savez(path, **state_dict)
        return
    torch = import_torch(f"writing {path}", "write an .npz file instead")
    torch.save({k: torch.from_numpy(np.asarray(v)) for k, v in state_dict.items()}, path)


def main(argv: list[str] | None = None) -> int:
    p = cli.ArgumentParser(prog="python -m cavmae_jax.convert",
                           description=__doc__.split("\n\n")[0])
    p.add_argument("--torch", help="official checkpoint (.pth or .npz) to convert")
    p.add_argument("--arch", choices=("sync", "cavmae", "cavmae_ft"))
    p.add_argument("--kwargs", default="{}", help="official constructor kwargs as JSON")
    p.add_argument("--out", required=True, help="output: params directory, or .pth/.npz file")
    p.add_argument("--non_strict", "--non-strict", action="store_true",
                   help="keep fresh values for missing keys (official strict=False)")
    p.add_argument("--to_torch", "--to-torch", action="store_true",
                   help="convert our params back")
    p.add_argument("--params", help="with --to_torch: our params directory")
    p.add_argument("--verbosity", type=int, default=0,
                   help="1: show the full traceback of an error instead of one line")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    if args.to_torch and not args.params:
        p.error("--to_torch needs --params DIR")
    if not args.to_torch and (not args.torch or not args.arch):
        p.error("give --torch CKPT --arch ARCH (or --to_torch --params DIR)")
    with user_errors(args.verbosity):
        return _to_torch(args) if args.to_torch else _from_torch(args)


def _to_torch(args: argparse.Namespace) -> int:
    from cavmae_jax.train import checkpoint

    if pathlib.Path(args.out).suffix != ".npz":
        import_torch(f"writing {args.out}", "give --out FILE.npz")  # before the slow load
    params, _ = checkpoint.load_params(args.params)
    write_state_dict(params_to_torch(params), args.out)
    print(f"wrote {args.out}")
    return 0


def _from_torch(args: argparse.Namespace) -> int:
    from cavmae_jax.train import checkpoint

    try:
        kwargs = json.loads(args.kwargs)
    except json.JSONDecodeError as e:
        raise ValueError(f"--kwargs {args.kwargs!r} is not JSON ({e.msg}); e.g. "
                         '\'{"audio_length": 416}\'') from None
    model, params = load_torch_model(read_state_dict(args.torch), arch=args.arch,
                                     strict=not args.non_strict, **kwargs)
    metadata = {"arch": args.arch, "official_kwargs": kwargs,
                "model_config": dataclasses.asdict(model.config), "source": str(args.torch)}
    if isinstance(model, CAVMAEClassifier):
        metadata["label_dim"] = model.label_dim
    checkpoint.save_params(args.out, params, metadata)
    print(f"wrote params to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
