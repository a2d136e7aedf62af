"""
Captioning and indexing past one machine on Ray Data (the engines of `blap caption-ray` and `blap index-ray`).

The inputs, audio files or the rows of a `datasets` dataset, become a Ray dataset; `map_batches` sends batches of
them to a pool of actors, each holding one model: a captioner pipeline that captions them with the engine of
`blap caption` ([`caption_files`](captioning), [`caption_dataset`](captioning): the same batching and failure
handling), or a stage-1 model that embeds every window with the engine of `blap index` ([`embed_tracks`](search)).
The driver writes every finished batch as a Parquet file into the output folder:

```
captions/                          (blap caption-ray)
  part-*.parquet   [id,] path, caption, windows (start, end, caption), duration, warnings, error
index/                             (blap index-ray)
  embeddings/part-*.parquet        position, track, start, end, num_query_tokens, embeddings, error
  index.faiss, windows.safetensors, index.json    the search index, assembled from the parts at the end
```

- **Records.** The caption columns are the fields of a `blap caption` JSON line (with `id` first for dataset rows);
  an input that cannot be decoded or captioned gets `caption` null and its `error`, and the run goes on. Read them
  with `pandas.read_parquet(folder)` or `datasets.load_dataset("parquet", data_dir=folder)`. `blap export` reads the
  JSON Lines of `blap caption`, not this folder. The embedding parts hold each input's windows (start, end) and their
  flattened `(windows, num_query_tokens, embed_dim)` vectors; the index assembled from them equals the one
  `blap index` builds from the same inputs (same tracks in input order, windows and vectors).
- **Dataset input.** A row's identity is its id column's value, or its index in the split (as for
  `blap caption --dataset`); an `Audio` column is read undecoded (bytes or path) and decoded by the package's own
  reader. In an index, a row's track is its id as text.
- **Faults.** Actors are restarted when their process dies and their batches retried (Ray Data's actor pools set
  `max_restarts=-1` and `max_task_retries=-1`): every input gets exactly one record. A run is not resumable: a failed
  run is rerun whole (the output folder must be new or empty).
- **Cluster.** `ray.init()` joins the cluster named by `RAY_ADDRESS` (e.g. one started with `ray start --head`), else
  starts a local one on this machine. The model must load on every node (a Hub id, or a folder on shared storage),
  and the audio paths must be readable there; a dataset is read by the driver and its rows are shipped to the actors.
"""

import os
import tempfile
from collections import Counter
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from .captioning import _check_columns, caption_dataset, caption_files, read_records, record_key
from .journal import latest_per_key

if TYPE_CHECKING:
    import ray

    from .search import AudioSearchIndex, TrackEmbeddings

RECORD_SCHEMA = pa.schema(
    [
        ("path", pa.string()),
        ("caption", pa.string()),
        ("windows", pa.list_(pa.struct([("start", pa.float64()), ("end", pa.float64()), ("caption", pa.string())]))),
        ("duration", pa.float64()),
        ("warnings", pa.list_(pa.string())),
        ("error", pa.string()),
    ]
)
"""The columns of the caption Parquet output: the fields of a `blap caption` JSON line (dataset rows add `id`)."""

EMBEDDING_SCHEMA = pa.schema(
    [
        ("position", pa.int64()),
        ("track", pa.string()),
        ("start", pa.list_(pa.float32())),
        ("end", pa.list_(pa.float32())),
        ("num_query_tokens", pa.int32()),
        ("embeddings", pa.list_(pa.float32())),
        ("error", pa.string()),
    ]
)
"""The columns of the embedding Parquet parts of `blap index-ray`: one row per input."""

EMBEDDINGS_FOLDER = "embeddings"
"""The sub-folder of an index folder that holds the embedding parts of `blap index-ray`."""


# ------------------------------------------------------------------------------------------------------- inputs


