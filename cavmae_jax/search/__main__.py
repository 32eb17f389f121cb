"""`python -m cavmae_jax.search index|query ...`: build a moment index, then search it.

    python -m cavmae_jax.search index --checkpoint=C --input=FOLDER --index=IDX
    python -m cavmae_jax.search query --index=IDX --audio=F [--start=S --end=E] [--top=10]
        [--json=OUT.json] [--html=OUT_DIR]
    python -m cavmae_jax.search query --index=IDX --image=F ...
    python -m cavmae_jax.search query --index=IDX --video=F --at=T ...

C is any checkpoint evaluation reads (a run folder, a step directory, a params directory). A
query uses the index's own checkpoint unless --checkpoint names another (which must match).
"""

from __future__ import annotations

import json
import os
import pathlib

from absl import app, flags

_CHECKPOINT = flags.DEFINE_string("checkpoint", None, "index: run folder, step directory or "
                                  "params directory. query: optional, must match the index "
                                  "(default: the index's checkpoint).")
_INPUT = flags.DEFINE_multi_string("input", None, "index: a folder (searched recursively) or a "
                                   "media file; repeat for several.")
_INDEX = flags.DEFINE_string("index", None, "The index folder.")
_AUDIO = flags.DEFINE_string("audio", None, "query: a sound (audio file, or a video's sound).")
_START = flags.DEFINE_float("start", None, "query --audio: excerpt start, seconds.")
_END = flags.DEFINE_float("end", None, "query --audio: excerpt end, seconds.")
_IMAGE = flags.DEFINE_string("image", None, "query: a picture.")
_VIDEO = flags.DEFINE_string("video", None, "query: a video; with --at, its moment.")
_AT = flags.DEFINE_float("at", None, "query --video: the moment, seconds.")
_TOP = flags.DEFINE_integer("top", 10, "query: hits per direction.", lower_bound=1)
_MERGE = flags.DEFINE_float("merge", None, "query: moments of one file this close (seconds) "
                            "merge into one hit (default: half a segment).")
_JSON = flags.DEFINE_string("json", None, "query: also write the results here (JSON).")
_HTML = flags.DEFINE_string("html", None, "query: write a report folder here (open "
                            "OUT/index.html in a browser).")
_PROGRESS = flags.DEFINE_bool("progress", True, "index: show a progress bar.")

COMMANDS = ("index", "query")


def _index(cli) -> None:
    from cavmae_jax.search import build_index

    if not _CHECKPOINT.value:
        cli.fail("give --checkpoint=RUN_OR_STEP_OR_PARAMS_DIR")
    if not _INPUT.value:
        cli.fail("give --input=FOLDER (or a media file)")
    if not _INDEX.value:
        cli.fail("give --index=IDX (the index folder to create or update)")
    s = build_index(_CHECKPOINT.value, _INPUT.value, _INDEX.value, progress=_PROGRESS.value)
    print(f"indexed {len(s.processed)} file(s), {s.skipped} unchanged, {len(s.removed)} "
          f"removed, {len(s.failed)} failed: {s.moments} moments from {s.files} files in "
          f"{_INDEX.value}")


def _write_json(path: str, payload: dict) -> None:
    p = pathlib.Path(path)
    tmp = p.with_name(f".{p.name}.tmp-{os.getpid()}")
    tmp.write_text(json.dumps(payload, indent=1) + "\n", encoding="utf-8")
    os.replace(tmp, p)


def _query(cli) -> None:
    from cavmae_jax.search import Embedder, Searcher, write_report
    from cavmae_jax.search import query as query_lib
    from cavmae_jax.search.searcher import seconds

    if not _INDEX.value:
        cli.fail("give --index=IDX")
    given = [n for n, f in (("--audio", _AUDIO), ("--image", _IMAGE), ("--video", _VIDEO))
             if f.value]
    if len(given) != 1:
        cli.fail("give exactly one of --audio=F, --image=F, --video=F --at=T"
                 + (f" (got {', '.join(given)})" if given else ""))
    if _VIDEO.value and _AT.value is None:
        cli.fail("--video needs --at=SECONDS (the moment to search with)")
    if (_START.value is not None or _END.value is not None) and not _AUDIO.value:
        cli.fail("--start/--end go with --audio")
    searcher = Searcher(_INDEX.value)
    spec = searcher.spec
    # The query file is read before the model is loaded: a bad file fails at once.
    if _AUDIO.value:
        query = query_lib.load_audio_query(spec, _AUDIO.value, _START.value, _END.value)
    elif _IMAGE.value:
        query = query_lib.load_image_query(spec, _IMAGE.value)
    else:
        query = query_lib.load_video_query(spec, _VIDEO.value, _AT.value)
    embedder = (Embedder.from_checkpoint(_CHECKPOINT.value) if _CHECKPOINT.value
                else searcher.embedder)
    searcher.check(embedder)
    query_lib.embed_query(embedder, query)
    for note in query.notes:
        print(f"note: {note}")
    results = searcher.search(query, _TOP.value, _MERGE.value)
    for r in results.values():
        print(f"{r.label} ({r.direction}):")
        for i, h in enumerate(r.hits):
            print(f"  {i + 1:3d}. {h.score:6.3f}  {seconds(h.time):>9}  {h.file}")
        if not r.hits:
            print("  (no moments)")
    if _JSON.value:
        _write_json(_JSON.value, {"index": str(searcher.index.path), "query": query.describe(),
                                  "results": {k: [h.to_dict() for h in r.hits]
                                              for k, r in results.items()}})
        print(f"wrote {_JSON.value}")
    if _HTML.value:
        page = write_report(_HTML.value, query, results, searcher.index)
        print(f"wrote {page}")


def main(argv):
    from cavmae_jax import cli
    from cavmae_jax.search.query import QueryError
    from cavmae_jax.train import console

    if len(argv) != 2 or argv[1] not in COMMANDS:
        extra = f" (got {' '.join(argv[1:])})" if len(argv) > 1 else ""
        cli.fail(f"give one command, {' or '.join(COMMANDS)}{extra}; see --help")
    verbosity = flags.FLAGS.verbosity
    console.setup(verbosity)
    with cli.user_errors(verbosity):
        try:
            (_index if argv[1] == "index" else _query)(cli)
        except QueryError as e:  # also a ValueError; named here for clarity
            if verbosity >= 1:
                raise
            cli.fail(str(e))


if __name__ == "__main__":
    from cavmae_jax import cli

    app.run(main, flags_parser=cli.parse_flags)
