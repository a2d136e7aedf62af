"""
The resumable JSON Lines journal behind `blap caption` and `blap evaluate`: one line per finished item, on disk before
the next item starts, in a file that a crash or a signal leaves readable.

- **Reading** ([`Journal.records`]): the complete records; a line that is not a JSON object the caller accepts (the
  last line, cut short by a crash) is skipped.
- **Resuming** ([`Journal.resume`]): before appending, the file is rewritten without such lines and without the
  records the caller drops (e.g. failures about to be retried), so that new records start on a fresh line.
- **Appending** ([`Journal.append`], inside `with journal:`): one whole line, flushed and fsynced.
- **Rewriting** ([`Journal.rewrite`]): the file is replaced atomically; a crash leaves the old file or the new one.
- **Folding** ([`latest_per_key`]): the latest record of each item, as a journal appended to by reruns holds several.
- **Failures** are records too: [`error_text`] is their one-line error.

What identifies an item (the key) and which records a rerun may reuse stay with the callers.
"""

import json
import os
from collections.abc import Callable, Iterable
from pathlib import Path
from types import TracebackType
from typing import Any, TextIO

Record = dict[str, Any]


def _any_record(record: Record) -> bool:
    return True


class Journal:
    """
    A JSON Lines file of records, appended to one finished item at a time.

    Args:
        path (`str` or `os.PathLike`): the file (it need not exist yet).
        accepts (`Callable[[dict], bool]`, *optional*): which JSON objects are records (default: all); a line that
            holds anything else counts as unreadable.

    Example:

    ```python
    >>> journal = Journal("out.jsonl", accepts=lambda record: "path" in record)
    >>> journal.resume(keep=lambda record: record.get("error") is None)  # drop torn lines and failures
    0
    >>> with journal:
    ...     journal.append({"path": "a.wav", "caption": "...", "error": None})
    ```
    """

    def __init__(self, path: str | os.PathLike, accepts: Callable[[Record], bool] = _any_record):
        self.path = Path(path)
        self._accepts = accepts
        self._handle: TextIO | None = None

    def _read(self) -> tuple[list[tuple[str, Record]], int, bool]:
        """`(line, record)` of each record, the count of unreadable lines, and whether the file ends with a newline."""
        entries: list[tuple[str, Record]] = []
        unreadable, ends_with_newline = 0, True
        if not self.path.is_file():
            return entries, unreadable, ends_with_newline
        # A line cut short inside a multi-byte character must not make the whole file unreadable.
        with open(self.path, encoding="utf-8", errors="replace") as handle:
            for line in handle:
                ends_with_newline = line.endswith("\n")
                try:
                    record = json.loads(line)
                except json.JSONDecodeError:
                    unreadable += 1
                    continue
                if isinstance(record, dict) and self._accepts(record):
                    entries.append((line.rstrip("\n"), record))
                else:
                    unreadable += 1
        return entries, unreadable, ends_with_newline

    def records(self) -> list[Record]:
        """The complete records, in file order (none for a missing file); the file is left as it is."""
        return [record for _, record in self._read()[0]]

    def resume(self, keep: Callable[[Record], bool] | None = None) -> int:
        """
        Make the file ready to append to: rewrite it (atomically, the kept lines unchanged) without unreadable lines
        and without the records `keep` rejects, if there are any, or if its last line lacks its newline.

        Returns:
            `int`: the number of unreadable lines dropped (e.g. one cut short by a crash).
        """
        entries, unreadable, ends_with_newline = self._read()
        kept = [line for line, record in entries if keep is None or keep(record)]
        if unreadable or not ends_with_newline or len(kept) < len(entries):
            self._replace(kept)
        return unreadable

    def rewrite(self, records: Iterable[Record]) -> None:
        """Replace the file with `records`, one line each; a crash leaves either the old or the new file."""
        self._replace(_line(record) for record in records)

    def _replace(self, lines: Iterable[str]) -> None:
        tmp_path = self.path.with_name(self.path.name + ".tmp")
        with open(tmp_path, "w", encoding="utf-8") as handle:
            for line in lines:
                handle.write(line + "\n")
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp_path, self.path)

    def __enter__(self) -> "Journal":
        self._handle = open(self.path, "a", encoding="utf-8")
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, traceback: TracebackType | None
    ) -> None:
        self._handle.close()
        self._handle = None

    def append(self, record: Record) -> None:
        """Append `record` as one line and make it durable (flush + fsync) before returning."""
        if self._handle is None:
            raise RuntimeError(f"{self.path}: append to a journal inside `with journal:`.")
        self._handle.write(_line(record) + "\n")
        self._handle.flush()
        os.fsync(self._handle.fileno())


def _line(record: Record) -> str:
    return json.dumps(record, ensure_ascii=False)


def error_text(error: BaseException) -> str:
    """How a journal records a failed item: one line, the error's class and message, whitespace folded."""
    return " ".join(f"{type(error).__name__}: {error}".split())


def latest_per_key(
    records: Iterable[Record], key: Callable[[Record], str], settled: Callable[[Record], bool] | None = None
) -> dict[str, Record]:
    """
    The latest record of each key, in the order the keys first appear.

    Args:
        records (`Iterable[dict]`): in the order they were written.
        key (`Callable[[dict], str]`): the item a record is about.
        settled (`Callable[[dict], bool]`, *optional*): a settled record (e.g. one with a caption) is replaced only by
            another settled one: a later failure does not undo a success. By default the last record wins.

    Returns:
        `dict[str, dict]`: key -> record.
    """
    latest: dict[str, Record] = {}
    for record in records:
        item = key(record)
        previous = latest.get(item)
        if previous is None or settled is None or settled(record) or not settled(previous):
            latest[item] = record
    return latest


__all__ = ["Journal", "error_text", "latest_per_key"]
