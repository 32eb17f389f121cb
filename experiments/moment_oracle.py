"""What the synthetic clips allow at moment localization: two matchers that read the ground truth.

    python experiments/moment_oracle.py --clips demo_out/videos [--window_length 96] \
        [--embeddings demo_out/run/eval/embeddings.npz]

The synthetic generator writes every clip's events (onset, offset, ...) to `clips.jsonl`. This
script scores, for every clip, frame k against audio window j with two hand-made matchers
instead of a model, and reports the same localization numbers as `evaluate --task=retrieval`
(`cavmae_jax.evaluate.moments.localization`, ties split evenly):

- `presence`: knows only *whether* something is on screen at frame k and *how much* sound
  window j holds (seconds of notes in it). A visible object picks the fullest window, an empty
  screen the emptiest. This is what a model gets from "something is happening now".
- `identity`: knows *which* events are on screen at frame k and scores window j by how long
  those same events sound in it (an empty screen: the emptiest window). This is what a model gets
  when it matches an object to its own note (height <-> pitch, size <-> loudness, lightness <->
  brightness).

A trained model whose localization sits at the `presence` line has learned when things happen,
not which thing is which.

With `--embeddings` (the `embeddings.npz` that `evaluate --task=retrieval` writes for clips of
the same folder) it also splits a model's localization, and the `identity` matcher's, by how
many objects are on screen at the pair's frame (0, 1, 2 or more). Frames of an empty screen
show the same background and hear the same hum: no matcher can tell them apart, so they bound
what any model reaches on these clips.
"""

from __future__ import annotations

import json
import pathlib
import sys
from collections.abc import Sequence

import numpy as np

from cavmae_jax import audio, cli
from cavmae_jax.evaluate import moments

FBANK_SHIFT_S = 0.01  # one fbank frame


def _overlap(events: Sequence[dict], lo: float, hi: float) -> np.ndarray:
    """Seconds of each event inside [lo, hi)."""
    return np.array([max(0.0, min(hi, e["offset"]) - max(lo, e["onset"])) for e in events])


def oracle_scores(events: Sequence[dict], frame_times: np.ndarray, windows: np.ndarray
                  ) -> dict[str, np.ndarray]:
    """{"presence", "identity"}: [K, K] scores of frame k (rows) against window j (columns).

    events: the clip's events (`onset`, `offset` in seconds); frame_times [K] seconds; windows
    [K, 2] fbank frames [start, end) (`cavmae_jax.audio.window_table`).
    """
    k = len(frame_times)
    sound = np.stack([_overlap(events, s * FBANK_SHIFT_S, e * FBANK_SHIFT_S)
                      for s, e in windows])  # [K windows, E]
    visible = np.array([[e["onset"] <= t < e["offset"] for e in events]
                        for t in frame_times], bool).reshape(k, len(events))  # [K frames, E]
    total = sound.sum(-1)  # [K windows]
    empty = ~visible.any(-1)  # [K frames]
    presence = np.where(empty[:, None], -total[None, :], total[None, :])
    identity = np.where(empty[:, None], -total[None, :], visible.astype(float) @ sound.T)
    return {"presence": presence, "identity": identity}


def evaluate(clips: Sequence[dict], num_frames: int = 16, window_length: int = 96
             ) -> dict[str, dict]:
    """Both matchers over all clips, both directions, with chance: {name: metrics}."""
    windows = audio.window_table(num_frames, window_length)
    scores: dict[str, list[np.ndarray]] = {"presence": [], "identity": []}
    times = []
    for clip in clips:
        t = np.arange(num_frames) * clip["duration"] / num_frames
        times.append(t)
        for name, s in oracle_scores(clip["events"], t, windows).items():
            scores[name].append(s)
    t = np.stack(times)
    out = {}
    for name, s in scores.items():
        s = np.stack(s)  # [C, K frames, K windows]
        out[name] = {"frame_to_window": moments.localization(s, t)[0],
                     "window_to_frame": moments.localization(np.swapaxes(s, 1, 2), t)[0]}
    out["chance"] = moments.localization_chance(t)
    return out


def _count_on_screen(events: Sequence[dict], times: np.ndarray) -> np.ndarray:
    """[K] number of events visible at each time."""
    return np.array([sum(e["onset"] <= t < e["offset"] for e in events) for t in times])


