"""Prompt sources -> filtered, templated train and held-out prompts. Knows nothing of models or PPO.

A source is a Hugging Face dataset id, a local ``.jsonl`` / ``.json`` / ``.csv`` / ``.tsv`` /
``.parquet`` / ``.txt`` file, or a built-in set ``builtin:NAME`` (``prompts/NAME.jsonl`` in the
package). ``load_prompts`` does, in this order:

1. read the rows and take the text (and reference) by field name, dotted paths allowed;
2. drop rows with an empty text, outside ``min_chars <= len(text) <= max_chars`` or below
   ``min_score`` on ``score_field``; then drop repeated texts (the first copy stays), so the same
   text can never land on both sides of the split;
3. shuffle with ``shuffle_seed`` (None keeps the source's order), cap at ``max_examples``;
4. split: the last ``ceil(eval_fraction * n)`` rows are held out, as ``datasets``'
   ``train_test_split(shuffle=False)`` does (the lab's 8,017 / 2,005), or all of ``eval_source``
   is held out and its texts are removed from the training rows; then the rows of ``extra_sources``
   (read, filtered and shuffled alike) join the training rows, less any held-out or repeated text;
5. apply ``template`` to each text.
"""

from __future__ import annotations

import csv
import json
import math
import random
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from detoxrl.config import DataConfig
from detoxrl.data.text import UTF8, read_text, reading
from detoxrl.errors import DataError
from detoxrl.resources import shared_path

BUILTIN_DIR = Path(__file__).parent / "builtin"
REPEATED_EXTRA = "extra source text already held out or trained on"
FILE_SUFFIXES = (".jsonl", ".json", ".csv", ".tsv", ".parquet", ".txt")


@dataclass(frozen=True)
class Example:
    """One prompt: the templated text given to the policy, and an optional reference (e.g. a summary)."""

    text: str
    reference: str | None = None


@dataclass(frozen=True)
class PromptSet:
    """Train and held-out prompts (never sharing a text), where they came from, and what was dropped."""

    train: list[Example]
    eval: list[Example]
    source: str
    rows_read: int = 0
    dropped: dict[str, int] = field(default_factory=dict)  # reason -> rows dropped (train source)


@dataclass(frozen=True)
class _Row:
    text: str
    reference: str | None


# ---- fields ---------------------------------------------------------------------------------------


def get_field(record: dict[str, Any], dotted: str) -> Any:
    """``record["prompt"]["text"]`` for ``"prompt.text"``; a key holding the dots itself wins."""
    if dotted in record:
        return record[dotted]
    node: Any = record
    for depth, part in enumerate(dotted.split(".")):
        if not isinstance(node, dict) or part not in node:
            where = ".".join(dotted.split(".")[:depth]) or "the record"
            keys = sorted(node) if isinstance(node, dict) else []
            what = f"keys: {', '.join(map(str, keys))}" if keys else f"a {type(node).__name__}, not a mapping"
            raise DataError(f"Field '{dotted}' not found: {where} has no '{part}' ({what}).")
        node = node[part]
    return node


# ---- readers: each yields (line or row number, record); text in its encoding (data/text.py) -----------

Records = Iterator[tuple[int, dict[str, Any]]]


def _read_jsonl(path: Path, encoding: str = UTF8, key: str | None = None) -> Records:
    with reading(path, encoding, key=key) as f:
        for lineno, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as e:
                raise DataError(
                    f"{path}, line {lineno}: not valid JSON ({e.msg}, column {e.colno})."
                ) from None
            if not isinstance(record, dict):
                raise DataError(
                    f"{path}, line {lineno}: expected a JSON object, got {type(record).__name__}."
                )
            yield lineno, record


def _read_json(path: Path, encoding: str = UTF8, key: str | None = None) -> Records:
    try:
        data = json.loads(read_text(path, encoding, key=key))
    except json.JSONDecodeError as e:
        raise DataError(f"{path}, line {e.lineno}: not valid JSON ({e.msg}, column {e.colno}).") from None
    if isinstance(data, dict):  # {"data": [...]}: a single list of records inside an object
        lists = [v for v in data.values() if isinstance(v, list)]
        data = lists[0] if len(lists) == 1 else data
    if not isinstance(data, list):
        raise DataError(f"{path}: expected a JSON list of objects (or an object holding one such list).")
    for i, record in enumerate(data, start=1):
        if not isinstance(record, dict):
            raise DataError(f"{path}, record {i}: expected a JSON object, got {type(record).__name__}.")
        yield i, record


