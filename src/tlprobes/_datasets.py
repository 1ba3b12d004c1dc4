"""Prompts streamed from a dataset file: text, JSONL, CSV/TSV, Parquet or a local HF ``datasets`` folder.

::

    >>> import pathlib, tempfile
    >>> path = pathlib.Path(tempfile.mkdtemp()) / "prompts.jsonl"
    >>> _ = path.write_text('{"text": "The cat sat.", "label": 1}\\n{"text": "A dog ran.", "label": 0}\\n')
    >>> prompts = read_prompts(path)            # the one text column is the prompt column
    >>> list(prompts)
    ['The cat sat.', 'A dog ran.']
    >>> list(read_prompts(path, limit=1))
    ['The cat sat.']

:func:`read_prompts` returns a :class:`PromptStream`: an iterable that reads the file lazily each
time it is iterated (a few rows or one Parquet batch at a time), so memory does not grow with the
file. ``len()`` / :meth:`PromptStream.count` read the row count from metadata where the format
has it (Parquet, HF folders), else in one streaming pass. :meth:`PromptStream.iter_range` and
slicing (``stream[64:128]``) read one contiguous range of prompts (a shard), skipping Parquet row
groups and HF rows they do not need, so ``tp.run(model, stream, ..., shard_size=, out=)`` hands
each worker (a torchrun rank, a Ray actor) only its own rows. :meth:`PromptStream.rows` yields every column of each row
(per-prompt words, labels, targets), as a suite's TSV prompt file does today.

Formats, chosen by suffix (or ``format=``):

- ``.txt``: one prompt a line; blank lines and lines starting with ``#`` are skipped, exactly as in
  a suite's prompt file. Lines end at ``\\n`` only (a trailing ``\\r`` is dropped).
- ``.jsonl`` / ``.ndjson``: one JSON object (or one JSON string) a line.
- ``.csv`` / ``.tsv``: a table with a header row (quoted fields may span lines).
- ``.parquet``: read with ``pyarrow`` in batches, only the columns needed.
- a folder: a HF ``datasets`` folder written by ``Dataset.save_to_disk`` (read with
  ``datasets.load_from_disk``, memory-mapped), or, without ``datasets``, its ``*.arrow`` files read
  with ``pyarrow``. A ``DatasetDict`` folder holds one folder per split: give ``PATH/train``.

Parquet and HF folders need ``pyarrow`` / ``datasets``: ``pip install 'tlprobes[data]'``.

The prompt column (``column=``) may be left out when the rows hold exactly one text column;
otherwise an :class:`~tlprobes.errors.InputError` names the text columns to choose from.
"""

from __future__ import annotations

import csv
import hashlib
import json
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ._errors import ArgumentError, InputError, MissingExtraError, choices

__all__ = ["PromptStream", "read_prompts", "FORMATS"]

#: format name -> file suffixes that select it
FORMATS: dict[str, tuple[str, ...]] = {
    "text": (".txt", ".text"),
    "jsonl": (".jsonl", ".ndjson"),
    "csv": (".csv", ".tsv"),
    "parquet": (".parquet", ".pq"),
    "hf": (),  # a folder
}
_BATCH = 1024  # rows per Parquet / Arrow batch


def _need(module: str, what: str) -> Any:
    """Import an optional dependency, or say which extra installs it."""
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError as err:
        raise MissingExtraError(
            f"{what} needs the optional package {module.split('.')[0]!r}, which is not installed; "
            "install it with `pip install 'tlprobes[data]'`"
        ) from err


def _format_of(path: Path, given: str | None) -> str:
    if given is not None:
        if given not in FORMATS:
            raise InputError(f"unknown dataset format {given!r}; valid: {choices(FORMATS)}")
        return given
    if path.is_dir():
        return "hf"
    suffix = path.suffix.lower()
    for name, suffixes in FORMATS.items():
        if suffix in suffixes:
            return name
    valid = [s for suffixes in FORMATS.values() for s in suffixes] + ["a HF datasets folder"]
    hint = " (a JSON array cannot be streamed: write one object a line as .jsonl)" if suffix == ".json" else ""
    raise InputError(f"dataset {str(path)!r} has an unknown suffix {suffix!r}{hint}; valid: {choices(valid)}")


def _is_text_type(arrow_type: Any) -> bool:
    import pyarrow as pa

    return bool(pa.types.is_string(arrow_type) or pa.types.is_large_string(arrow_type)
                or getattr(pa.types, "is_string_view", lambda t: False)(arrow_type))


