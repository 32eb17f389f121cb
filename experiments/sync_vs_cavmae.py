"""The paper in miniature: CAV-MAE against CAV-MAE Sync and its ablations, on the same clips.

    python experiments/sync_vs_cavmae.py --out experiments/results          # the full run
    python experiments/sync_vs_cavmae.py --out /tmp/x --recipe configs/demo.py:test --steps 2 \
        --seeds 0 --num_clips 12 --duration 3 --variants sync,sync_moments   # a smoke run

Every variant trains from the same recipe (`--recipe`, default the demo's tiny model) on the
same synthetic clips for the same number of steps and batch size (the same clips seen), with
2 seeds by default, and is evaluated on the same held-out clips by `cavmae_jax.evaluate
--task=retrieval`: clip retrieval, in-class retrieval, moment localization and offsets.

- `cavmae`: CAV-MAE, the whole 10 s fbank with one frame, no global or register tokens;
  evaluated by its own protocol (middle frame, whole audio), so it has no moment metrics;
- `sync`: Sync as released (a window per frame, global + register tokens), one moment per clip
  per batch as the official loader draws it, at the recipe's window length;
- `sync_no_global`: Sync without global tokens (contrast on mean-pooled patch tokens);
- `sync_no_registers`: Sync without register tokens;
- `sync_moments`: Sync with 4 moments per clip in every batch (in-clip negatives);
- `sync_moments_unmasked`: the same with the contrastive loss on an unmasked second pass
  (`model.contrastive_unmasked`), the demo's recipe.

All but the last take the contrastive loss from the masked pass, as the official code does.

Writes, under --out: `data/` (the clips, converted once), `runs/<variant>_s<seed>/` (each run;
a finished one is not redone), `results.json` (every run's numbers), `results.md` (mean and
spread over seeds beside chance) and `results.png`. Runs one after another through the CLIs,
as a user would.
"""

from __future__ import annotations

import importlib.util
import json
import os
import pathlib
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from cavmae_jax import cli

ROOT = pathlib.Path(__file__).resolve().parents[1]
# Each variant sets what it is about explicitly, so the recipe's own choices do not leak in (the
# demo recipe trains with 4 moments per clip and the contrast on an unmasked pass).
ONE_MOMENT = "--config.data.moments_per_clip=1"
OFFICIAL_CONTRAST = "--config.model.contrastive_unmasked=False"
VARIANTS: dict[str, dict[str, list[str]]] = {
    "cavmae": {"train": ["--config.model.arch=cavmae", "--config.model.audio_length=1024",
                         "--config.model.global_tokens=False",
                         "--config.model.num_register_tokens=0", ONE_MOMENT, OFFICIAL_CONTRAST],
               "eval": ["--config.eval.middle_frame_only=True"]},
    "sync": {"train": [ONE_MOMENT, OFFICIAL_CONTRAST], "eval": []},
    "sync_no_global": {"train": ["--config.model.global_tokens=False", ONE_MOMENT,
                                 OFFICIAL_CONTRAST], "eval": []},
    "sync_no_registers": {"train": ["--config.model.num_register_tokens=0", ONE_MOMENT,
                                    OFFICIAL_CONTRAST], "eval": []},
    "sync_moments": {"train": ["--config.data.moments_per_clip=4", OFFICIAL_CONTRAST],
                     "eval": []},
    "sync_moments_unmasked": {"train": ["--config.data.moments_per_clip=4",
                                        "--config.model.contrastive_unmasked=True"], "eval": []},
}
# (column, path in retrieval.json, path of its chance); None: no chance level.
COLUMNS = (
    ("A->V R@1", ("a2v", "r1"), ("chance", "r1")),
    ("V->A R@1", ("v2a", "r1"), ("chance", "r1")),
    ("in-class A->V R@1", ("moments", "in_class", "a2v", "r1"),
     ("moments", "in_class", "chance", "r1")),
    ("in-class V->A R@1", ("moments", "in_class", "v2a", "r1"),
     ("moments", "in_class", "chance", "r1")),
    ("frame->window +/-1", ("moments", "localization", "frame_to_window", "within1"),
     ("moments", "localization", "chance", "within1")),
    ("window->frame +/-1", ("moments", "localization", "window_to_frame", "within1"),
     ("moments", "localization", "chance", "within1")),
    ("frame->window |dt| s", ("moments", "localization", "frame_to_window", "mean_abs_dt"),
     ("moments", "localization", "chance", "mean_abs_dt")),
    ("offset exact", ("moments", "offset", "exact"), ("moments", "offset", "chance", "exact")),
)