def _read_csv(path: Path, encoding: str = UTF8, key: str | None = None) -> Records:
    with reading(path, encoding, key=key, newline="") as f:
        header = f.readline()
        f.seek(0)
        # The delimiter is read off the header: ',' (Davidson), ';' (ETHOS) or a tab.
        delimiter = "\t" if path.suffix == ".tsv" else max(",;\t", key=header.count)
        reader = csv.DictReader(f, delimiter=delimiter)
        width = len(reader.fieldnames or [])
        try:
            for record in reader:
                if None in record or any(v is None for v in record.values()):
                    found = width + len(record.get(None) or []) - sum(v is None for v in record.values())
                    raise DataError(
                        f"{path}, line {reader.line_num}: expected {width} fields, found {found}."
                    )
                yield reader.line_num, record
        except csv.Error as e:
            raise DataError(f"{path}, line {reader.line_num}: malformed CSV ({e}).") from None


def _read_parquet(path: Path, encoding: str = UTF8, key: str | None = None) -> Records:
    import pyarrow.parquet as pq  # installed with datasets; imported for .parquet files only

    try:
        table = pq.read_table(path)
    except Exception as e:  # pyarrow raises several types for a corrupt file
        raise DataError(f"{path}: not a readable Parquet file ({type(e).__name__}: {e}).") from None
    yield from enumerate(table.to_pylist(), start=1)


def _read_txt(path: Path, encoding: str = UTF8, key: str | None = None) -> Records:
    with reading(path, encoding, key=key) as f:
        for lineno, line in enumerate(f, start=1):
            if line.strip():
                yield lineno, {"text": line.rstrip("\n")}


READERS = {
    ".jsonl": _read_jsonl,
    ".json": _read_json,
    ".csv": _read_csv,
    ".tsv": _read_csv,
    ".parquet": _read_parquet,
    ".txt": _read_txt,
}


def _read_hub(dataset_id: str, split: str) -> Records:
    try:
        import datasets  # 0.5 s to import beside transformers: hub datasets only

        ds = datasets.load_dataset(dataset_id, split=split)
    except Exception as e:  # offline, unknown id, unknown split: all surface as different types
        first_line = str(e).strip().splitlines()[0] if str(e).strip() else ""
        raise DataError(
            f"Could not load dataset '{dataset_id}' (split '{split}') from the Hugging Face hub: "
            f"{type(e).__name__}: {first_line[:300]}. If the hub is unreachable (offline), point "
            f"data.source at a local .jsonl/.csv/.parquet file instead, e.g. "
            f"data.source=../shared/data/dialogsum/train.jsonl, or use a built-in set "
            f"({', '.join(builtin_names())})."
        ) from None
    yield from enumerate(ds, start=1)


def builtin_names() -> list[str]:
    return [f"builtin:{p.stem}" for p in sorted(BUILTIN_DIR.glob("*.jsonl"))]


def read_records(
    source: str, split: str = "train", *, encoding: str = UTF8, key: str | None = None
) -> Records:
    """``(line or row number, record)`` for every row of a source; raises DataError for a bad one. Local
    text files are read in ``encoding`` (UTF-8: with or without a byte-order mark); ``key``, the config key
    that sets it, is named in the line a file that is not in it gets."""
    if source.startswith("shared:"):
        source = str(shared_path(source, "data.source"))
    if source.startswith("builtin:"):
        path = BUILTIN_DIR / f"{source.removeprefix('builtin:')}.jsonl"
        if not path.is_file():
            raise DataError(
                f"Unknown built-in prompt set '{source}'. Available: {', '.join(builtin_names())}."
            )
        return _read_jsonl(path)
    path = Path(source).expanduser()
    if path.suffix.lower() in READERS or path.exists():
        if not path.is_file():
            raise DataError(
                f"Data file '{path}' does not exist (data.source; relative paths start at {Path.cwd()})."
            )
        if path.suffix.lower() not in READERS:
            raise DataError(
                f"Data file '{path}' has an unsupported type; use one of {', '.join(FILE_SUFFIXES)}."
            )
        return READERS[path.suffix.lower()](path, encoding, key)
    return _read_hub(source, split)


def read_texts(
    source: str | Path,
    field: str = "prompt.text",
    reference_field: str | None = None,
    limit: int | None = None,
) -> tuple[list[str], list[str] | None]:
    """The first ``limit`` texts (and references) of a file in file order: a field (dotted path, e.g.
    ``prompt.text``) of a .jsonl/.json/.csv/.parquet file, or each line of a .txt file."""
    texts: list[str] = []
    refs: list[str] = []
    for _, record in read_records(str(source)):
        if limit is not None and len(texts) >= limit:
            break
        texts.append(str(get_field(record, "text" if str(source).endswith(".txt") else field)))
        if reference_field is not None:
            refs.append(str(get_field(record, reference_field)))
    return texts, (refs if reference_field is not None else None)


# ---- filtering, splitting ----------------------------------------------------------------------------