@dataclass(frozen=True)
class PromptStream:
    """Prompts read lazily from one dataset (see the module docstring); build it with
    :func:`read_prompts`. Iterating yields the prompt strings; it can be iterated again.

    Example::

        >>> import pathlib, tempfile
        >>> path = pathlib.Path(tempfile.mkdtemp()) / "p.csv"
        >>> _ = path.write_text("id,sentence,word\\n1,Julia gave her a dog.,dog\\n2,A red cup.,red\\n")
        >>> stream = read_prompts(path, column="sentence")
        >>> stream.columns, stream.count()
        (('id', 'sentence', 'word'), 2)
        >>> [row["word"] for row in stream.rows()]
        ['dog', 'red']
    """

    path: Path
    format: str
    column: str | None
    limit: int | None
    #: every column of the rows (``()`` for a text file)
    columns: tuple[str, ...]
    #: the columns holding text (the prompt column is one of them)
    text_columns: tuple[str, ...] = field(repr=False, default=())
    _n: int | None = field(default=None, init=False, repr=False, compare=False)  # count, once known

    # -- reading -------------------------------------------------------------------------------
    def __iter__(self) -> Iterator[str]:
        return self.iter_range(0, None)

    def iter_range(self, start: int, stop: int | None) -> Iterator[str]:
        """The prompts with index ``start <= i < stop`` (``stop=None``: to the end), streamed.

        Parquet skips row groups before ``start`` and an HF folder selects the range, so a worker
        reading one shard does not read the rows before it.
        """
        yield from self._rows(start, stop, only_prompt=True)

    def rows(self, start: int = 0, stop: int | None = None) -> Iterator[dict[str, Any]]:
        """Every column of each row (``{column: prompt}`` for a text file), streamed."""
        return self._rows(start, stop, only_prompt=False)  # type: ignore[return-value]

    def _rows(self, start: int, stop: int | None, *, only_prompt: bool) -> Iterator[Any]:
        if isinstance(start, bool) or not isinstance(start, int) or start < 0:
            raise InputError(f"range start {start!r} must be an integer >= 0")
        if stop is not None and (isinstance(stop, bool) or not isinstance(stop, int) or stop < start):
            raise InputError(f"range stop {stop!r} must be None or an integer >= start ({start})")
        if self.limit is not None:
            stop = self.limit if stop is None else min(stop, self.limit)
        if stop is not None and stop <= start:
            return iter(())
        reader = getattr(self, f"_read_{self.format}")
        return reader(start, stop, only_prompt)

    def count(self) -> int:
        """The number of prompts (after ``limit``): from metadata where the format has it (Parquet,
        HF folders), else in one streaming pass (text, JSONL, CSV), done once per stream."""
        if self._n is None:
            n = self._cheap_count()
            if n is None:
                n = sum(1 for _ in self)
            object.__setattr__(self, "_n", n if self.limit is None else min(n, self.limit))
        return self._n  # type: ignore[return-value]

    def __len__(self) -> int:
        return self.count()

    def __getitem__(self, key: int | slice) -> Any:
        """One prompt, or a list of the prompts in a range (step 1), read from the file: a sharded
        run slices its shard's prompts this way, so a worker reads only its own rows."""
        if isinstance(key, slice):
            if key.step not in (None, 1):
                raise InputError(f"a prompt stream is sliced with step 1, got step {key.step!r}")
            start, stop = key.start or 0, key.stop
            if start < 0 or (stop is not None and stop < 0):
                start, stop, _ = key.indices(len(self))
            return list(self.iter_range(start, max(stop, start) if stop is not None else None))
        if isinstance(key, bool) or not isinstance(key, int):
            raise TypeError(f"prompt indices must be integers or slices, not {type(key).__name__}")
        index = key + len(self) if key < 0 else key
        for prompt in self.iter_range(index, index + 1) if index >= 0 else ():
            return prompt
        raise IndexError(f"prompt index {key} is out of range for {len(self)} prompts")

    def __getstate__(self) -> dict[str, Any]:  # pickles as its path and options (to Ray actors)
        return {f: getattr(self, f) for f in self.__dataclass_fields__}

    def __setstate__(self, state: dict[str, Any]) -> None:
        for k, v in state.items():
            object.__setattr__(self, k, v)

    def digest(self) -> str:
        """SHA-256 of the prompts themselves (not the file): the same prompts give the same digest
        whatever the format, so a run's fingerprint can name them."""
        h = hashlib.sha256()
        for prompt in self:
            data = prompt.encode("utf-8")
            h.update(len(data).to_bytes(8, "little"))
            h.update(data)
        return h.hexdigest()

    def to_dict(self) -> dict[str, Any]:
        """What a run manifest records about the dataset."""
        return {"path": str(self.path), "format": self.format, "column": self.column,
                "limit": self.limit, "columns": list(self.columns)}

    # -- one reader per format -----------------------------------------------------------------
    def _cheap_count(self) -> int | None:
        if self.format == "parquet":
            pq = _need("pyarrow.parquet", "reading a Parquet file")
            return int(pq.ParquetFile(self.path).metadata.num_rows)
        if self.format == "hf":
            ds = self._hf_dataset()
            if ds is not None:
                return int(ds.num_rows)
        return None

    def _check_prompt(self, value: Any, index: int) -> str:
        if not isinstance(value, str):
            raise InputError(
                f"{self.path}: row {index} of column {self.column!r} is {value!r} "
                f"({type(value).__name__}), not text; every prompt must be a string"
            )
        return value

    def _emit(self, row: dict[str, Any], index: int, only_prompt: bool) -> Any:
        prompt = self._check_prompt(row.get(self.column), index)
        return prompt if only_prompt else row

    def _read_text(self, start: int, stop: int | None, only_prompt: bool) -> Iterator[Any]:
        index = 0
        with self.path.open("rb") as f:
            for lineno, raw in enumerate(f, 1):
                try:
                    line = raw.decode("utf-8")
                except UnicodeDecodeError as err:
                    raise InputError(
                        f"{self.path}:{lineno} is not UTF-8 text (byte 0x{raw[err.start]:02x}); "
                        "save the file as UTF-8"
                    ) from None
                line = line[:-1] if line.endswith("\n") else line
                line = line[:-1] if line.endswith("\r") else line
                if not line.strip() or line.lstrip().startswith("#"):
                    continue
                if index >= start:
                    if stop is not None and index >= stop:
                        return
                    yield line if only_prompt else {"text": line}
                index += 1

    def _read_jsonl(self, start: int, stop: int | None, only_prompt: bool) -> Iterator[Any]:
        index = 0
        with self.path.open("rb") as f:
            for lineno, raw in enumerate(f, 1):
                if not raw.strip():
                    continue
                if index < start:  # parse nothing before the range
                    index += 1
                    continue
                if stop is not None and index >= stop:
                    return
                row = _json_row(raw, self.path, lineno)
                yield self._emit(row, index, only_prompt)
                index += 1

    def _read_csv(self, start: int, stop: int | None, only_prompt: bool) -> Iterator[Any]:
        with _open_csv(self.path) as reader:
            next(reader, None)  # the header
            width = len(self.columns)
            for index, values in enumerate(reader):
                if index < start:
                    continue
                if stop is not None and index >= stop:
                    return
                if len(values) != width:
                    raise InputError(
                        f"{self.path}:{reader.line_num}: row {index} has {len(values)} fields, the "
                        f"header has {width} ({choices(self.columns)})"
                    )
                row = dict(zip(self.columns, values, strict=True))
                yield self._emit(row, index, only_prompt)

    def _read_parquet(self, start: int, stop: int | None, only_prompt: bool) -> Iterator[Any]:
        pq = _need("pyarrow.parquet", "reading a Parquet file")
        pf = pq.ParquetFile(self.path)
        meta = pf.metadata
        cols = [self.column] if only_prompt else None
        index, first, groups = 0, None, []
        for g in range(meta.num_row_groups):  # skip whole row groups outside [start, stop)
            n = meta.row_group(g).num_rows
            if index + n > start and (stop is None or index < stop):
                groups.append(g)
                first = index if first is None else first
            index += n
        if first is None:
            return
        index = first
        for batch in pf.iter_batches(batch_size=_BATCH, row_groups=groups, columns=cols):
            yield from self._from_batch(batch, index, start, stop, only_prompt)
            index += batch.num_rows
            if stop is not None and index >= stop:
                return

    def _from_batch(self, batch: Any, index: int, start: int, stop: int | None,
                    only_prompt: bool) -> Iterator[Any]:
        lo = max(start - index, 0)
        hi = batch.num_rows if stop is None else min(batch.num_rows, stop - index)
        if hi <= lo:
            return
        batch = batch.slice(lo, hi - lo)
        if only_prompt:
            for i, value in enumerate(batch.column(batch.schema.get_field_index(self.column)).to_pylist()):
                yield self._check_prompt(value, index + lo + i)
        else:
            for i, row in enumerate(batch.to_pylist()):
                yield self._emit(row, index + lo + i, False)

    def _hf_dataset(self) -> Any:
        """The ``datasets.Dataset`` of an HF folder, or None when ``datasets`` is not installed."""
        if not any((self.path / f).is_file() for f in ("state.json", "dataset_dict.json")):
            return None  # bare *.arrow files: read with pyarrow
        try:
            import datasets  # noqa: F401
        except ImportError:
            return None
        return _load_from_disk(str(self.path))

    def _read_hf(self, start: int, stop: int | None, only_prompt: bool) -> Iterator[Any]:
        ds = self._hf_dataset()
        if ds is None:  # no `datasets`: read its arrow files with pyarrow
            index = 0
            for batch in _arrow_batches(self.path):
                if index + batch.num_rows > start:
                    yield from self._from_batch(batch, index, start, stop, only_prompt)
                index += batch.num_rows
                if stop is not None and index >= stop:
                    return
            return
        stop = ds.num_rows if stop is None else min(stop, ds.num_rows)
        if start >= stop:
            return
        part = ds.select(range(start, stop))
        if only_prompt:
            part = part.select_columns([self.column])
        index = start
        for batch in part.iter(batch_size=_BATCH):
            n = len(next(iter(batch.values())))
            if only_prompt:
                for i, value in enumerate(batch[self.column]):
                    yield self._check_prompt(value, index + i)
            else:
                keys = list(batch)
                for i in range(n):
                    yield self._emit({k: batch[k][i] for k in keys}, index + i, False)
            index += n


