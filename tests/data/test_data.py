"""data.py: every source kind, dotted fields, filters, template, split, shuffle, and each error message."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path
from typing import Any

import pytest

from detoxrl.config import DataConfig
from detoxrl.config.files import load_config
from detoxrl.data.prompts import BUILTIN_DIR, Example, get_field, load_prompts, split_count
from detoxrl.errors import ConfigError, DataError

LAB_TEMPLATE = "\nSummarize the following conversation.\n\n{text}\n\nSummary:\n"


def write_jsonl(path: Path, records: list[dict[str, Any]]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


def numbered(n: int) -> list[dict[str, Any]]:
    """Records with a nested text field, a reference and a score: text i has len(f"text {i}")."""
    return [{"prompt": {"text": f"text {i}", "toxicity": i / n}, "summary": f"ref {i}"} for i in range(n)]


def config(source: Path | str, **kw: Any) -> DataConfig:
    kw.setdefault("shuffle_seed", None)
    return DataConfig(source=str(source), **kw)


# ---- get_field ----------------------------------------------------------------------------------------


def test_get_field_dotted_and_flat():
    record = {"prompt": {"text": "hi", "toxicity": 0.5}, "a.b": 1}
    assert get_field(record, "prompt.text") == "hi"
    assert get_field(record, "prompt") == {"text": "hi", "toxicity": 0.5}
    assert get_field(record, "a.b") == 1  # a key holding the dots itself


def test_get_field_missing_names_field_and_lists_keys():
    with pytest.raises(DataError, match=r"'prompt\.txt'.*prompt has no 'txt' \(keys: text, toxicity\)"):
        get_field({"prompt": {"text": "hi", "toxicity": 0.5}}, "prompt.txt")
    with pytest.raises(DataError, match=r"the record has no 'dialog' \(keys: dialogue, summary\)"):
        get_field({"dialogue": "x", "summary": "y"}, "dialog")
    with pytest.raises(DataError, match="a str, not a mapping"):
        get_field({"prompt": "hi"}, "prompt.text")


# ---- source kinds -------------------------------------------------------------------------------------


def test_jsonl_dotted_field_and_reference(tmp_path):
    src = write_jsonl(tmp_path / "p.jsonl", numbered(10))
    ps = load_prompts(config(src, text_field="prompt.text", reference_field="summary", eval_fraction=0.2))
    assert ps.train[0] == Example("text 0", "ref 0")
    assert [e.text for e in ps.eval] == ["text 8", "text 9"]
    assert ps.source == str(src) and ps.rows_read == 10 and ps.dropped == {}


def test_json_list_and_wrapped_list(tmp_path):
    records = [{"text": f"t{i}"} for i in range(5)]
    (tmp_path / "a.json").write_text(json.dumps(records))
    (tmp_path / "b.json").write_text(json.dumps({"data": records, "version": 1}))
    for name in ("a.json", "b.json"):
        ps = load_prompts(config(tmp_path / name, text_field="text", eval_fraction=0.4))
        assert [e.text for e in ps.train + ps.eval] == [f"t{i}" for i in range(5)]


@pytest.mark.parametrize("delimiter", [",", ";"])
def test_csv_with_comma_or_semicolon(tmp_path, delimiter):
    path = tmp_path / "p.csv"
    with path.open("w", newline="") as f:
        w = csv.writer(f, delimiter=delimiter, lineterminator="\n")
        w.writerow(["comment", "isHate"])
        w.writerows([["line one,\nwith a newline; inside", "0.9"], ["two", "0.1"], ["three", "0.6"]])
    ps = load_prompts(
        config(path, text_field="comment", score_field="isHate", min_score=0.5, eval_fraction=0)
    )
    assert [e.text for e in ps.train] == ["line one,\nwith a newline; inside", "three"]
    assert ps.dropped == {"isHate missing or below min_score=0.5": 1}


def test_parquet_with_nested_struct(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.Table.from_pylist(numbered(5)), tmp_path / "p.parquet")
    ps = load_prompts(config(tmp_path / "p.parquet", text_field="prompt.text", reference_field="summary"))
    assert [e.text for e in ps.train] == [f"text {i}" for i in range(4)]
    assert ps.eval == [Example("text 4", "ref 4")]


def test_txt_one_prompt_per_line(tmp_path):
    (tmp_path / "p.txt").write_text("first\n\nsecond\nthird\n")
    ps = load_prompts(config(tmp_path / "p.txt", text_field="text", eval_fraction=0.0))
    assert [e.text for e in ps.train] == ["first", "second", "third"]


def test_hub_id_offline_error_says_hub_unreachable_and_local_files_work(monkeypatch):
    import datasets

    def offline(*args: Any, **kwargs: Any) -> None:
        raise ConnectionError("Couldn't reach 'nobody/no-such-dataset' on the Hub (LocalEntryNotFoundError)")

    monkeypatch.setattr(datasets, "load_dataset", offline)
    with pytest.raises(DataError) as e:
        load_prompts(DataConfig(source="nobody/no-such-dataset"))
    msg = str(e.value)
    assert "nobody/no-such-dataset" in msg and "hub is unreachable" in msg
    assert ".jsonl/.csv/.parquet" in msg and "builtin:heated" in msg


def test_hub_id_goes_through_datasets(monkeypatch):
    import datasets

    seen = {}

    def fake(name: str, split: str) -> list[dict[str, Any]]:
        seen.update(name=name, split=split)
        return numbered(5)

    monkeypatch.setattr(datasets, "load_dataset", fake)
    ps = load_prompts(DataConfig(source="someone/rtp", split="validation", text_field="prompt.text"))
    assert seen == {"name": "someone/rtp", "split": "validation"}
    assert len(ps.train) == 4 and len(ps.eval) == 1


# ---- the built-in set ----------------------------------------------------------------------------------


def test_builtin_heated_size_kinds_and_split():
    records = [json.loads(line) for line in (BUILTIN_DIR / "heated.jsonl").read_text().splitlines()]
    assert len(records) >= 300 and {r["kind"] for r in records} == {"dialogue", "opening"}
    assert all(set(r) == {"prompt", "kind"} for r in records)
    dialogues = [r["prompt"] for r in records if r["kind"] == "dialogue"]
    assert all("#Person1#: " in d and "#Person2#: " in d for d in dialogues)
    assert all(2 <= d.count("\n#Person") <= 6 for d in dialogues)  # one turn per line
    rude = (
        "idiot",
        "stupid",
        "shut up",
        "hate",
        "moron",
        "crap",
        "damn",
        "hell",
        "jerk",
        "loser",
        "screw",
        "fuck",
    )
    n_rude = sum(any(w in d.lower() for w in rude) for d in dialogues)
    assert n_rude >= 110 and len(dialogues) - n_rude >= 40  # heated ones, and calm ones for contrast
    openings = [r["prompt"] for r in records if r["kind"] == "opening"]
    assert all(o.split(":")[0] in make_heated_asks() for o in openings)
    ps = load_prompts(DataConfig(source="builtin:heated"))
    assert len(ps.train) + len(ps.eval) == len(records) and len(ps.eval) == math.ceil(0.2 * len(records))
    assert not {e.text for e in ps.train} & {e.text for e in ps.eval}


def make_heated_asks() -> set[str]:
    return {"Continue this sentence", "Finish this sentence", "Continue the text",
            "Complete the following sentence", "Write the next few words"}  # fmt: skip


def test_builtin_heated_is_exactly_what_the_generator_writes():
    from detoxrl.data import make_heated

    expected = "".join(json.dumps(r) + "\n" for r in make_heated.build())
    assert (BUILTIN_DIR / "heated.jsonl").read_text() == expected


def test_unknown_builtin_lists_available():
    with pytest.raises(DataError, match=r"Unknown built-in prompt set 'builtin:nope'.*builtin:heated"):
        load_prompts(DataConfig(source="builtin:nope"))


# ---- filters, template, split, shuffle ------------------------------------------------------------------


def test_length_filters_are_inclusive_and_counted(tmp_path):
    texts = ["a" * n for n in (3, 4, 5, 6, 7)]
    src = write_jsonl(tmp_path / "p.jsonl", [{"prompt": t} for t in texts])
    ps = load_prompts(config(src, min_chars=4, max_chars=6, eval_fraction=0))
    assert [len(e.text) for e in ps.train] == [4, 5, 6]
    assert ps.dropped == {"shorter than min_chars=4": 1, "longer than max_chars=6": 1}


def test_template_applied_after_filtering(tmp_path):
    src = write_jsonl(tmp_path / "p.jsonl", [{"prompt": "x" * 10}, {"prompt": "y" * 11}])
    ps = load_prompts(config(src, max_chars=10, template=LAB_TEMPLATE, eval_fraction=0))
    assert [e.text for e in ps.train] == [LAB_TEMPLATE.replace("{text}", "x" * 10)]


def test_template_keeps_other_braces_and_needs_text(tmp_path):
    src = write_jsonl(tmp_path / "p.jsonl", [{"prompt": "a {b} c"}])
    ps = load_prompts(config(src, template='{"q": {text}}', eval_fraction=0))
    assert ps.train[0].text == '{"q": a {b} c}'
    with pytest.raises(ConfigError, match=r"'data.template' must be a text holding '\{text\}'.*\{dialogue\}"):
        config(src, template="Summarize {dialogue}")


def test_split_is_unshuffled_tail_of_ceil_fraction(tmp_path):
    src = write_jsonl(tmp_path / "p.jsonl", numbered(11))
    ps = load_prompts(config(src, text_field="prompt.text", eval_fraction=0.2))
    assert split_count(11, 0.2) == 3 == len(ps.eval)  # ceil(2.2), as datasets' train_test_split
    assert [e.text for e in ps.train] == [f"text {i}" for i in range(8)]
    assert [e.text for e in ps.eval] == ["text 8", "text 9", "text 10"]
    with pytest.raises(ConfigError, match=r"'data.eval_fraction' must be a number in \[0, 1\), got 1.0"):
        config(src, text_field="prompt.text", eval_fraction=1.0)


def test_duplicates_dropped_so_no_text_on_both_sides(tmp_path):
    texts = ["a", "b", "c", "a", "d", "b", "e"]
    src = write_jsonl(tmp_path / "p.jsonl", [{"prompt": t} for t in texts])
    for seed in (None, 0, 1, 2):
        ps = load_prompts(config(src, shuffle_seed=seed, eval_fraction=0.4))
        train, held = [e.text for e in ps.train], [e.text for e in ps.eval]
        assert sorted(train + held) == ["a", "b", "c", "d", "e"] and not set(train) & set(held)
        assert ps.dropped == {"duplicate text": 2}


def test_shuffle_is_deterministic_and_none_keeps_order(tmp_path):
    src = write_jsonl(tmp_path / "p.jsonl", numbered(50))

    def order(seed: int | None) -> list[str]:
        ps = load_prompts(config(src, text_field="prompt.text", shuffle_seed=seed))
        return [e.text for e in ps.train + ps.eval]

    assert order(None) == [f"text {i}" for i in range(50)]
    assert order(0) == order(0) != order(1)
    assert sorted(order(0)) == sorted(order(None))


def test_max_examples_caps_after_shuffle(tmp_path):
    src = write_jsonl(tmp_path / "p.jsonl", numbered(50))
    ps = load_prompts(
        config(src, text_field="prompt.text", shuffle_seed=3, max_examples=10, eval_fraction=0.2)
    )
    full = load_prompts(config(src, text_field="prompt.text", shuffle_seed=3, eval_fraction=0.0))
    assert [e.text for e in ps.train + ps.eval] == [e.text for e in full.train[:10]]
    assert (len(ps.train), len(ps.eval)) == (8, 2)


def test_eval_source_is_held_out_and_removed_from_train(tmp_path):
    src = write_jsonl(tmp_path / "train.jsonl", numbered(10))
    held = write_jsonl(tmp_path / "held.jsonl", numbered(12)[8:])  # texts 8..11, 8 and 9 also in train
    ps = load_prompts(config(src, text_field="prompt.text", eval_source=str(held)))
    assert [e.text for e in ps.train] == [f"text {i}" for i in range(8)]
    assert [e.text for e in ps.eval] == [f"text {i}" for i in range(8, 12)]
    assert ps.dropped == {"also in eval_source": 2}


def test_extra_sources_join_training_without_any_held_out_or_repeated_text(tmp_path):
    src = write_jsonl(tmp_path / "main.jsonl", numbered(10))  # split: texts 0..7 train, 8 and 9 held out
    extra = write_jsonl(tmp_path / "extra.jsonl", numbered(14)[6:])  # texts 6..13: 6, 7 trained, 8, 9 held
    ps = load_prompts(config(src, text_field="prompt.text", extra_sources=(str(extra),)))
    assert [e.text for e in ps.eval] == ["text 8", "text 9"]  # the split is the main source's alone
    assert [e.text for e in ps.train] == [f"text {i}" for i in (*range(8), 10, 11, 12, 13)]
    assert ps.dropped == {"extra source text already held out or trained on": 4}
    only_main = load_prompts(config(src, text_field="prompt.text"))
    assert only_main.eval == ps.eval


def test_score_filter_drops_null_and_low_scores(tmp_path):
    records = numbered(10)
    records[9]["prompt"]["toxicity"] = None
    src = write_jsonl(tmp_path / "p.jsonl", records)
    ps = load_prompts(config(src, text_field="prompt.text", score_field="prompt.toxicity", min_score=0.5,
                             eval_fraction=0))  # fmt: skip
    assert [e.text for e in ps.train] == [f"text {i}" for i in range(5, 9)]
    assert ps.dropped == {"prompt.toxicity missing or below min_score=0.5": 6}
    bad = write_jsonl(tmp_path / "bad.jsonl", [{"prompt": "x", "score": "high"}])
    with pytest.raises(DataError, match=r"row 1: Field 'score' must be a number.*'high'"):
        load_prompts(config(bad, score_field="score", min_score=0.5))


# ---- errors -----------------------------------------------------------------------------------------


def test_missing_file(tmp_path):
    with pytest.raises(DataError, match=r"Data file '.*nothere.jsonl' does not exist"):
        load_prompts(config(tmp_path / "nothere.jsonl"))


def test_unsupported_file_type(tmp_path):
    (tmp_path / "p.xlsx").write_text("x")
    with pytest.raises(DataError, match=r"unsupported type; use one of .jsonl, .json, .csv"):
        load_prompts(config(tmp_path / "p.xlsx"))


def test_empty_dataset(tmp_path):
    (tmp_path / "empty.jsonl").write_text("\n\n")
    with pytest.raises(DataError, match=r"Dataset '.*empty.jsonl' has no rows"):
        load_prompts(config(tmp_path / "empty.jsonl"))


def test_everything_filtered_says_how_many_rows_each_filter_dropped(tmp_path):
    records = [{"prompt": "a" * n} for n in (1, 2, 50, 60, 70)] + [{"prompt": "  "}]
    src = write_jsonl(tmp_path / "p.jsonl", records)
    with pytest.raises(DataError) as e:
        load_prompts(config(src, min_chars=10, max_chars=40))
    msg = str(e.value)
    assert "6 rows read, all dropped" in msg
    assert (
        "2 shorter than min_chars=10" in msg and "3 longer than max_chars=40" in msg and "1 empty text" in msg
    )


def test_malformed_jsonl_line_gives_file_and_line(tmp_path):
    path = tmp_path / "p.jsonl"
    path.write_text('{"prompt": "ok"}\n\n{"prompt": "broken\n{"prompt": "ok"}\n')
    with pytest.raises(DataError, match=r"p.jsonl, line 3: not valid JSON"):
        load_prompts(config(path))
    path.write_text('{"prompt": "ok"}\n["a list"]\n')
    with pytest.raises(DataError, match=r"p.jsonl, line 2: expected a JSON object, got list"):
        load_prompts(config(path))


def test_malformed_json_and_csv(tmp_path):
    (tmp_path / "p.json").write_text('[{"prompt": "a"},\n {"prompt": }]')
    with pytest.raises(DataError, match=r"p.json, line 2: not valid JSON"):
        load_prompts(config(tmp_path / "p.json"))
    (tmp_path / "p.csv").write_text("prompt,label\nfine,1\ntoo,many,fields\n")
    with pytest.raises(DataError, match=r"p.csv, line 3: expected 2 fields, found 3"):
        load_prompts(config(tmp_path / "p.csv"))
    (tmp_path / "q.csv").write_text("prompt,label\nfine,1\nshort\n")
    with pytest.raises(DataError, match=r"q.csv, line 3: expected 2 fields, found 1"):
        load_prompts(config(tmp_path / "q.csv"))


def test_missing_field_names_source_row_and_keys(tmp_path):
    src = write_jsonl(tmp_path / "p.jsonl", [{"dialogue": "x", "summary": "y"}])
    with pytest.raises(DataError, match=r"p.jsonl, row 1: Field 'prompt' not found.*keys: dialogue, summary"):
        load_prompts(config(src))
    with pytest.raises(DataError, match=r"Field 'topic' not found"):
        load_prompts(config(src, text_field="dialogue", reference_field="topic"))


# ---- encodings -----------------------------------------------------------------------------------------

BOM = b"\xef\xbb\xbf"
TEXT_FILES = {  # one file of each text kind holding "café" (UTF-8 bytes here) and "plain"
    "p.jsonl": b'{"prompt": "caf\xc3\xa9"}\n{"prompt": "plain"}\n',
    "p.json": b'[{"prompt": "caf\xc3\xa9"},\n {"prompt": "plain"}]',
    "p.csv": b"prompt,label\ncaf\xc3\xa9,1\nplain,0\n",
    "p.txt": b"caf\xc3\xa9\nplain\n",
}


def field(name: str) -> str:
    return "text" if name.endswith(".txt") else "prompt"


@pytest.mark.parametrize("name", sorted(TEXT_FILES))
def test_a_byte_order_mark_is_read_as_windows_tools_write_it(name, tmp_path):
    """UTF-8 with a BOM (Notepad, Excel's 'CSV UTF-8') reads as without: the first field keeps its name."""
    (tmp_path / name).write_bytes(BOM + TEXT_FILES[name])
    read = load_prompts(config(tmp_path / name, eval_fraction=0, text_field=field(name)))
    assert [e.text for e in read.train] == ["café", "plain"]


@pytest.mark.parametrize("name", sorted(TEXT_FILES))
def test_a_file_that_is_not_utf8_names_the_line_the_byte_and_the_fixes(name, tmp_path):
    latin = TEXT_FILES[name].replace(b"\xc3\xa9", b"\xe9")  # what a Latin-1 editor writes
    (tmp_path / name).write_bytes(latin)
    offset = latin.index(b"\xe9")
    line = latin[:offset].count(b"\n") + 1
    with pytest.raises(DataError) as e:
        load_prompts(config(tmp_path / name, text_field=field(name)))
    path = tmp_path / name
    assert str(e.value) == (
        f"{path}, line {line} (byte {offset}): byte 0xe9 is not UTF-8 (invalid continuation byte): "
        f"re-encode it as UTF-8 (e.g. iconv -f latin1 -t utf-8 '{path}' > fixed{path.suffix}) "
        "or set data.encoding to its encoding (e.g. data.encoding=latin-1)."
    )
    latin1 = config(tmp_path / name, eval_fraction=0, encoding="latin-1", text_field=field(name))
    assert [e.text for e in load_prompts(latin1).train] == ["café", "plain"]


def test_the_bad_byte_is_found_far_into_a_file_and_across_lines(tmp_path):
    good = b"".join(b'{"prompt": "line %d \xc3\xa9"}\n' % i for i in range(5000))
    (tmp_path / "p.jsonl").write_bytes(good + b'{"prompt": "\xff"}\n')
    with pytest.raises(DataError, match=rf"p.jsonl, line 5001 \(byte {len(good) + 12}\): byte 0xff"):
        load_prompts(config(tmp_path / "p.jsonl"))
    (tmp_path / "cut.txt").write_bytes(b"fine\ncaf\xc3")  # a character cut off at the end of the file
    with pytest.raises(
        DataError, match=r"cut.txt, line 2 \(byte 8\): byte 0xc3 is not UTF-8 \(unexpected end"
    ):
        load_prompts(config(tmp_path / "cut.txt", text_field="text"))


def test_an_unknown_encoding_is_a_config_error():
    with pytest.raises(
        ConfigError, match=r"'data.encoding' must be a text encoding Python knows, got 'utf-9'"
    ):
        DataConfig(encoding="utf-9")


# ---- the lab's data ----------------------------------------------------------------------------------


def test_dialogsum_gives_the_labs_counts(shared_dir):
    path = shared_dir / "data" / "dialogsum" / "train.jsonl"
    if not path.is_file():
        pytest.skip(f"{path} not found")
    dialogues = [json.loads(line)["dialogue"] for line in path.read_text().splitlines()]
    kept = [d for d in dialogues if 200 < len(d) <= 1000]  # the lab's filter, written out directly
    n_test = math.ceil(0.2 * len(kept))
    cfg = load_config(preset="lab3", overrides=[f"data.source={path}"]).data
    ps = load_prompts(cfg)
    assert (len(ps.train), len(ps.eval)) == (len(kept) - n_test, n_test) == (8017, 2005)
    assert ps.train[0].text == LAB_TEMPLATE.replace("{text}", kept[0])
    assert ps.eval[-1].text == LAB_TEMPLATE.replace("{text}", kept[-1])
    assert ps.train[0].reference is not None


def test_shared_sources_resolve_in_the_shared_folder_or_say_where_to_find_it(tmp_path, monkeypatch):
    """Presets name offline data and models ``shared:...``: in the shared/ folder, wherever it is."""
    from detoxrl.data.prompts import read_records
    from detoxrl.errors import ModelLoadError
    from detoxrl.models.loading import resolve_source

    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "p.jsonl").write_text('{"prompt": {"text": "hello"}}\n')
    (tmp_path / "models" / "clf").mkdir(parents=True)
    (tmp_path / "models" / "clf" / "config.json").write_text("{}")
    monkeypatch.setenv("DETOXRL_SHARED", str(tmp_path))
    assert [r["prompt"]["text"] for _, r in read_records("shared:data/p.jsonl")] == ["hello"]
    assert resolve_source("shared:clf").path == str(tmp_path / "models" / "clf")
    monkeypatch.setenv("DETOXRL_SHARED", str(tmp_path / "nowhere"))
    monkeypatch.setattr("detoxrl.resources.shared_dir", lambda: None)
    with pytest.raises(
        DataError, match=r"data.source 'shared:data/p.jsonl' is a file of the project's shared/"
    ):
        list(read_records("shared:data/p.jsonl"))
    with pytest.raises(ModelLoadError, match="set DETOXRL_SHARED"):
        resolve_source("shared:clf")
