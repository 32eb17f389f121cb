"""What a model's per-pair embeddings encode of the synthetic events: a linear probe.

    python experiments/moment_probe.py --clips demo_out/videos \
        --train demo_out/run/eval_train/embeddings.npz \
        --test demo_out/run/eval/embeddings.npz [--window_length 64]

(`evaluate --task=retrieval --split=train --output=W/eval_train` writes the training clips'
embeddings.) Moment localization needs the object <-> note rule of the generator: the object's
height sets the pitch, its size the loudness, its lightness the brightness of the timbre. This
script asks how much of each attribute a model's embeddings carry:

- frames that show exactly one object: the frame embedding against that object's height and
  horizontal position at the frame's time, its size and its lightness;
- windows that hold exactly one event, for more than half of the window: the window embedding
  against the same attributes of that event (height is what sets its pitch; the horizontal
  position is not in a mono sound, so its R^2 should stay near 0: a control).

A ridge regression (L2-normalized embeddings plus the clip's class as one-hot inputs, since each
class has its own pitch register) is fitted on the `--train` embeddings and scored by R^2 on the
`--test` ones. R^2 near 1: the embedding carries the attribute linearly; near 0 or below: not.
"""

from __future__ import annotations

import json
import pathlib
import sys
from collections.abc import Sequence

import numpy as np

from cavmae_jax import audio, cli
from cavmae_jax.data import synthetic
from cavmae_jax.evaluate import moments

ATTRIBUTES = ("height", "size", "lightness", "x")
FBANK_SHIFT_S = 0.01  # one fbank frame


def _attributes(event: dict, t: float) -> list[float]:
    """(height, size, lightness, x) of `event` at time t; height 0 = top (the highest pitch)."""
    state = synthetic._event_state(dict(event, decay_tau=None), np.array([t]))
    return [float(state["y"][0]), event["size"], event["lightness"], float(state["x"][0])]


def probe_rows(clips: Sequence[dict], emb: dict, window_length: int
               ) -> dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """{"frame", "window"}: (embeddings [n, D] normalized, attributes [n, 4], class [n])."""
    by_id = {c["id"]: c for c in clips}
    missing = [str(i) for i in emb["clip_ids"] if str(i) not in by_id]
    if missing:
        raise ValueError(f"{len(missing)} clip id(s) of the embeddings are not in clips.jsonl "
                         f"(first: {missing[0]}); pass the folder these clips were made from")
    k = emb["times"].shape[1]
    windows = audio.window_table(k, window_length)
    rows: dict[str, tuple[list, list, list]] = {"frame": ([], [], []), "window": ([], [], [])}
    for c, clip_id in enumerate(emb["clip_ids"]):
        clip = by_id[str(clip_id)]
        events, t = clip["events"], emb["times"][c]
        for j in range(k):
            shown = [e for e in events if e["onset"] <= t[j] < e["offset"]]
            if len(shown) == 1:
                for dest, value in zip(rows["frame"], (emb["video"][c, j],
                                                       _attributes(shown[0], t[j]),
                                                       clip["label"]), strict=True):
                    dest.append(value)
            lo, hi = windows[j] * FBANK_SHIFT_S
            sound = [max(0.0, min(hi, e["offset"]) - max(lo, e["onset"])) for e in events]
            heard = [i for i, s in enumerate(sound) if s > 0]
            if len(heard) == 1 and sound[heard[0]] > 0.5 * (hi - lo):
                for dest, value in zip(rows["window"], (emb["audio"][c, j],
                                                        _attributes(events[heard[0]], t[j]),
                                                        clip["label"]), strict=True):
                    dest.append(value)
    out = {}
    for name, (x, y, label) in rows.items():
        x = np.asarray(x, np.float64).reshape(len(x), -1)
        x /= np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-12)
        out[name] = (x, np.asarray(y, np.float64).reshape(len(y), 4), np.asarray(label, int))
    return out


def probe_r2(train: tuple[np.ndarray, ...], test: tuple[np.ndarray, ...],
             num_classes: int, ridge: float = 0.1) -> np.ndarray:
    """R^2 [4] on `test` of a ridge regression fitted on `train` ((x, attributes, class))."""
    def inputs(x, label):
        return np.concatenate([x, np.eye(num_classes)[label]], axis=1)

    a, b = inputs(train[0], train[2]), inputs(test[0], test[2])
    w = np.linalg.solve(a.T @ a + ridge * np.eye(a.shape[1]), a.T @ train[1])
    y = test[1]
    return 1.0 - ((b @ w - y) ** 2).sum(0) / ((y - y.mean(0)) ** 2).sum(0)


def main(argv: Sequence[str] | None = None) -> int:
    p = cli.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--clips", required=True,
                   help="a folder written by `python -m data_prep.synthetic` (has clips.jsonl)")
    p.add_argument("--train", required=True, help="embeddings.npz of the training clips")
    p.add_argument("--test", required=True, help="embeddings.npz of the held-out clips")
    p.add_argument("--window_length", type=int, default=64, help="audio window, fbank frames")
    p.add_argument("--json", help="also write the numbers to this file")
    args = p.parse_args(argv)
    index = pathlib.Path(args.clips) / "clips.jsonl"
    if not index.is_file():
        p.error(f"{index} not found: --clips must be a folder written by data_prep.synthetic")
    clips = [json.loads(line) for line in index.read_text().splitlines() if line.strip()]
    num_classes = max(c["label"] for c in clips) + 1
    try:
        train = probe_rows(clips, moments.load_embeddings(args.train), args.window_length)
        test = probe_rows(clips, moments.load_embeddings(args.test), args.window_length)
    except ValueError as e:
        p.error(str(e))
    result = {}
    print(f"linear probe, R^2 on the held-out rows   {'  '.join(f'{a:>9}' for a in ATTRIBUTES)}")
    for name in ("frame", "window"):
        r2 = probe_r2(train[name], test[name], num_classes)
        result[name] = {"r2": dict(zip(ATTRIBUTES, map(float, r2), strict=True)),
                        "train_rows": len(train[name][0]), "test_rows": len(test[name][0])}
        print(f"{name + ' embedding':<18} ({len(train[name][0]):5d} / {len(test[name][0]):4d} rows)"
              f"  {'  '.join(f'{v:9.2f}' for v in r2)}")
    if args.json:
        pathlib.Path(args.json).write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