# A read-only sequence (len, indexing, slices, iteration): code that takes a list of prompts takes a
# stream as it is, and a sharded run slices each shard's rows from the file instead of a list.
Sequence.register(PromptStream)


def _json_row(raw: bytes, path: Path, lineno: int) -> dict[str, Any]:
    try:
        value = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as err:
        raise InputError(f"{path}:{lineno} is not valid JSON ({err})") from None
    if isinstance(value, str):
        return {"text": value}
    if not isinstance(value, dict):
        raise InputError(f"{path}:{lineno} holds a JSON {type(value).__name__}; each line must be "
                         "one object ({\"text\": ...}) or one string")
    return value


class _open_csv:
    """A csv reader over a UTF-8 file (tab-separated for ``.tsv``), closed on exit."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __enter__(self) -> Any:
        self.f = self.path.open("r", encoding="utf-8", newline="")
        delimiter = "\t" if self.path.suffix.lower() == ".tsv" else ","
        return csv.reader(self.f, delimiter=delimiter)

    def __exit__(self, *exc: Any) -> None:
        self.f.close()


def _load_from_disk(path: str) -> Any:
    import datasets

    try:
        ds = datasets.load_from_disk(path)
    except FileNotFoundError as err:
        raise InputError(f"{path!r} is not a HF datasets folder written by save_to_disk ({err})") from None
    if isinstance(ds, datasets.DatasetDict):
        raise InputError(
            f"{path!r} holds a DatasetDict with the splits {choices(ds)}; give one split's folder, "
            f"for example {os.path.join(path, next(iter(ds)))!r}"
        )
    return ds


def _arrow_files(folder: Path) -> list[Path]:
    state = folder / "state.json"
    if state.is_file():
        try:
            files = [folder / f["filename"] for f in json.loads(state.read_text("utf-8"))["_data_files"]]
            if files:
                return files
        except (KeyError, TypeError, ValueError):
            pass
    if (folder / "dataset_dict.json").is_file():
        splits = sorted(p.name for p in folder.iterdir() if p.is_dir())
        raise InputError(
            f"{str(folder)!r} holds a DatasetDict with the splits {choices(splits)}; give one split's "
            f"folder, for example {str(folder / splits[0]) if splits else str(folder / 'train')!r}"
        )
    files = sorted(folder.glob("*.arrow"))
    if not files:
        raise InputError(f"folder {str(folder)!r} is not a HF datasets folder (no state.json and no "
                         "*.arrow files); valid: a folder written by Dataset.save_to_disk")
    return files


def _arrow_batches(folder: Path) -> Iterator[Any]:
    pa = _need("pyarrow", "reading a HF datasets folder")
    for path in _arrow_files(folder):
        with pa.memory_map(str(path), "r") as source:
            try:
                reader = pa.ipc.open_stream(source)
            except pa.ArrowInvalid:
                reader = pa.ipc.open_file(source)
                for i in range(reader.num_record_batches):
                    yield reader.get_batch(i)
                continue
            yield from reader


def _arrow_schema(folder: Path) -> Any:
    pa = _need("pyarrow", "reading a HF datasets folder")
    path = _arrow_files(folder)[0]
    with pa.memory_map(str(path), "r") as source:
        try:
            return pa.ipc.open_stream(source).schema
        except pa.ArrowInvalid:
            return pa.ipc.open_file(source).schema


def _columns_of(path: Path, fmt: str) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """(every column, the text columns) of a dataset, read from its header / schema / first row."""
    if fmt == "text":
        return (), ()
    if fmt == "jsonl":
        with path.open("rb") as f:
            for lineno, raw in enumerate(f, 1):
                if raw.strip():
                    row = _json_row(raw, path, lineno)
                    return tuple(row), tuple(k for k, v in row.items() if isinstance(v, str))
        raise InputError(f"dataset {str(path)!r} holds no rows")
    if fmt == "csv":
        with _open_csv(path) as reader:
            header = next(reader, None)
        if not header:
            raise InputError(f"dataset {str(path)!r} has no header row; the first line must name the columns")
        if len(set(header)) != len(header):
            dup = sorted({c for c in header if header.count(c) > 1})
            raise InputError(f"dataset {str(path)!r}: the header names {choices(dup)} more than once")
        return tuple(header), tuple(header)
    if fmt == "parquet":
        pq = _need("pyarrow.parquet", "reading a Parquet file")
        schema = pq.ParquetFile(path).schema_arrow
    else:
        probe = PromptStream(path=path, format="hf", column=None, limit=None, columns=())
        ds = probe._hf_dataset()
        schema = _arrow_schema(path) if ds is None else ds.data.schema
    names = tuple(schema.names)
    return names, tuple(f.name for f in schema if _is_text_type(f.type))


def read_prompts(
    source: str | os.PathLike,
    *,
    column: str | None = None,
    limit: int | None = None,
    format: str | None = None,
) -> PromptStream:
    """Prompts from a dataset file or folder, streamed lazily (see the module docstring).

    Args:
        source: a ``.txt``, ``.jsonl``, ``.csv``/``.tsv`` or ``.parquet`` file, or a HF
            ``datasets`` folder (``Dataset.save_to_disk``).
        column: the column holding the prompts; optional when the rows have one text column
            (a text file has none: leave it out).
        limit: read at most this many prompts (the first ones).
        format: ``"text"``, ``"jsonl"``, ``"csv"``, ``"parquet"`` or ``"hf"`` when the suffix does not say.

    Example::

        >>> import pathlib, tempfile
        >>> path = pathlib.Path(tempfile.mkdtemp()) / "p.txt"
        >>> _ = path.write_text("# a comment\\nThe cat sat.\\n\\nA dog ran.\\n")
        >>> list(read_prompts(path)), read_prompts(path).count()
        (['The cat sat.', 'A dog ran.'], 2)
    """
    if not isinstance(source, (str, os.PathLike)):
        raise ArgumentError(f"dataset source must be a path (str or Path), got {type(source).__name__}")
    if column is not None and (not isinstance(column, str) or not column):
        raise ArgumentError(f"column must be a non-empty str or None, got {column!r}")
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 1):
        raise InputError(f"limit {limit!r} is not valid; give a positive integer (or None for every prompt)")
    path = Path(source).expanduser()
    if not path.exists():
        raise InputError(f"dataset {str(source)!r} does not exist")
    fmt = _format_of(path, format)
    if fmt == "hf" and not path.is_dir():
        raise InputError(f"dataset {str(source)!r} is a file; the 'hf' format is a folder written by "
                         "Dataset.save_to_disk")
    if fmt != "hf" and path.is_dir():
        raise InputError(f"dataset {str(source)!r} is a folder; format {fmt!r} reads a file")
    columns, text_columns = _columns_of(path, fmt)
    if fmt == "text":
        if column is not None:
            raise InputError(f"dataset {str(source)!r} is a text file (one prompt a line) and has no "
                             f"columns; leave out column={column!r}")
        column = "text"
    elif column is None:
        if len(text_columns) != 1:
            what = "no text column" if not text_columns else "several text columns"
            raise InputError(
                f"dataset {str(source)!r} has {what}; name the prompt column (--column): "
                f"text columns: {choices(text_columns) or 'none'}; all columns: {choices(columns)}"
            )
        column = text_columns[0]
    elif column not in columns:
        import difflib

        close = difflib.get_close_matches(column, list(columns), n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise InputError(f"dataset {str(source)!r} has no column {column!r}{hint}; columns: {choices(columns)}")
    elif fmt in ("parquet", "hf") and column not in text_columns:
        raise InputError(f"dataset {str(source)!r}: column {column!r} does not hold text; text columns: "
                         f"{choices(text_columns) or 'none'}")
    return PromptStream(path=path, format=fmt, column=column, limit=limit, columns=columns,
                        text_columns=text_columns)