def _input_rows(
    inputs: Sequence[str] | None,
    dataset: Any,
    audio_column: str,
    id_column: str | None,
    rows_per_task: int,
) -> "ray.data.Dataset":
    """
    The inputs as a Ray dataset of blocks of `rows_per_task` rows (a block is the unit of retry): `position` (in the
    input order) and `path` for files; `position`, `id` and `audio` for the rows of a `datasets.Dataset`.

    The dataset goes through its Arrow table, as `ray.data.from_huggingface` does for a dataset that is not a
    Hub-hosted Parquet split as published (this one never is: its rows get ids), without that function's round trip to
    the Hub to compare fingerprints.
    """
    import datasets
    import ray

    if (inputs is None) == (dataset is None):
        raise ValueError("give `inputs` (audio paths) or `dataset`, not both and not neither.")
    if rows_per_task < 1:
        raise ValueError(f"`rows_per_task` must be at least 1, got {rows_per_task}.")
    if inputs is not None:
        table = pa.table({"position": pa.array(range(len(inputs)), pa.int64()), "path": pa.array(inputs, pa.string())})
    else:
        if not isinstance(dataset, datasets.Dataset):
            raise ValueError(f"the Ray jobs read a `datasets.Dataset` (not streamed), got {type(dataset).__name__}.")
        _check_columns(dataset, audio_column, id_column)
        columns = dataset.with_format("arrow")[:]
        ids = pa.array(range(len(dataset)), pa.int64()) if id_column is None else columns.column(id_column)
        repeated = next((i for i, count in Counter(map(str, ids.to_pylist())).items() if count > 1), None)
        if repeated is not None:
            raise ValueError(f"the id column {id_column!r} is not unique: {repeated!r} appears more than once.")
        table = pa.table(
            {"position": pa.array(range(len(dataset)), pa.int64()), "id": ids, "audio": columns.column(audio_column)}
        )
    if table.num_rows == 0:
        raise ValueError("nothing to do: no inputs.")
    return ray.data.from_arrow(
        [table.slice(start, rows_per_task) for start in range(0, table.num_rows, rows_per_task)]
    )


def _batch_inputs(batch: pa.Table) -> tuple[list[str], list[Any]]:
    """The identities (path, or row id as text) and the audio sources of a batch of [`_input_rows`]."""
    if "audio" in batch.column_names:
        return [str(row_id) for row_id in batch.column("id").to_pylist()], batch.column("audio").to_pylist()
    paths = batch.column("path").to_pylist()
    return paths, paths


def _new_output_folder(output: str | os.PathLike) -> Path:
    output = Path(output)
    if output.exists() and (not output.is_dir() or any(output.iterdir())):
        raise ValueError(f"--output {output} must be a new or empty folder.")
    output.mkdir(parents=True, exist_ok=True)
    return output


def _run_actors(
    rows: "ray.data.Dataset",
    actor_class: type,
    constructor_kwargs: dict[str, Any],
    parts: Path,
    *,
    rows_per_task: int,
    num_actors: int,
    cpus_per_actor: float,
    gpus_per_actor: float,
) -> None:
    """`map_batches` of `actor_class` over `rows` on a pool of `num_actors` actors; each finished batch is written to
    `parts` as one Parquet file."""
    import ray

    if num_actors < 1:
        raise ValueError(f"`num_actors` must be at least 1, got {num_actors}.")
    results = rows.map_batches(
        actor_class,
        fn_constructor_kwargs={"device": "cuda" if gpus_per_actor > 0 else "cpu", **constructor_kwargs},
        batch_size=rows_per_task,
        batch_format="pyarrow",
        compute=ray.data.ActorPoolStrategy(size=num_actors),
        num_cpus=cpus_per_actor,
        num_gpus=gpus_per_actor,
    )
    parts.mkdir(parents=True, exist_ok=True)
    # The driver writes each finished batch at once (written whole, then renamed): no Ray task competes with the
    # actors for CPUs, and what is done before a crash stays on disk.
    for index, table in enumerate(results.iter_batches(batch_size=None, batch_format="pyarrow")):
        part = parts / f"part-{index:05d}.parquet"
        pq.write_table(table, part.with_suffix(".tmp"))
        os.replace(part.with_suffix(".tmp"), part)


