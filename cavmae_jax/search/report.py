"""The HTML report: a self-contained folder that opens in any browser (no server, no network).

    OUT/index.html    the query, then per direction each hit: the frame at the matched moment,
                      an audio player for the matched window, file name and time, and a strip
                      of similarity over the file's timeline with the hit marked (inline SVG)
    OUT/media/        query.jpg / query.wav and one JPEG + WAV per hit

The folder is written under a temp name and renamed when complete. Every file name shown is
HTML-escaped.
"""

from __future__ import annotations

import html
import os
import pathlib
import shutil
import uuid
from collections import defaultdict

import numpy as np

from cavmae_jax import audio, video
from cavmae_jax.search.query import Query
from cavmae_jax.search.searcher import Hit, Results, seconds
from cavmae_jax.search.store import Index

MARKER = ".cavmae-search-report"
STRIP_POINTS = 300


def _write_wav(path: pathlib.Path, wave: np.ndarray) -> None:
    import soundfile as sf

    sf.write(str(path), np.clip(wave, -1.0, 1.0), audio.SAMPLE_RATE, subtype="PCM_16")


def _hit_media(hits: list[tuple[str, Hit]], media: pathlib.Path, size: int) -> dict[str, str]:
    """Writes each hit's frame (JPEG) and window (WAV), one sequential pass per source file;
    returns {name: problem} for what could not be cut."""
    problems: dict[str, str] = {}
    by_file: dict[str, list[tuple[str, Hit]]] = defaultdict(list)
    for name, h in hits:
        by_file[h.path].append((name, h))
    for path, group in by_file.items():
        wanted = sorted({h.frame for _, h in group if h.frame >= 0})
        if wanted:
            try:
                with video.FrameStream(path) as stream:
                    got = stream.take(wanted)
                for name, h in group:
                    if h.frame in got:
                        img = video.resize_center_crop(got[h.frame], size)
                        (media / f"{name}.jpg").write_bytes(video.encode_jpeg(img, 90))
            except Exception as e:  # noqa: BLE001 - a source that changed since indexing
                problems[path] = f"frames: {e}"
        end = max(h.window[1] for _, h in group if h.window[1] > h.window[0]) if any(
            h.window[1] > h.window[0] for _, h in group) else 0.0
        if end <= 0.0:
            continue  # no hit of this file has sound (e.g. a video without a sound track)
        try:
            wave = audio.load_audio(path, max_samples=int(np.ceil(end * audio.SAMPLE_RATE)))
            for name, h in group:
                lo, hi = (int(round(t * audio.SAMPLE_RATE)) for t in h.window)
                if hi > lo:
                    _write_wav(media / f"{name}.wav", wave[lo:hi])
        except Exception as e:  # noqa: BLE001
            problems[path] = f"sound: {e}"
    return problems


def timeline_svg(times: np.ndarray, scores: np.ndarray, hit_time: float, lo: float, hi: float,
                 duration: float = 0.0, width: int = 600, height: int = 44) -> str:
    """Inline SVG: similarity over a file's timeline (max over bins), the hit as a red line.

    times, scores: [m] the file's moments; lo, hi: the score range mapped to the strip's height.
    """
    ok = np.isfinite(scores)
    times, scores = times[ok], scores[ok]
    if not len(times):
        return ""
    end = max(float(times.max()), hit_time, duration, 1e-6)
    bins = np.minimum((times / end * (STRIP_POINTS - 1)).astype(int), STRIP_POINTS - 1)
    best = np.full(STRIP_POINTS, -np.inf)
    np.maximum.at(best, bins, scores)
    xs = np.nonzero(np.isfinite(best))[0]
    span = max(hi - lo, 1e-6)
    pts = " ".join(f"{x / (STRIP_POINTS - 1) * width:.1f},"
                   f"{height - 4 - (best[x] - lo) / span * (height - 8):.1f}" for x in xs)
    hx = hit_time / end * width
    return (f'<svg class="strip" width="{width}" height="{height}" viewBox="0 0 {width} '
            f'{height}" xmlns="http://www.w3.org/2000/svg" role="img" aria-label="similarity '
            f'over the file">'
            f'<rect width="{width}" height="{height}" fill="#f3f4f6"/>'
            f'<polyline points="{pts}" fill="none" stroke="#2563eb" stroke-width="1.5"/>'
            f'<line x1="{hx:.1f}" x2="{hx:.1f}" y1="0" y2="{height}" stroke="#dc2626" '
            f'stroke-width="2"/>'
            f'<text x="4" y="12" font-size="10" fill="#6b7280">0:00</text>'
            f'<text x="{width - 4}" y="12" font-size="10" fill="#6b7280" text-anchor="end">'
            f'{seconds(end)}</text></svg>')