def by_objects_on_screen(clips: Sequence[dict], emb: dict, window_length: int = 96
                         ) -> dict[str, dict]:
    """Localization of a model and of the `identity` matcher, split by objects on screen.

    Args:
      clips: `clips.jsonl` rows (`id`, `events`) covering every clip id of `emb`.
      emb: `cavmae_jax.evaluate.moments.load_embeddings` output (`audio`, `video` [N, K, D],
        `clip_ids` [N], `times` [N, K] seconds).

    Returns:
      {category: {"share": percent of pairs, matcher: {direction: {"within1", "mean_abs_dt"}}}}
      for categories "0", "1", "2+" and "all" (a category no pair falls in is left out),
      matchers "model" and "identity".
    """
    by_id = {c["id"]: c for c in clips}
    missing = [str(i) for i in emb["clip_ids"] if str(i) not in by_id]
    if missing:
        raise ValueError(f"{len(missing)} clip id(s) of the embeddings are not in clips.jsonl "
                         f"(first: {missing[0]}); pass the folder these clips were made from")
    times = np.asarray(emb["times"], np.float64)  # [N, K]
    k = times.shape[1]
    windows = audio.window_table(k, window_length)
    events = [by_id[str(i)]["events"] for i in emb["clip_ids"]]
    # [N, K] objects on screen at each pair's frame
    count = np.stack([_count_on_screen(ev, t) for ev, t in zip(events, times, strict=True)])
    sims = {"model": moments.pair_similarity(emb["audio"], emb["video"]),
            "identity": np.stack([oracle_scores(ev, t, windows)["identity"]
                                  for ev, t in zip(events, times, strict=True)])}
    offset = np.abs(np.arange(k)[None, :] - np.arange(k)[:, None])
    per_query = {}  # matcher -> direction -> (within1 [N, K], abs_dt [N, K])
    for name, s in sims.items():
        per_query[name] = {}
        for direction, m in (("frame_to_window", s), ("window_to_frame", np.swapaxes(s, 1, 2))):
            _, d = moments.localization(m, times)
            w = d["weights"]
            per_query[name][direction] = (100.0 * np.sum(w * (offset <= 1), -1),
                                          np.sum(w * d["abs_dt"], -1))
    masks = {"0": count == 0, "1": count == 1, "2+": count >= 2, "all": np.ones_like(count, bool)}
    out = {}
    for cat, mask in masks.items():
        if not mask.any():  # e.g. no empty screens in clips made with `--gaps off`
            continue
        row: dict = {"share": float(100.0 * mask.mean())}
        for name, dirs in per_query.items():
            row[name] = {direction: {"within1": float(w1[mask].mean()),
                                     "mean_abs_dt": float(dt[mask].mean())}
                         for direction, (w1, dt) in dirs.items()}
        out[cat] = row
    return out


def format_by_objects(result: dict[str, dict]) -> str:
    lines = ["localization by objects on screen at the pair's frame (+/-1 %, |dt| s; "
             "f->w = frame->window, w->f = window->frame)",
             f"{'objects':<8} {'pairs %':>7}  {'model f->w':>13}  {'model w->f':>13}  "
             f"{'identity f->w':>13}"]
    for cat, row in result.items():
        cells = [row[m][d] for m, d in (("model", "frame_to_window"), ("model", "window_to_frame"),
                                        ("identity", "frame_to_window"))]
        lines.append(f"{cat:<8} {row['share']:7.1f}  " + "  ".join(
            f"{c['within1']:6.1f} {c['mean_abs_dt']:6.2f}" for c in cells))
    return "\n".join(lines)


def format_table(result: dict[str, dict], num_clips: int, window_length: int) -> str:
    lines = [f"moment localization from the ground truth of {num_clips} clips "
             f"({window_length / 100:.2f} s windows)",
             f"{'matcher':<10} {'direction':<16} {'R@1':>6} {'+/-1':>6} {'|dt| s':>7}"]
    for name in ("presence", "identity"):
        for direction in ("frame_to_window", "window_to_frame"):
            m = result[name][direction]
            lines.append(f"{name:<10} {direction:<16} {m['r1']:6.1f} {m['within1']:6.1f} "
                         f"{m['mean_abs_dt']:7.2f}")
    c = result["chance"]
    lines.append(f"{'chance':<10} {'':<16} {c['r1']:6.1f} {c['within1']:6.1f} "
                 f"{c['mean_abs_dt']:7.2f}")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    p = cli.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--clips", required=True,
                   help="a folder written by `python -m data_prep.synthetic` (has clips.jsonl)")
    p.add_argument("--window_length", type=int, default=96, help="audio window, fbank frames")
    p.add_argument("--num_frames", type=int, default=16, help="pairs per clip")
    p.add_argument("--embeddings",
                   help="a model's embeddings.npz for clips of this folder: also split its "
                        "localization by objects on screen")
    p.add_argument("--json", help="also write the numbers to this file")
    args = p.parse_args(argv)
    index = pathlib.Path(args.clips) / "clips.jsonl"
    if not index.is_file():
        p.error(f"{index} not found: --clips must be a folder written by data_prep.synthetic")
    clips = [json.loads(line) for line in index.read_text().splitlines() if line.strip()]
    result = evaluate(clips, args.num_frames, args.window_length)
    print(format_table(result, len(clips), args.window_length))
    if args.embeddings:
        emb = moments.load_embeddings(args.embeddings)
        if emb["times"].shape[1] != args.num_frames:
            p.error(f"{args.embeddings} has {emb['times'].shape[1]} pairs per clip; "
                    f"pass --num_frames {emb['times'].shape[1]}")
        try:
            result["by_objects_on_screen"] = by_objects_on_screen(clips, emb, args.window_length)
        except ValueError as e:
            p.error(str(e))
        print(format_by_objects(result["by_objects_on_screen"]))
    if args.json:
        pathlib.Path(args.json).write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