# ----------------------------------------------------------------------------------------------------- captions


class Captioner:
    """
    A Ray Data actor: loads the captioner pipeline once and captions batches of inputs into record tables.

    Args:
        model (`str`): a saved BLAP folder or Hub repository id.
        device (`str`, *optional*, defaults to `"cpu"`): the actor's device.
        dtype (`str`, *optional*, defaults to `"checkpoint"`): see [`resolve_dtype`](precision).
        trust_remote_code (`bool`, *optional*, defaults to `False`): allow the model repository's own code.
        batch_size (`int`, *optional*, defaults to 8): windows per `generate` call.
        pipeline_kwargs: pipeline call options (prompt, window and generation options).
    """

    def __init__(
        self,
        model: str,
        device: str = "cpu",
        dtype: str = "checkpoint",
        trust_remote_code: bool = False,
        batch_size: int = 8,
        **pipeline_kwargs,
    ):
        from transformers import pipeline

        from .precision import resolve_dtype

        self.pipe = pipeline(
            "audio-to-text",
            model=model,
            device=device,
            dtype=resolve_dtype(dtype, device),
            trust_remote_code=trust_remote_code,
        )
        self.batch_size = batch_size
        self.pipeline_kwargs = pipeline_kwargs

    def __call__(self, batch: pa.Table) -> pa.Table:
        """
        Args:
            batch (`pa.Table`): rows of [`_input_rows`]: a `path` column, or `id` and `audio` columns.

        Returns:
            `pa.Table`: one record per input, in order, with [`RECORD_SCHEMA`] (and `id` first for dataset rows).
        """
        import datasets

        keys, _ = _batch_inputs(batch)
        options = {"batch_size": self.batch_size, "progress": False, **self.pipeline_kwargs}
        schema = RECORD_SCHEMA
        with tempfile.TemporaryDirectory(prefix="blap-ray-") as folder:
            journal = Path(folder) / "records.jsonl"
            if "audio" in batch.column_names:
                rows = datasets.Dataset(datasets.table.InMemoryTable(batch.select(["id", "audio"])))
                caption_dataset(self.pipe, rows, journal, audio_column="audio", id_column="id", **options)
                schema = schema.insert(0, batch.schema.field("id"))
            else:
                caption_files(self.pipe, keys, journal, **options)
            records = latest_per_key(read_records(journal), record_key)
        return pa.Table.from_pylist([records[key] for key in keys], schema=schema)


