"""
Captioning past one machine on Ray Data (the engine of `blap caption-ray`).

The files are a Ray dataset of paths; `map_batches` sends batches of them to a pool of actors, each holding one
captioner pipeline, which captions them with [`caption_files`](captioning) (the same engine, batching and failure
handling as `blap caption`); the records are written as Parquet files into an output folder:

```
output/
  *.parquet    path, caption, windows (start, end, caption), duration, warnings, error
```

- **Records.** The columns are the fields of a `blap caption` JSON line; a file that cannot be decoded or captioned
  gets `caption` null and its `error`, and the run goes on. Read them with `pandas.read_parquet(folder)` or
  `datasets.load_dataset("parquet", data_dir=folder)`. `blap export` reads the JSON Lines of `blap caption`, not this
  folder.
- **Faults.** Actors are restarted when their process dies and their batches retried (Ray Data's actor pools set
  `max_restarts=-1` and `max_task_retries=-1`): every input gets exactly one record. A run is not resumable: a failed
  run is rerun whole (the output folder must be new or empty).
- **Cluster.** `ray.init()` joins the cluster named by `RAY_ADDRESS` (e.g. one started with `ray start --head`), else
  starts a local one on this machine. The model must load on every node (a Hub id, or a folder on shared storage),
  and the audio paths must be readable there.
"""

import os
import tempfile
from collections.abc import Sequence
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from .captioning import caption_files, read_records, record_key

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
"""The columns of the Parquet output: the fields of a `blap caption` JSON line."""


class Captioner:
    """
    A Ray Data actor: loads the captioner pipeline once and captions batches of paths into record tables.

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
            batch (`pa.Table`): a `path` column.

        Returns:
            `pa.Table`: one record per path, in order, with [`RECORD_SCHEMA`].
        """
        paths = batch.column("path").to_pylist()
        with tempfile.TemporaryDirectory(prefix="blap-ray-") as folder:
            journal = Path(folder) / "records.jsonl"
            caption_files(
                self.pipe, paths, journal, batch_size=self.batch_size, progress=False, **self.pipeline_kwargs
            )
            records = {record_key(record): record for record in read_records(journal)}
        return pa.Table.from_pylist([records[path] for path in paths], schema=RECORD_SCHEMA)


def caption_with_ray(
    inputs: Sequence[str],
    model: str,
    output: str | os.PathLike,
    *,
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
    Caption audio files on Ray Data: `num_actors` actors with one model each, Parquet records in `output`.

    Ray must be initialised (`ray.init()`); see the module docstring for the output and the fault rules.

    Args:
        inputs (`Sequence[str]`): the resolved audio paths (see [`expand_inputs`](captioning)).
        model (`str`): a saved BLAP folder or Hub repository id, loadable on every node.
        output (`str` or `os.PathLike`): a new or empty folder for the Parquet files.
        num_actors (`int`, *optional*, defaults to 1): captioner actors (models) in the pool.
        files_per_task (`int`, *optional*, defaults to 8): paths per `map_batches` batch (the unit of retry).
        cpus_per_actor (`float`, *optional*, defaults to 1.0): CPUs reserved for an actor.
        gpus_per_actor (`float`, *optional*, defaults to 0.0): GPUs reserved for an actor; above 0 the actors run
            on `cuda`.
        dtype (`str`, *optional*, defaults to `"checkpoint"`): model weights' dtype (see [`resolve_dtype`]).
        trust_remote_code (`bool`, *optional*, defaults to `False`): allow the model repository's own code.
        batch_size (`int`, *optional*, defaults to 8): windows per `generate` call.
        pipeline_kwargs: pipeline call options (prompt, window and generation options).

    Returns:
        `dict[str, str]`: the error of every input whose record is an error, by path.
    """
    import ray

    output = Path(output)
    if output.exists() and (not output.is_dir() or any(output.iterdir())):
        raise ValueError(f"--output {output} must be a new or empty folder.")
    if num_actors < 1 or files_per_task < 1:
        raise ValueError(f"`num_actors` and `files_per_task` must be at least 1, got {num_actors}, {files_per_task}.")
    inputs = list(inputs)
    chunks = [inputs[start : start + files_per_task] for start in range(0, len(inputs), files_per_task)]
    paths = ray.data.from_arrow([pa.table({"path": pa.array(chunk, pa.string())}) for chunk in chunks])
    records = paths.map_batches(
        Captioner,
        fn_constructor_kwargs={
            "model": model,
            "device": "cuda" if gpus_per_actor > 0 else "cpu",
            "dtype": dtype,
            "trust_remote_code": trust_remote_code,
            "batch_size": batch_size,
            **pipeline_kwargs,
        },
        batch_size=files_per_task,
        batch_format="pyarrow",
        compute=ray.data.ActorPoolStrategy(size=num_actors),
        num_cpus=cpus_per_actor,
        num_gpus=gpus_per_actor,
    )
    output.mkdir(parents=True, exist_ok=True)
    # The driver writes each finished batch at once (written whole, then renamed): no Ray task competes with the
    # actors for CPUs, and what is captioned before a crash stays on disk.
    for index, table in enumerate(records.iter_batches(batch_size=None, batch_format="pyarrow")):
        part = output / f"part-{index:05d}.parquet"
        pq.write_table(table, part.with_suffix(".tmp"))
        os.replace(part.with_suffix(".tmp"), part)
    written = pq.read_table(output, columns=["path", "error"]).to_pylist()
    return {record["path"]: record["error"] for record in written if record["error"] is not None}


__all__ = ["RECORD_SCHEMA", "Captioner", "caption_with_ray"]
