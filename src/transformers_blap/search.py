"""
Text search over a music library with a stage-1 model (the engine of `blap index` and `blap search`).

Every window of every track (the model's window, 10 s for BLAP, cut by the rule of `window_bounds`) is embedded once
by [`BlapForRepresentationLearning.get_audio_embeddings`]: one unit vector per query token. All of them go into a
faiss inner-product index, beside the track and the window's start and end. A text query is embedded by
`get_text_embeddings`; the score of a window is its best query token's cosine, as
[`BlapForRepresentationLearning.similarity`] defines it, and the score of a track is its best window's.

```python
from transformers_blap.search import AudioSearchIndex

index = AudioSearchIndex.build(model, processor, ["music/"])  # or AudioSearchIndex.load("library-index")
index.save("library-index")
for hit in index.search("calm solo piano", k=10):
    print(hit.score, hit.path, hit.start, hit.end)
```

An index folder holds `index.faiss` (faiss' own format), `windows.safetensors` (track number, start and end of each
window) and `index.json` (tracks, failed inputs, the model and the window settings). Up to `EXACT_SEARCH_MAX_ROWS`
vectors the search is exact (`IndexFlatIP`); above, a graph index (`IndexHNSWFlat`, `HNSW_NEIGHBORS` links per vector,
searched with `HNSW_EF_SEARCH` candidates; faiss saves both with the index) is built: `scripts/benchmark_search.py`
measures its recall and speed against exact search.

This module needs the `search` extra (`pip install "transformers_blap[search]"`: faiss-cpu) and is not imported by
`import transformers_blap`.
"""

import json
import os
import sys
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.numpy import load_file, save_file
from tqdm.auto import tqdm

try:
    import faiss
except ImportError as error:  # one readable line instead of a bare ModuleNotFoundError deep in a command
    raise ImportError(
        "transformers_blap.search needs faiss: pip install 'transformers_blap[search]' (or faiss-cpu)."
    ) from error

from .audio import DEFAULT_MIN_TAIL_S, DEFAULT_WINDOW_S, iter_windows
from .journal import error_text
from .modeling_blap import BlapForRepresentationLearning
from .processing_blap import BlapStage1Processor

EXACT_SEARCH_MAX_ROWS = 200_000
"""Indexes of at most this many vectors (windows x query tokens) are searched exactly."""
HNSW_NEIGHBORS = 32
"""Graph links per vector in an approximate index (`IndexHNSWFlat`'s `M`)."""
HNSW_EF_CONSTRUCTION = 80
"""Candidates kept while linking a vector into the graph: more is a slower build and a better graph."""
HNSW_EF_SEARCH = 128
"""Candidates kept per query in an approximate index: more is slower and closer to exact search."""
INDEX_FORMAT_VERSION = 1


def build_faiss_index(
    vectors: np.ndarray,
    approximate: bool | None = None,
    *,
    neighbors: int = HNSW_NEIGHBORS,
    ef_construction: int = HNSW_EF_CONSTRUCTION,
    ef_search: int = HNSW_EF_SEARCH,
) -> "faiss.Index":
    """
    A faiss inner-product index over unit vectors.

    Args:
        vectors (`np.ndarray` of shape `(num_rows, embed_dim)`): unit-norm float32 vectors.
        approximate (`bool`, *optional*): graph index `IndexHNSWFlat` (`True`) or exact `IndexFlatIP` (`False`); by
            default exact up to `EXACT_SEARCH_MAX_ROWS` rows.
        neighbors, ef_construction, ef_search (`int`, *optional*): the graph's settings (default: `HNSW_NEIGHBORS`,
            `HNSW_EF_CONSTRUCTION`, `HNSW_EF_SEARCH`).

    Returns:
        `faiss.Index` holding `vectors` (row `i` has id `i`); an approximate one carries its `efSearch`, which
        `faiss.write_index` / `faiss.read_index` keep.
    """
    vectors = np.ascontiguousarray(vectors, dtype=np.float32)
    if vectors.ndim != 2 or vectors.shape[0] == 0:
        raise ValueError(f"`vectors` must be a non-empty (num_rows, embed_dim) array, got shape {vectors.shape}.")
    num_rows, dim = vectors.shape
    if approximate is None:
        approximate = num_rows > EXACT_SEARCH_MAX_ROWS
    if not approximate:
        index = faiss.IndexFlatIP(dim)
    else:
        # HNSW rather than inverted lists: at 1M clustered vectors of width 256, IVF (2000 lists) reached recall@10
        # 0.88 at 79x exact speed, this graph (M 32, efConstruction 80, efSearch 128) 1.00 at 89x
        # (benchmarks/search-cpu.json). efConstruction 40 built faster but reached only 0.91 at 87x.
        index = faiss.IndexHNSWFlat(dim, neighbors, faiss.METRIC_INNER_PRODUCT)
        index.hnsw.efConstruction = ef_construction
        index.hnsw.efSearch = ef_search
    index.add(vectors)
    return index