def _drop_reason(text: str, score: Any, config: DataConfig) -> str | None:
    """The name of the filter that drops this row, or None to keep it."""
    if not text.strip():
        return "empty text"
    if len(text) < config.min_chars:
        return f"shorter than min_chars={config.min_chars}"
    if config.max_chars is not None and len(text) > config.max_chars:
        return f"longer than max_chars={config.max_chars}"
    if config.score_field and config.min_score is not None:
        value = _number(score, config.score_field)
        if value is None or value < config.min_score:
            return f"{config.score_field} missing or below min_score={config.min_score}"
    return None


def _number(value: Any, name: str) -> float | None:
    if value is None or value == "":
        return None
    try:
        return float(value)
    except (TypeError, ValueError):
        raise DataError(f"Field '{name}' must be a number to filter on, got {value!r}.") from None


def _rows(
    records: Iterable[tuple[int, dict[str, Any]]], config: DataConfig, source: str
) -> Iterator[_Row | str]:
    """Each record as a _Row, or as the name of the filter that dropped it."""
    for number, record in records:
        try:
            text = get_field(record, config.text_field)
            reference = get_field(record, config.reference_field) if config.reference_field else None
            score = get_field(record, config.score_field) if config.score_field else None
            text = "" if text is None else str(text)
            reason = _drop_reason(text, score, config)
        except DataError as e:
            raise DataError(f"{source}, row {number}: {e}") from None
        yield reason if reason is not None else _Row(text, None if reference is None else str(reference))


def _collect(source: str, split: str, config: DataConfig) -> tuple[list[_Row], int, dict[str, int]]:
    """Distinct kept rows in source order, the number of rows read, and drops by reason."""
    kept: list[_Row] = []
    seen: set[str] = set()
    dropped: dict[str, int] = {}
    read = 0
    records = read_records(source, split, encoding=config.encoding, key="data.encoding")
    for row in _rows(records, config, source):
        read += 1
        reason = row if isinstance(row, str) else ("duplicate text" if row.text in seen else None)
        if reason is not None:
            dropped[reason] = dropped.get(reason, 0) + 1
            continue
        assert isinstance(row, _Row)
        seen.add(row.text)
        kept.append(row)
    if read == 0:
        raise DataError(f"Dataset '{source}' has no rows.")
    if not kept:
        details = "; ".join(f"{n} {reason}" for reason, n in dropped.items())
        raise DataError(
            f"No prompts left in '{source}' after filtering: {read} rows read, all dropped ({details}). "
            f"Loosen data.min_chars / data.max_chars / data.min_score, or check data.text_field."
        )
    return kept, read, dropped


def split_count(n: int, eval_fraction: float) -> int:
    """Held-out size as ``datasets.train_test_split(test_size=f)`` computes it: ceil(f * n), f in [0, 1)
    (DataConfig checks it)."""
    return min(n - 1, math.ceil(eval_fraction * n)) if eval_fraction > 0 else 0


def _example(row: _Row, template: str) -> Example:
    return Example(template.replace("{text}", row.text), row.reference)


def _extra_rows(config: DataConfig, taken: set[str], dropped: dict[str, int]) -> list[_Row]:
    """Step 4b: the rows of ``extra_sources`` (read, filtered and shuffled as the main source) whose text is
    neither held out nor already a training prompt, in source order."""
    out: list[_Row] = []
    for source in config.extra_sources:
        rows, _, _ = _collect(source, config.split, config)
        if config.shuffle_seed is not None:
            random.Random(config.shuffle_seed).shuffle(rows)
        for row in rows:
            if row.text in taken:
                dropped[REPEATED_EXTRA] = dropped.get(REPEATED_EXTRA, 0) + 1
                continue
            taken.add(row.text)
            out.append(row)
    return out


def load_prompts(config: DataConfig) -> PromptSet:
    """Read, filter, dedupe, shuffle, split and template the prompts of ``config.source``."""
    rows, read, dropped = _collect(config.source, config.split, config)
    eval_rows: list[_Row] = []
    if config.eval_source is not None:
        eval_rows, _, _ = _collect(config.eval_source, config.eval_split or config.split, config)
        held = {r.text for r in eval_rows}
        overlap = sum(r.text in held for r in rows)
        rows = [r for r in rows if r.text not in held]
        if overlap:
            dropped["also in eval_source"] = overlap
    if config.shuffle_seed is not None:
        random.Random(config.shuffle_seed).shuffle(rows)
    if config.max_examples is not None:
        rows = rows[: config.max_examples]
    if config.eval_source is None:
        n_eval = split_count(len(rows), config.eval_fraction)
        rows, eval_rows = rows[: len(rows) - n_eval], rows[len(rows) - n_eval :]
    rows += _extra_rows(config, {r.text for r in rows} | {r.text for r in eval_rows}, dropped)
    if not rows:
        raise DataError(f"No training prompts left from '{config.source}' after the held-out split.")
    train = [_example(r, config.template) for r in rows]
    held_out = [_example(r, config.template) for r in eval_rows]
    return PromptSet(train, held_out, config.source, read, dropped)