def _run(cmd: Sequence[str], log: pathlib.Path) -> float:
    """Runs a CLI from the repository root, its output to `log`; seconds taken. Raises on
    failure with the log's tail."""
    t0 = time.perf_counter()
    with open(log, "w") as f:
        proc = subprocess.run([sys.executable, *cmd], cwd=ROOT, stdout=f, stderr=subprocess.STDOUT,
                              env=dict(os.environ, PYTHONPATH=str(ROOT)))
    if proc.returncode:
        tail = "".join(log.read_text().splitlines(keepends=True)[-15:])
        raise RuntimeError(f"{' '.join(cmd[:3])} failed (exit {proc.returncode}); {log}:\n{tail}")
    return time.perf_counter() - t0


def recipe_image_size(recipe: str) -> int:
    """The frame size the recipe trains at (`model.img_size`): the records are stored at it, so
    that no run resizes frames on the fly. `recipe` is `path.py` or `path.py:arg`."""
    path, _, arg = recipe.partition(":")
    spec = importlib.util.spec_from_file_location("_recipe", ROOT / path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return int(module.get_config(arg).model.img_size)


def make_data(out: pathlib.Path, num_clips: int, duration: float, seed: int,
              image_size: int) -> pathlib.Path:
    """Synthetic clips -> ArrayRecord (frames `image_size` square) with a 1/6 held-out test
    split (once)."""
    data = out / "data" / "records"
    if (data / "metadata.json").exists():
        return data
    clips = out / "data" / "clips"
    clips.mkdir(parents=True, exist_ok=True)
    _run(["-m", "data_prep.synthetic", "--output", str(clips), "--num_clips", str(num_clips),
          "--seed", str(seed), "--duration", str(duration), "--workers", "2", "--no_progress"],
         out / "data" / "synthetic.log")
    _run(["-m", "data_prep.convert", "--input", str(clips), "--labels",
          str(clips / "labels.csv"), "--holdout", "0.1667", "--holdout_split", "test",
          "--output", str(data), "--workers", "2", "--image_size", str(image_size),
          "--no_progress"], out / "data" / "convert.log")
    return data


def train_and_evaluate(out: pathlib.Path, data: pathlib.Path, recipe: str, variant: str,
                       seed: int, steps: int) -> dict[str, Any]:
    """One run (skipped when its report exists): its retrieval.json plus the seconds taken."""
    workdir = out / "runs" / f"{variant}_s{seed}"
    report_path = workdir / "eval" / "retrieval.json"
    if report_path.exists():
        return json.loads(report_path.read_text())
    workdir.mkdir(parents=True, exist_ok=True)
    spec = VARIANTS[variant]
    train_s = _run(["-m", "cavmae_jax.main", f"--config={recipe}", f"--workdir={workdir}",
                    f"--config.data.dir={data}", f"--config.train.seed={seed}",
                    f"--config.train.num_steps={steps}", *spec["train"]],
                   workdir / "train.log")
    _run(["-m", "cavmae_jax.evaluate", f"--checkpoint={workdir}", "--task=retrieval",
          f"--config={recipe}", *spec["eval"]], workdir / "eval.log")
    report = json.loads(report_path.read_text())
    report["train_seconds"] = train_s
    report_path.write_text(json.dumps(report, indent=1))
    return report


def _get(report: Mapping[str, Any], path: Sequence[str]) -> float | None:
    x: Any = report
    for key in path:
        if not isinstance(x, Mapping) or key not in x:
            return None
        x = x[key]
    return float(x) if isinstance(x, int | float) else None


def summarize(results: Mapping[str, Sequence[Mapping[str, Any]]]) -> dict[str, Any]:
    """Per variant and column: mean, sample std and the values over seeds, and chance."""
    out: dict[str, Any] = {}
    for variant, reports in results.items():
        row: dict[str, Any] = {"seeds": len(reports),
                               "train_seconds": float(np.mean([r.get("train_seconds", np.nan)
                                                               for r in reports]))}
        for name, path, chance_path in COLUMNS:
            values = [v for r in reports if (v := _get(r, path)) is not None]
            chance = [c for r in reports if (c := _get(r, chance_path)) is not None]
            row[name] = ({"mean": float(np.mean(values)),
                          "std": float(np.std(values, ddof=1)) if len(values) > 1 else 0.0,
                          "values": values, "chance": float(np.mean(chance)) if chance else None}
                         if values else None)
        out[variant] = row
    return out


def markdown(summary: Mapping[str, Any]) -> str:
    """The table: mean +/- std over seeds per column, chance in the last row."""
    names = [c[0] for c in COLUMNS]
    header = [n.replace("|", "\\|") for n in names]  # |dt| must not split a cell
    lines = ["| variant | " + " | ".join(header) + " | train s |",
             "|---" * (len(names) + 2) + "|"]
    chance: dict[str, float | None] = {}
    for variant, row in summary.items():
        cells = []
        for name in names:
            cell = row[name]
            if cell is None:
                cells.append("n/a")
                continue
            chance.setdefault(name, cell["chance"])
            cells.append(f"{cell['mean']:.1f} ± {cell['std']:.1f}" if "|dt|" not in name
                         else f"{cell['mean']:.2f} ± {cell['std']:.2f}")
        lines.append(f"| {variant} (n={row['seeds']}) | " + " | ".join(cells)
                     + f" | {row['train_seconds']:.0f} |")
    lines.append("| chance | " + " | ".join(
        "" if chance.get(n) is None else (f"{chance[n]:.2f}" if "|dt|" in n else
                                          f"{chance[n]:.1f}") for n in names) + " | |")
    return "\n".join(lines) + "\n"


def plot(summary: Mapping[str, Any], path: pathlib.Path) -> None:
    """One panel per column: a bar per variant (mean, seeds as dots), chance as a line."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [c[0] for c in COLUMNS]
    variants = list(summary)
    fig, axes = plt.subplots(2, (len(names) + 1) // 2, figsize=(4 * ((len(names) + 1) // 2), 7))
    for ax, name in zip(axes.ravel(), names, strict=False):
        chance = None
        for i, variant in enumerate(variants):
            cell = summary[variant][name]
            if cell is None:
                continue
            chance = cell["chance"] if cell["chance"] is not None else chance
            ax.bar(i, cell["mean"], color=f"C{i}")
            ax.plot([i] * len(cell["values"]), cell["values"], "k.", ms=4)
        if chance is not None:
            ax.axhline(chance, color="grey", ls="--", lw=1, label="chance")
            ax.legend(fontsize=7)
        ax.set_xticks(range(len(variants)), variants, rotation=40, ha="right", fontsize=7)
        ax.set_title(name, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: Sequence[str] | None = None) -> int:
    ap = cli.ArgumentParser(prog="python experiments/sync_vs_cavmae.py",
                            description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", required=True, help="output folder (reruns skip finished runs)")
    ap.add_argument("--recipe", default="configs/demo.py", help="the config every variant edits")
    ap.add_argument("--steps", type=int, default=1000, help="train steps of every run")
    ap.add_argument("--seeds", default="0,1", help="comma-separated training seeds")
    ap.add_argument("--variants", default=",".join(VARIANTS), help="comma-separated variants")
    ap.add_argument("--num_clips", type=int, default=192, help="synthetic clips (1/6 held out)")
    ap.add_argument("--duration", type=float, default=10.0, help="seconds per synthetic clip")
    ap.add_argument("--data_seed", type=int, default=0, help="seed of the synthetic clips")
    a = ap.parse_args(argv)
    variants = a.variants.split(",")
    unknown = [v for v in variants if v not in VARIANTS]
    if unknown:
        ap.error(f"unknown variant(s) {unknown}; known: {list(VARIANTS)}")
    seeds = [int(s) for s in a.seeds.split(",")]
    out = pathlib.Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    data = make_data(out, a.num_clips, a.duration, a.data_seed, recipe_image_size(a.recipe))
    results: dict[str, list[dict[str, Any]]] = {}
    for variant in variants:
        for seed in seeds:
            t0 = time.perf_counter()
            results.setdefault(variant, []).append(
                train_and_evaluate(out, data, a.recipe, variant, seed, a.steps))
            print(f"{variant} seed {seed}: done in {time.perf_counter() - t0:.0f} s", flush=True)
    summary = summarize(results)
    (out / "results.json").write_text(json.dumps(
        {"recipe": a.recipe, "steps": a.steps, "seeds": seeds, "num_clips": a.num_clips,
         "summary": summary, "runs": results}, indent=1))
    table = markdown(summary)
    (out / "results.md").write_text(table)
    plot(summary, out / "results.png")
    print(table, end="")
    print(f"wrote {out / 'results.json'}, results.md, results.png")
    return 0


if __name__ == "__main__":
    sys.exit(main())