STYLE = """
body{font-family:system-ui,sans-serif;margin:24px;color:#111;max-width:1100px}
h1{font-size:22px}h2{font-size:18px;margin-top:28px;border-bottom:1px solid #ddd}
.hit{display:flex;gap:16px;align-items:center;padding:10px 0;border-bottom:1px solid #eee}
.hit img{width:160px;height:160px;object-fit:cover;background:#ddd}
.noimg{width:160px;height:160px;background:#e5e7eb;display:flex;align-items:center;
justify-content:center;color:#6b7280;font-size:13px}
.meta{flex:1}.name{font-weight:600;word-break:break-all}.score{color:#374151}
.query img{width:224px;height:224px}.note{color:#92400e}audio{width:300px}
"""


def _query_html(query: Query, media: pathlib.Path) -> str:
    parts = [f'<div class="query"><p>Query: {html.escape(query.kind)} '
             f'<span class="name">{html.escape(os.path.basename(query.source))}</span>']
    if query.kind == "video":
        parts.append(f" at {seconds(query.at)}")
    if query.wave is not None:
        parts.append(f" (sound {seconds(query.start_s)} to {seconds(query.end_s)})")
    parts.append("</p>")
    if query.picture is not None:
        (media / "query.jpg").write_bytes(video.encode_jpeg(query.picture, 90))
        parts.append('<img src="media/query.jpg" alt="query picture">')
    if query.wave is not None:
        _write_wav(media / "query.wav", query.wave)
        parts.append('<div><audio controls src="media/query.wav"></audio></div>')
    parts += [f'<p class="note">{html.escape(n)}</p>' for n in query.notes]
    return "".join(parts) + "</div>"


def write_report(out: str | os.PathLike, query: Query, results: dict[str, Results],
                 index: Index) -> pathlib.Path:
    """Writes the report folder `out` (replacing an earlier report there); returns index.html."""
    out = pathlib.Path(out)
    if out.exists() and not (out / MARKER).exists():
        raise FileExistsError(f"{out} exists and is not a search report; choose a new --html "
                              "folder")
    tmp = out.with_name(f".{out.name}.tmp-{uuid.uuid4().hex[:8]}")
    media = tmp / "media"
    try:
        media.mkdir(parents=True)
        size = int(index.identity["inputs"]["image_size"])
        named = [(f"{key}_{i:02d}", h) for key, r in results.items()
                 for i, h in enumerate(r.hits)]
        problems = _hit_media(named, media, size)
        body = [f"<h1>Search of {html.escape(str(index.path.name))} "
                f"({len(index)} moments in {len(index.files)} files)</h1>",
                _query_html(query, media)]
        for key, r in results.items():
            body.append(f"<h2>{html.escape(r.label.capitalize())} ({html.escape(r.direction)})"
                        "</h2>")
            if not r.hits:
                body.append("<p>No matching moments.</p>")
            finite = r.scores[np.isfinite(r.scores)]
            lo, hi = (float(finite.min()), float(finite.max())) if finite.size else (0.0, 1.0)
            for i, h in enumerate(r.hits):
                name = f"{key}_{i:02d}"
                f = index.files[h.file_id]
                sl = slice(f["first"], f["first"] + f["count"])
                img = (f'<img src="media/{name}.jpg" alt="frame at {seconds(h.time)}">'
                       if (media / f"{name}.jpg").exists()
                       else '<div class="noimg">sound only</div>')
                player = (f'<div><audio controls src="media/{name}.wav"></audio></div>'
                          if (media / f"{name}.wav").exists() else "")
                problem = problems.get(h.path)
                duration = float(f.get("duration_s", 0.0))
                sound = (f"sound {seconds(h.window[0])} to {seconds(h.window[1])}"
                         if h.window[1] > h.window[0] else "no sound in this moment's window "
                         "(past the end of the file's sound)")
                body.append(
                    f'<div class="hit">{img}<div class="meta">'
                    f'<div>#{i + 1} <span class="name">{html.escape(h.file)}</span> at '
                    f'<b>{seconds(h.time)}</b> <span class="score">score {h.score:.3f}</span>'
                    f'</div><div>{sound}</div>{player}<div>'
                    f'{timeline_svg(r.times[sl], r.scores[sl], h.time, lo, hi, duration)}</div>'
                    + (f'<div class="note">{html.escape(problem)}</div>' if problem else "")
                    + "</div></div>")
        page = ("<!DOCTYPE html><html><head><meta charset=\"utf-8\"><title>Search results"
                f"</title><style>{STYLE}</style></head><body>{''.join(body)}</body></html>\n")
        (tmp / "index.html").write_text(page, encoding="utf-8")
        (tmp / MARKER).write_text("written by python -m cavmae_jax.search\n")
        if out.exists():
            shutil.rmtree(out)
        os.replace(tmp, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out / "index.html"
