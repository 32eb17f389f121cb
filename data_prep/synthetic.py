"""Write a folder of synthetic audio-visual mp4 clips plus their labels.

    python -m data_prep.synthetic --output DIR --num_clips N --seed S \
        [--num_classes C] [--duration 10] [--workers W]

Writes ``DIR/clip_00000.mp4`` ... (H.264 + AAC), ``DIR/labels.csv`` (columns ``id,labels``: the
file stem and the class name; several labels would be ``;``-separated), ``DIR/classes.json``
(the class table and generator settings), ``DIR/clips.jsonl`` (per clip: label, seed and the
ground-truth event times) and ``DIR/README.txt``. ``data_prep.convert`` turns the folder into
ArrayRecord. Clip ``i`` depends only on (seed, i, settings): it does not change with the number
of clips or workers, and the mp4 bytes are identical between runs (see ``write_clip_mp4``).
Stopping it (Ctrl-C, SIGTERM, even SIGKILL) ends its worker processes too, and an mp4 appears
under its final name only once it is complete.
"""

import concurrent.futures
import csv
import dataclasses
import json
import multiprocessing
import os
import pathlib
import sys
from collections.abc import Sequence
from typing import Any

import numpy as np
import tqdm

from cavmae_jax import cli
from cavmae_jax.data import synthetic
from data_prep.pool import exit_with_parent


def clip_label(seed: int, index: int, num_classes: int) -> int:
    """Class of clip ``index``: every block of ``num_classes`` clips is a seeded permutation.

    This keeps classes balanced for any prefix of the clip list and keeps clip i's class
    independent of how many clips are written.
    """
    block, pos = divmod(index, num_classes)
    perm = np.random.default_rng([seed, 1, block]).permutation(num_classes)
    return int(perm[pos])


def clip_id(index: int) -> str:
    """File stem of clip ``index``."""
    return f"clip_{index:05d}"


def _make_one(args: tuple[int, int, str, synthetic.ClipConfig]) -> dict[str, Any]:
    """Generate and write one clip; returns its metadata row (runs in a worker process)."""
    index, seed, output, config = args
    label = clip_label(seed, index, config.num_classes)
    clip_seed = [seed, 0, index]
    clip = synthetic.generate_clip(clip_seed, label, config)
    name = clip_id(index)
    path = os.path.join(output, f"{name}.mp4")
    tmp = path + ".tmp.mp4"
    synthetic.write_clip_mp4(tmp, clip.frames, clip.fps, clip.audio, clip.sample_rate)
    os.replace(tmp, path)  # never leave a half-written mp4 behind under the final name
    return {"id": name, "path": f"{name}.mp4", "label": label, "label_name": clip.class_name,
            "seed": clip_seed, "duration": config.duration, "events": clip.events}


def _readme(config: synthetic.ClipConfig, num_clips: int, seed: int) -> str:
    """Human-readable description of the folder."""
    lines = [
        "Synthetic audio-visual clips (cavmae_jax.data.synthetic).",
        "",
        f"{num_clips} clips, seed {seed}, {config.num_classes} classes, {config.duration} s each,",
        f"{config.width}x{config.height} at {config.fps} fps (H.264 yuv420p), "
        f"{config.channels}-channel AAC at {config.sample_rate} Hz.",
        "",
        "Each clip shows objects of one class (shape + hue) appearing at random times; each",
        "object's sound is a note of the class's timbre whose envelope is the object's opacity.",
        "Vertical position -> pitch (top = high), size -> loudness, lightness -> brightness,",
        "onset and wall bounces -> white flash + attack/click.",
        "",
        "labels.csv   id,labels (file stem, class name; ';' would separate several labels)",
        "classes.json class table and generator settings",
        "clips.jsonl  per clip: id, label, seed and ground-truth event times (seconds)",
        "",
        "Classes:",
    ]
    for c in synthetic.class_table(config.num_classes):
        lines.append(f"  {c.index:2d} {c.name:32s} shape={c.shape} timbre={c.timbre} "
                     f"hue={c.hue:g}")
    return "\n".join(lines) + "\n"