def index_metadata(model: str | None, processor: BlapStage1Processor, hop_s: float | None) -> dict[str, Any]:
    """
    What an index records about how it was built: `model` (a folder resolved to an absolute path, so that a search
    from elsewhere finds it; a Hub id as given), `window_s` (the processor's window) and `hop_s`.
    """
    return {
        "model": str(Path(model).resolve()) if model and Path(model).is_dir() else model,
        "window_s": float(processor.feature_extractor.max_length_s),
        "hop_s": hop_s,
    }


@dataclass(frozen=True)
class SearchHit:
    """
    One track found by a search.

    Attributes:
        path (`str`): the track.
        start (`float`): start of its best-matching window, in seconds.
        end (`float`): end of that window, in seconds.
        score (`float`): the window's cosine similarity with the query (its best query token's), in [-1, 1].
    """

    path: str
    start: float
    end: float
    score: float


@dataclass
class TrackEmbeddings:
    """The windows of one track and their audio embeddings, or why there are none."""

    path: str
    starts: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.float32))
    ends: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.float32))
    embeddings: np.ndarray | None = None  # (num_windows, num_query_tokens, embed_dim)
    error: str | None = None


def embed_tracks(
    model: BlapForRepresentationLearning,
    processor: BlapStage1Processor,
    paths: Iterable[str],
    *,
    hop_s: float | None = None,
    batch_size: int = 16,
) -> Iterator[TrackEmbeddings]:
    """
    Embed every window of every track, batching windows of consecutive tracks together.

    Args:
        model ([`BlapForRepresentationLearning`]): the stage-1 model (in eval mode, on its device).
        processor ([`BlapStage1Processor`]): its processor; its feature extractor's window (`max_length_s`) is the
            window length.
        paths (`Iterable[str]`): audio files (or anything `iter_windows` reads).
        hop_s (`float`, *optional*): distance between window starts; defaults to the window length.
        batch_size (`int`, *optional*, defaults to 16): windows per model call.

    Yields:
        [`TrackEmbeddings`], one per input in input order; an input that cannot be decoded or embedded carries its
        `error` and no windows.
    """
    if batch_size < 1:
        raise ValueError(f"`batch_size` must be at least 1, got {batch_size}.")
    extractor = processor.feature_extractor
    window_s = float(extractor.max_length_s)
    min_tail_s = DEFAULT_MIN_TAIL_S * window_s / DEFAULT_WINDOW_S
    device = model.device
    pending: list[tuple[TrackEmbeddings, list[np.ndarray]]] = []

    def flush() -> Iterator[TrackEmbeddings]:
        samples = [window for _, windows in pending for window in windows]
        embeddings, error = np.zeros((0,)), None
        try:
            chunks = []
            for begin in range(0, len(samples), batch_size):
                features = processor(audio=samples[begin : begin + batch_size], sampling_rate=extractor.sampling_rate)
                with torch.no_grad():
                    chunks.append(model.get_audio_embeddings(features["input_features"].to(device)).float().cpu())
            if chunks:
                embeddings = torch.cat(chunks).numpy()
        except Exception as exc:  # a batch job records the failure and goes on
            error = error_text(exc)
        offset = 0
        for track, windows in pending:
            if track.error is None and error is not None:
                track.error, track.starts, track.ends = error, track.starts[:0], track.ends[:0]
            elif track.error is None:
                track.embeddings = embeddings[offset : offset + len(windows)]
            offset += len(windows)
            yield track
        pending.clear()

    for path in paths:
        track = TrackEmbeddings(path)
        windows = []
        try:
            windows = list(
                iter_windows(path, extractor.sampling_rate, window_s=window_s, hop_s=hop_s, min_tail_s=min_tail_s)
            )
        except Exception as exc:  # a batch job records the failure and goes on
            track.error = error_text(exc)
        track.starts = np.array([window.start_s for window in windows], dtype=np.float32)
        track.ends = np.array([window.end_s for window in windows], dtype=np.float32)
        pending.append((track, [window.samples for window in windows]))
        if sum(len(windows) for _, windows in pending) >= batch_size:
            yield from flush()
    yield from flush()


