"""The picture of the moment metrics (`moments.png`): a few clips' frame x window similarity
with the true pairs marked, and the |dt| histogram of both directions against chance.

Takes the details and the report of `moments.moment_report`; matplotlib is imported only when
a picture is drawn.
"""

from __future__ import annotations

import os
import pathlib
from collections.abc import Mapping
from typing import Any

import numpy as np

from cavmae_jax.evaluate import retrieval


def plot_moments(details: Mapping[str, np.ndarray], report: Mapping[str, Any] | None,
                 path: str | os.PathLike, num_clips: int = 4) -> pathlib.Path | None:
    """Writes a PNG: frame x window similarity of a few clips, and |dt| against chance.

    Args:
      details: the details of `moment_report` (needs `pair_sim`; None is written for K = 1).
      report: the `moment_report` result (titles), or None.
      path: output file.
      num_clips: clips shown, evenly spaced over the pool.

    Returns:
      The path written, or None when there is nothing to draw (one pair per clip).
    """
    if "pair_sim" not in details:
        return None
    from matplotlib.figure import Figure

    ps = np.asarray(details["pair_sim"])  # [C, K, K]
    c, k, _ = ps.shape
    shown = np.unique(np.linspace(0, c - 1, min(num_clips, c)).round().astype(int))
    fig = Figure(figsize=(4 * max(len(shown), 2), 8))
    grid = fig.add_gridspec(2, max(len(shown), 2))
    for col, clip in enumerate(shown):
        ax = fig.add_subplot(grid[0, col])
        im = ax.imshow(ps[clip], cmap="viridis", interpolation="nearest")
        ax.plot(np.arange(k), np.arange(k), "r.", ms=3, label="true pair")
        pred = np.argmax(ps[clip], axis=1)
        ax.plot(pred, np.arange(k), "wx", ms=4, label="frame's top window")
        fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04)
        ax.set_xlabel("audio window")
        ax.set_ylabel("video frame")
        ax.set_title(f"clip {clip}")
        if col == 0:
            ax.legend(loc="lower left", fontsize=7, facecolor="0.6")  # grey: the white x shows
    ax = fig.add_subplot(grid[1, :])
    abs_dt = np.asarray(details["abs_dt"])  # [C, K, K]
    unit = report.get("time_unit", "s") if report else "s"
    bins = np.histogram_bin_edges(abs_dt, bins=min(4 * k, 64))
    chance = np.histogram(abs_dt, bins=bins, weights=np.full(abs_dt.shape, 1.0 / (c * k * k)))[0]
    ax.bar(bins[:-1], 100.0 * chance, width=np.diff(bins), align="edge", color="0.8",
           label="chance")
    for key, label in (("f2w_weights", "frame→window"), ("w2f_weights", "window→frame")):
        w = np.asarray(details[key]) / (c * k)
        hist = np.histogram(abs_dt, bins=bins, weights=w)[0]
        ax.stairs(100.0 * hist, bins, label=label, lw=1.5)
    ax.set_xlabel(f"|dt| between the predicted and the true pair ({unit})")
    ax.set_ylabel("queries (%)")
    title = "|dt| of the top candidate"
    if report and "localization" in report and "chance" in report["localization"]:
        loc = report["localization"]
        title += (f": mean frame→window {loc['frame_to_window']['mean_abs_dt']:.2f}, "
                  f"window→frame {loc['window_to_frame']['mean_abs_dt']:.2f}, chance "
                  f"{loc['chance']['mean_abs_dt']:.2f} {unit}")
    ax.set_title(title)
    ax.grid(True, alpha=0.3)
    ax.legend(loc="upper right", fontsize=8)
    return retrieval.save_figure(fig, path)