def caption_with_ray(
    inputs: Sequence[str] | None,
    model: str,
    output: str | os.PathLike,
    *,
    dataset: Any = None,
    audio_column: str = "audio",
    id_column: str | None = None,
    num_actors: int = 1,
    files_per_task: int = 8,
    cpus_per_actor: float = 1.0,
    gpus_per_actor: float = 0.0,
    dtype: str = "checkpoint",
    trust_remote_code: bool = False,
    batch_size: int = 8,
    **pipeline_kwargs,
) -> dict[str, str]:
    """
    Caption audio files, or a dataset's audio column, on Ray Data: `num_actors` actors with one model each, Parquet
    records in `output`.

    Ray must be initialised (`ray.init()`); see the module docstring for the output and the fault rules.

    Args:
        inputs (`Sequence[str]`, *optional*): the resolved audio paths (see [`expand_inputs`](captioning)); `None`
            with `dataset`.
        model (`str`): a saved BLAP folder or Hub repository id, loadable on every node.
        output (`str` or `os.PathLike`): a new or empty folder for the Parquet files.
        dataset (`datasets.Dataset`, *optional*): rows to caption instead of files (see [`load_caption_dataset`]).
        audio_column (`str`, *optional*, defaults to `"audio"`): the dataset's audio column.
        id_column (`str`, *optional*): a column of unique row ids (default: the row's index).
        num_actors (`int`, *optional*, defaults to 1): captioner actors (models) in the pool.
        files_per_task (`int`, *optional*, defaults to 8): inputs per `map_batches` batch (the unit of retry).
        cpus_per_actor (`float`, *optional*, defaults to 1.0): CPUs reserved for an actor.
        gpus_per_actor (`float`, *optional*, defaults to 0.0): GPUs reserved for an actor; above 0 the actors run
            on `cuda`.
        dtype (`str`, *optional*, defaults to `"checkpoint"`): model weights' dtype (see [`resolve_dtype`]).
        trust_remote_code (`bool`, *optional*, defaults to `False`): allow the model repository's own code.
        batch_size (`int`, *optional*, defaults to 8): windows per `generate` call.
        pipeline_kwargs: pipeline call options (prompt, window and generation options).

    Returns:
        `dict[str, str]`: the error of every input whose record is an error, by path (by row id as text for a
        dataset).
    """
    rows = _input_rows(inputs, dataset, audio_column, id_column, files_per_task)
    output = _new_output_folder(output)
    _run_actors(
        rows,
        Captioner,
        {"model": model, "dtype": dtype, "trust_remote_code": trust_remote_code, "batch_size": batch_size}
        | pipeline_kwargs,
        output,
        rows_per_task=files_per_task,
        num_actors=num_actors,
        cpus_per_actor=cpus_per_actor,
        gpus_per_actor=gpus_per_actor,
    )
    written = pq.read_table(output).to_pylist()
    return {record_key(record): record["error"] for record in written if record["error"] is not None}


# -------------------------------------------------------------------------------------------------------- index


class Embedder:
    """
    A Ray Data actor: loads a stage-1 model once and embeds every window of batches of inputs
    ([`embed_tracks`](search)) into rows of [`EMBEDDING_SCHEMA`].

    Args:
        model (`str`): a saved stage-1 BLAP folder or Hub repository id.
        device (`str`, *optional*, defaults to `"cpu"`): the actor's device.
        hop_s (`float`, *optional*): distance between window starts (default: the window length).
        batch_size (`int`, *optional*, defaults to 16): windows per model call.
    """

    def __init__(self, model: str, device: str = "cpu", hop_s: float | None = None, batch_size: int = 16):
        from .modeling_blap import BlapForRepresentationLearning
        from .processing_blap import BlapStage1Processor

        self.model = BlapForRepresentationLearning.from_pretrained(model).to(device).eval()
        self.processor = BlapStage1Processor.from_pretrained(model)
        self.hop_s = hop_s
        self.batch_size = batch_size

    def __call__(self, batch: pa.Table) -> pa.Table:
        """
        Args:
            batch (`pa.Table`): rows of [`_input_rows`].

        Returns:
            `pa.Table`: one row per input, in order, with [`EMBEDDING_SCHEMA`].
        """
        from .search import embed_tracks

        keys, sources = _batch_inputs(batch)
        tracks = embed_tracks(self.model, self.processor, sources, hop_s=self.hop_s, batch_size=self.batch_size)
        rows = []
        for position, key, track in zip(batch.column("position").to_pylist(), keys, tracks):
            embeddings = track.embeddings if track.error is None else None
            rows.append(
                {
                    "position": position,
                    "track": key,
                    "start": track.starts.tolist(),
                    "end": track.ends.tolist(),
                    "num_query_tokens": None if embeddings is None else embeddings.shape[1],
                    "embeddings": None if embeddings is None else embeddings.ravel(),
                    "error": track.error,
                }
            )
        return pa.Table.from_pylist(rows, schema=EMBEDDING_SCHEMA)


