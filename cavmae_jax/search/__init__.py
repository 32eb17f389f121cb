"""Find it by sound or by picture: moment search over your own footage.

    python -m cavmae_jax.search index --checkpoint C --input FOLDER --index IDX
    python -m cavmae_jax.search query --index IDX --audio F [--start S --end E] --html OUT

See docs/search.md. The Python API: `build_index`, `Index`, `Searcher`, `audio_query`,
`image_query`, `video_query`, `write_report`.
"""

from cavmae_jax.search.embed import Embedder, IndexMismatch
from cavmae_jax.search.index import IndexSummary, build_index
from cavmae_jax.search.query import (
    Query,
    QueryError,
    audio_query,
    embed_query,
    image_query,
    load_audio_query,
    load_image_query,
    load_video_query,
    video_query,
)
from cavmae_jax.search.report import write_report
from cavmae_jax.search.searcher import Hit, Results, Searcher
from cavmae_jax.search.segments import InputSpec, iter_segments
from cavmae_jax.search.store import Index, NotAnIndex

__all__ = ["Embedder", "Hit", "Index", "IndexMismatch", "IndexSummary", "InputSpec",
           "NotAnIndex", "Query", "QueryError", "Results", "Searcher", "audio_query",
           "build_index", "embed_query", "image_query", "load_audio_query",
           "load_image_query", "load_video_query", "iter_segments", "video_query", "write_report"]