class AudioSearchIndex:
    """
    Text-to-music search over the windows of a set of tracks (see the module docstring).

    Args:
        index (`faiss.Index`): inner-product index over the windows' query-token embeddings, row `w * Q + q` for
            window `w`, query token `q`.
        tracks (`list[str]`): the indexed tracks.
        window_tracks (`np.ndarray` of shape `(num_windows,)`): each window's position in `tracks`.
        window_starts, window_ends (`np.ndarray` of shape `(num_windows,)`): each window's start and end in seconds.
        num_query_tokens (`int`): vectors per window (Q).
        metadata (`dict`, *optional*): what built it: `model`, `window_s`, `hop_s`, `failures` (`{path: error}`).
    """

    def __init__(
        self,
        index: "faiss.Index",
        tracks: Sequence[str],
        window_tracks: np.ndarray,
        window_starts: np.ndarray,
        window_ends: np.ndarray,
        num_query_tokens: int,
        metadata: dict[str, Any] | None = None,
    ):
        window_tracks = np.asarray(window_tracks, dtype=np.int64)
        if index.ntotal != len(window_tracks) * num_query_tokens:
            raise ValueError(
                f"The faiss index holds {index.ntotal} vectors, expected {len(window_tracks)} windows x"
                f" {num_query_tokens} query tokens."
            )
        if not (len(window_tracks) == len(window_starts) == len(window_ends)):
            raise ValueError("`window_tracks`, `window_starts` and `window_ends` must have one entry per window.")
        self.index = index
        self.tracks = list(tracks)
        self.window_tracks = window_tracks
        self.window_starts = np.asarray(window_starts, dtype=np.float32)
        self.window_ends = np.asarray(window_ends, dtype=np.float32)
        self.num_query_tokens = num_query_tokens
        self.metadata = dict(metadata or {})
        self._model: BlapForRepresentationLearning | None = None
        self._processor: BlapStage1Processor | None = None

    # ------------------------------------------------------------------------------------------------ building

    @classmethod
    def from_embeddings(
        cls,
        tracks: Sequence[TrackEmbeddings],
        metadata: dict[str, Any] | None = None,
        approximate: bool | None = None,
    ) -> "AudioSearchIndex":
        """
        An index over embedded tracks (from [`embed_tracks`], or rows written by a distributed job); failed tracks
        are left out and listed in `metadata["failures"]`.
        """
        done = [track for track in tracks if track.error is None and track.embeddings is not None]
        if not done:
            raise ValueError("No track could be embedded: nothing to index.")
        num_query_tokens = done[0].embeddings.shape[1]
        vectors = np.concatenate([track.embeddings for track in done])
        metadata = {**(metadata or {}), "failures": {t.path: t.error for t in tracks if t.error is not None}}
        return cls(
            build_faiss_index(vectors.reshape(-1, vectors.shape[-1]), approximate=approximate),
            [track.path for track in done],
            np.concatenate([np.full(len(track.starts), number) for number, track in enumerate(done)]),
            np.concatenate([track.starts for track in done]),
            np.concatenate([track.ends for track in done]),
            num_query_tokens,
            metadata,
        )

    @classmethod
    def build(
        cls,
        model: BlapForRepresentationLearning,
        processor: BlapStage1Processor,
        paths: Sequence[str],
        *,
        hop_s: float | None = None,
        batch_size: int = 16,
        progress: bool = True,
        approximate: bool | None = None,
    ) -> "AudioSearchIndex":
        """
        Embed every window of `paths` once and index the vectors.

        Args:
            model ([`BlapForRepresentationLearning`]), processor ([`BlapStage1Processor`]): the stage-1 model.
            paths (`Sequence[str]`): audio files (see `captioning.expand_inputs` for folders and lists).
            hop_s (`float`, *optional*): distance between window starts (default: the window length).
            batch_size (`int`, *optional*, defaults to 16): windows per model call.
            progress (`bool`, *optional*, defaults to `True`): progress bar on stderr.
            approximate (`bool`, *optional*): see [`build_faiss_index`].

        Returns:
            [`AudioSearchIndex`]; inputs that failed are in `metadata["failures"]`.
        """
        bar = tqdm(total=len(paths), unit="file", file=sys.stderr, disable=not progress)
        tracks = []
        with bar:
            for track in embed_tracks(model, processor, paths, hop_s=hop_s, batch_size=batch_size):
                tracks.append(track)
                bar.update(1)
        metadata = index_metadata(getattr(model, "name_or_path", "") or None, processor, hop_s)
        index = cls.from_embeddings(tracks, metadata, approximate=approximate)
        index._model, index._processor = model, processor
        return index

    # ---------------------------------------------------------------------------------------------- searching

    def search(
        self,
        query: str,
        k: int = 10,
        model: BlapForRepresentationLearning | None = None,
        processor: BlapStage1Processor | None = None,
    ) -> list[SearchHit]:
        """
        The `k` tracks that best match a text, best first, each with its best-matching window.

        Args:
            query (`str`): a description, e.g. `"calm solo piano"`.
            k (`int`, *optional*, defaults to 10): how many tracks.
            model, processor (*optional*): the stage-1 model and processor that embed the text; by default the ones
                the index was built with, loaded from `metadata["model"]` on first use.

        Returns:
            `list[SearchHit]`.
        """
        model, processor = self._text_encoder(model, processor)
        with torch.no_grad():
            text = processor(text=[query])
            embeds = model.get_text_embeddings(
                text["input_ids"].to(model.device), text["attention_mask"].to(model.device)
            )
        return self.search_embeddings(embeds.float().cpu().numpy(), k)[0]

    def search_embeddings(self, text_embeds: np.ndarray, k: int = 10) -> list[list[SearchHit]]:
        """
        The `k` best tracks for each of several text embeddings.

        Args:
            text_embeds (`np.ndarray` of shape `(num_queries, embed_dim)`): unit-norm, from `get_text_embeddings`.
            k (`int`, *optional*, defaults to 10).

        Returns:
            `list[list[SearchHit]]`: per query, up to `k` tracks, best first.
        """
        if k < 1:
            raise ValueError(f"`k` must be at least 1, got {k}.")
        text_embeds = np.ascontiguousarray(text_embeds, dtype=np.float32)
        if text_embeds.ndim != 2 or text_embeds.shape[1] != self.index.d:
            raise ValueError(f"`text_embeds` must be (num_queries, {self.index.d}), got shape {text_embeds.shape}.")
        # A track owns many rows (windows x query tokens): fetch more rows until k distinct tracks are among them.
        fetch = min(self.index.ntotal, k * self.num_query_tokens * 4)
        while True:
            scores, rows = self.index.search(text_embeds, fetch)
            hits = [self._best_per_track(score_row, row_ids, k) for score_row, row_ids in zip(scores, rows)]
            if fetch >= self.index.ntotal or all(len(found) >= min(k, len(self.tracks)) for found in hits):
                return hits
            fetch = min(self.index.ntotal, fetch * 4)

    def _best_per_track(self, scores: np.ndarray, rows: np.ndarray, k: int) -> list[SearchHit]:
        hits: dict[int, SearchHit] = {}
        for score, row in zip(scores.tolist(), rows.tolist()):
            if row < 0:  # fewer results than asked
                break
            window = row // self.num_query_tokens
            track = int(self.window_tracks[window])
            if track not in hits:  # rows come best first: the first row of a track is its best window
                hits[track] = SearchHit(
                    self.tracks[track], float(self.window_starts[window]), float(self.window_ends[window]), score
                )
                if len(hits) == k:
                    break
        return list(hits.values())

    def _text_encoder(
        self, model: BlapForRepresentationLearning | None, processor: BlapStage1Processor | None
    ) -> tuple[BlapForRepresentationLearning, BlapStage1Processor]:
        if model is not None and processor is not None:
            return model.eval(), processor
        if self._model is None:
            source = self.metadata.get("model")
            if not source:
                raise ValueError("This index does not name its model: pass `model=` and `processor=` to `search`.")
            self._model = BlapForRepresentationLearning.from_pretrained(source).eval()
            self._processor = BlapStage1Processor.from_pretrained(source)
        return model or self._model, processor or self._processor

    # ------------------------------------------------------------------------------------------ save and load

    def save(self, folder: str | os.PathLike) -> None:
        """Write the index to `folder` (created if missing; files replaced, each written whole before it lands)."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        faiss.write_index(self.index, str(folder / "index.faiss.tmp"))
        save_file(
            {"track": self.window_tracks, "start": self.window_starts, "end": self.window_ends},
            str(folder / "windows.safetensors.tmp"),
        )
        info = {
            "format_version": INDEX_FORMAT_VERSION,
            "num_query_tokens": self.num_query_tokens,
            "tracks": self.tracks,
            **self.metadata,
        }
        (folder / "index.json.tmp").write_text(json.dumps(info, indent=1, ensure_ascii=False), encoding="utf-8")
        for name in ("index.faiss", "windows.safetensors", "index.json"):  # index.json last: its presence = complete
            os.replace(folder / f"{name}.tmp", folder / name)

    @classmethod
    def load(cls, folder: str | os.PathLike) -> "AudioSearchIndex":
        """Read an index written by [`save`] (`blap index`)."""
        folder = Path(folder)
        if not (folder / "index.json").is_file():
            raise FileNotFoundError(f"{folder} is not a search index (no index.json): build one with `blap index`.")
        info = json.loads((folder / "index.json").read_text(encoding="utf-8"))
        if info.get("format_version") != INDEX_FORMAT_VERSION:
            raise ValueError(
                f"{folder}/index.json has format version {info.get('format_version')}, expected"
                f" {INDEX_FORMAT_VERSION}."
            )
        windows = load_file(str(folder / "windows.safetensors"))
        metadata = {
            key: value for key, value in info.items() if key not in ("format_version", "num_query_tokens", "tracks")
        }
        return cls(
            faiss.read_index(str(folder / "index.faiss")),
            info["tracks"],
            windows["track"],
            windows["start"],
            windows["end"],
            info["num_query_tokens"],
            metadata,
        )


__all__ = ["AudioSearchIndex", "SearchHit", "TrackEmbeddings", "build_faiss_index", "embed_tracks", "index_metadata"]