def read_embedding_parts(folder: str | os.PathLike) -> Iterator["TrackEmbeddings"]:
    """
    The tracks of the embedding parts of [`index_with_ray`], in input order.

    Args:
        folder (`str` or `os.PathLike`): the folder of `part-*.parquet` files ([`EMBEDDING_SCHEMA`]).

    Yields:
        [`TrackEmbeddings`](search), with `embeddings` of shape `(num_windows, num_query_tokens, embed_dim)` or
        its `error`.
    """
    from .search import TrackEmbeddings

    table = pq.read_table(folder, schema=EMBEDDING_SCHEMA).sort_by("position")
    for batch in table.to_batches():
        vectors = batch.column("embeddings")
        for row in range(batch.num_rows):
            starts = np.asarray(batch.column("start")[row].values, dtype=np.float32)
            ends = np.asarray(batch.column("end")[row].values, dtype=np.float32)
            track = TrackEmbeddings(batch.column("track")[row].as_py(), starts, ends)
            track.error = batch.column("error")[row].as_py()
            if track.error is None:
                num_query_tokens = batch.column("num_query_tokens")[row].as_py()
                flat = vectors[row].values.to_numpy(zero_copy_only=False)
                track.embeddings = flat.reshape(len(starts), num_query_tokens, -1)
            yield track


def index_with_ray(
    inputs: Sequence[str] | None,
    model: str,
    output: str | os.PathLike,
    *,
    dataset: Any = None,
    audio_column: str = "audio",
    id_column: str | None = None,
    num_actors: int = 1,
    files_per_task: int = 8,
    cpus_per_actor: float = 1.0,
    gpus_per_actor: float = 0.0,
    hop_s: float | None = None,
    batch_size: int = 16,
) -> "AudioSearchIndex":
    """
    Embed every window of audio files, or of a dataset's audio column, on Ray Data (`num_actors` actors with one
    stage-1 model each), write the embeddings as Parquet parts in `output/embeddings/`, and assemble them into a
    search index saved in `output` (what `blap index` writes for the same inputs).

    Ray must be initialised (`ray.init()`); see the module docstring for the output and the fault rules.

    Args:
        inputs (`Sequence[str]`, *optional*): the resolved audio paths; `None` with `dataset`.
        model (`str`): a saved stage-1 BLAP folder or Hub repository id, loadable on every node and here.
        output (`str` or `os.PathLike`): a new or empty folder for the index.
        dataset, audio_column, id_column, num_actors, files_per_task, cpus_per_actor, gpus_per_actor: as for
            [`caption_with_ray`].
        hop_s (`float`, *optional*): distance between window starts (default: the window length).
        batch_size (`int`, *optional*, defaults to 16): windows per model call.

    Returns:
        [`AudioSearchIndex`](search); inputs that failed are in `metadata["failures"]`.
    """
    from .processing_blap import BlapStage1Processor
    from .search import AudioSearchIndex, index_metadata

    rows = _input_rows(inputs, dataset, audio_column, id_column, files_per_task)
    output = _new_output_folder(output)
    metadata = index_metadata(model, BlapStage1Processor.from_pretrained(model), hop_s)
    _run_actors(
        rows,
        Embedder,
        {"model": model, "hop_s": hop_s, "batch_size": batch_size},
        output / EMBEDDINGS_FOLDER,
        rows_per_task=files_per_task,
        num_actors=num_actors,
        cpus_per_actor=cpus_per_actor,
        gpus_per_actor=gpus_per_actor,
    )
    index = AudioSearchIndex.from_embeddings(list(read_embedding_parts(output / EMBEDDINGS_FOLDER)), metadata)
    index.save(output)
    return index


__all__ = [
    "EMBEDDING_SCHEMA",
    "RECORD_SCHEMA",
    "Captioner",
    "Embedder",
    "caption_with_ray",
    "index_with_ray",
    "read_embedding_parts",
]