def write_dataset(output: str | os.PathLike, num_clips: int, seed: int,
                  config: synthetic.ClipConfig, workers: int = 1,
                  progress: bool = True) -> list[dict[str, Any]]:
    """Write ``num_clips`` clips and the label/metadata files into ``output``."""
    out = pathlib.Path(output)
    out.mkdir(parents=True, exist_ok=True)
    synthetic.class_table(config.num_classes)  # validates num_classes before any work
    tasks = [(i, seed, str(out), config) for i in range(num_clips)]
    bar = tqdm.tqdm(total=num_clips, desc="synthetic clips", unit="clip", disable=not progress)
    if workers <= 1:
        rows = []
        for task in tasks:
            rows.append(_make_one(task))
            bar.update()
    else:
        # spawn, not fork: a caller that has imported jax (multithreaded) could deadlock a fork
        ctx = multiprocessing.get_context("spawn")
        # The workers end with this process, however it ends (Ctrl-C, SIGTERM, SIGKILL).
        with concurrent.futures.ProcessPoolExecutor(
                max_workers=workers, mp_context=ctx, initializer=exit_with_parent,
                initargs=(os.getpid(),)) as pool:
            rows = []
            for row in pool.map(_make_one, tasks, chunksize=4):
                rows.append(row)
                bar.update()
    bar.close()

    with open(out / "labels.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["id", "labels"])
        for row in rows:
            writer.writerow([row["id"], row["label_name"]])
    with open(out / "clips.jsonl", "w") as f:
        for row in rows:
            f.write(json.dumps(row) + "\n")
    classes = [dataclasses.asdict(c) for c in synthetic.class_table(config.num_classes)]
    meta = {"seed": seed, "num_clips": num_clips, "config": dataclasses.asdict(config),
            "classes": classes}
    with open(out / "classes.json", "w") as f:
        json.dump(meta, f, indent=2)
    (out / "README.txt").write_text(_readme(config, num_clips, seed))
    return rows


def main(argv: Sequence[str] | None = None) -> None:
    """Parse flags and write the dataset."""
    p = cli.ArgumentParser(prog="python -m data_prep.synthetic",
                           description=__doc__.split("\n")[0])
    p.add_argument("--output", required=True, help="output folder")
    p.add_argument("--num_clips", type=int, required=True)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--num_classes", type=int, default=8,
                   help=f"1..{synthetic.MAX_CLASSES}")
    p.add_argument("--duration", type=float, default=10.0, help="seconds per clip")
    p.add_argument("--fps", type=int, default=16)
    p.add_argument("--size", type=int, nargs=2, default=(128, 128), metavar=("H", "W"))
    p.add_argument("--sample_rate", type=int, default=16000)
    p.add_argument("--channels", type=int, choices=(1, 2), default=1)
    p.add_argument("--gaps", choices=("on", "off"), default="on",
                   help="on: random gaps and silent stretches between events show an empty "
                        "screen; off: every moment has an object and its note")
    p.add_argument("--workers", type=int, default=1)
    p.add_argument("--no_progress", action="store_true")
    a = p.parse_args(argv)
    if a.num_clips < 1 or a.duration <= 0.5:
        p.error("need --num_clips >= 1 and --duration > 0.5")
    config = synthetic.ClipConfig(duration=a.duration, fps=a.fps, height=a.size[0],
                                  width=a.size[1], sample_rate=a.sample_rate,
                                  channels=a.channels, num_classes=a.num_classes,
                                  gaps=a.gaps == "on")
    try:
        write_dataset(a.output, a.num_clips, a.seed, config, a.workers, not a.no_progress)
    except ValueError as e:
        p.error(str(e))


if __name__ == "__main__":
    main(sys.argv[1:])
