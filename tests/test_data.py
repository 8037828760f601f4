"""Tests for curator.io.data: loaders for every format, defaults, validation messages, truncation."""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any

import pandas as pd
import pytest

from curator.io.data import Candidate, EvalItem, content_hash, detect_kind, load_candidates, load_eval, read_rows
from curator.model.encoding import IGNORE_INDEX, encode, render
from curator.errors import CuratorError, InputError
from curator.io.data import load_rows
from curator.model.models import build_tiny_tokenizer

CHAT = [
    {"role": "system", "content": "You are terse."},
    {"role": "user", "content": "What is 2 + 2?"},
]

ROWS: list[dict[str, Any]] = [
    {"id": "c1", "prompt": "What is 2 + 2?", "response": "4", "strategy": "direct", "task": "math", "group": "p1"},
    {"id": "c2", "prompt": "What is 2 + 2?", "response": "2 plus 2 makes 4. So 4.", "strategy": "cot", "task": "math", "group": "p1"},
    {"id": "c3", "prompt": "Name a colour, please", "response": "Blue, \"sky\" blue", "strategy": "direct", "task": "art", "group": "p2"},
    # no id and no group: both default to content hashes; no task
    {"prompt": "Say hi", "response": "hi there", "strategy": "direct"},
]


def expected_candidates() -> list[Candidate]:
    return [
        Candidate("c1", "What is 2 + 2?", "4", "direct", "math", "p1"),
        Candidate("c2", "What is 2 + 2?", "2 plus 2 makes 4. So 4.", "cot", "math", "p1"),
        Candidate("c3", "Name a colour, please", "Blue, \"sky\" blue", "direct", "art", "p2"),
        Candidate(content_hash("Say hi", "hi there", "direct"), "Say hi", "hi there", "direct", None, "g-" + content_hash("Say hi")),
    ]


# --------------------------------------------------------------------------- writers


def write_jsonl(path: Path, rows: list[dict[str, Any]]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def write_csv(path: Path, rows: list[dict[str, Any]]) -> Path:
    cols = ["id", "prompt", "response", "strategy", "task", "group"]
    with path.open("w", newline="", encoding="utf-8") as fh:
        w = csv.DictWriter(fh, fieldnames=cols)
        w.writeheader()
        for r in rows:
            w.writerow({c: ("" if r.get(c) is None else (json.dumps(r[c]) if isinstance(r[c], list) else r[c])) for c in cols})
    return path


def write_parquet(path: Path, rows: list[dict[str, Any]]) -> Path:
    pd.DataFrame(rows).to_parquet(path, index=False)
    return path


def write_hf_dir(path: Path, rows: list[dict[str, Any]]) -> Path:
    import datasets

    datasets.Dataset.from_list(rows).save_to_disk(str(path))
    return path


def err(excinfo: pytest.ExceptionInfo[InputError]) -> str:
    return str(excinfo.value)


# --------------------------------------------------------------------------- formats


def test_jsonl_candidates_exact(tmp_path: Path) -> None:
    assert load_candidates(write_jsonl(tmp_path / "c.jsonl", ROWS)) == expected_candidates()


@pytest.mark.parametrize("fmt", ["json-list", "json-data", "csv", "parquet", "hf-dir"])
def test_every_format_gives_identical_candidates(tmp_path: Path, fmt: str) -> None:
    if fmt == "json-list":
        p = tmp_path / "c.json"
        p.write_text(json.dumps(ROWS))
    elif fmt == "json-data":
        p = tmp_path / "c.json"
        p.write_text(json.dumps({"data": ROWS}))
    elif fmt == "csv":
        p = write_csv(tmp_path / "c.csv", ROWS)
    elif fmt == "parquet":
        p = write_parquet(tmp_path / "c.parquet", ROWS)
    else:
        p = write_hf_dir(tmp_path / "c_ds", ROWS)
    assert load_candidates(p) == load_candidates(write_jsonl(tmp_path / "ref.jsonl", ROWS)) == expected_candidates()


CHAT_ROWS = [
    {"prompt": CHAT, "response": "4", "strategy": "direct", "task": "math"},
    {"prompt": CHAT, "response": "Two and two is 4.", "strategy": "cot", "task": "math"},
]


@pytest.mark.parametrize("fmt", ["jsonl", "parquet", "csv", "hf-dir"])
def test_chat_prompt_loads_identically(tmp_path: Path, fmt: str) -> None:
    writer = {"jsonl": write_jsonl, "parquet": write_parquet, "csv": write_csv, "hf-dir": write_hf_dir}[fmt]
    p = writer(tmp_path / ("c_ds" if fmt == "hf-dir" else f"c.{fmt}"), CHAT_ROWS)
    got = load_candidates(p)
    assert [c.prompt for c in got] == [CHAT, CHAT]
    assert all(isinstance(c.prompt, list) for c in got)
    # same prompt -> same default group, derived from the message list
    assert got[0].group == got[1].group == "g-" + content_hash(CHAT)
    assert got[0].id == content_hash(CHAT, "4", "direct")
    assert got == load_candidates(write_jsonl(tmp_path / "ref.jsonl", CHAT_ROWS))


def test_chat_messages_keep_only_role_and_content(tmp_path: Path) -> None:
    msgs = [{"role": "user", "content": "hi", "name": "bob"}]
    [c] = load_candidates(write_jsonl(tmp_path / "c.jsonl", [{"prompt": msgs, "response": "yo", "strategy": "s"}]))
    assert c.prompt == [{"role": "user", "content": "hi"}]


# --------------------------------------------------------------------------- default ids and groups


def test_default_id_is_stable_content_hash(tmp_path: Path) -> None:
    rows = [
        {"prompt": "P", "response": "R", "strategy": "direct"},
        {"prompt": "P", "response": "R", "strategy": "cot"},
    ]
    a = load_candidates(write_jsonl(tmp_path / "a.jsonl", rows))
    b = load_candidates(write_jsonl(tmp_path / "b.jsonl", rows))
    assert [c.id for c in a] == [c.id for c in b]
    assert a[0].id == content_hash("P", "R", "direct")
    assert a[1].id == content_hash("P", "R", "cot")
    assert a[0].id != a[1].id
    assert len(a[0].id) == 16 and all(ch in "0123456789abcdef" for ch in a[0].id)


def test_default_group_shared_by_same_prompt(tmp_path: Path) -> None:
    rows = [
        {"prompt": "P", "response": "R1", "strategy": "direct"},
        {"prompt": "P", "response": "R2", "strategy": "cot"},
        {"prompt": "Q", "response": "R1", "strategy": "direct"},
    ]
    c = load_candidates(write_jsonl(tmp_path / "c.jsonl", rows))
    assert c[0].group == c[1].group == "g-" + content_hash("P")
    assert c[2].group == "g-" + content_hash("Q")
    assert c[2].group != c[0].group


def test_content_hash_is_order_and_value_sensitive() -> None:
    assert content_hash("a", "b") == content_hash("a", "b")
    assert content_hash("a", "b") != content_hash("b", "a")
    assert len(content_hash("x", length=8)) == 8


def test_integer_ids_are_strings(tmp_path: Path) -> None:
    rows = [{"id": 0, "prompt": "P", "response": "R", "strategy": "s"}, {"id": 7, "prompt": "P", "response": "R2", "strategy": "s"}]
    assert [c.id for c in load_candidates(write_jsonl(tmp_path / "c.jsonl", rows))] == ["0", "7"]


# --------------------------------------------------------------------------- eval rows


def test_load_eval_rows_and_default_id(tmp_path: Path) -> None:
    rows = [
        {"id": "e1", "prompt": "Q1", "response": "A1", "task": "a"},
        {"prompt": CHAT, "response": "4", "task": "b"},
    ]
    got = load_eval(write_jsonl(tmp_path / "e.jsonl", rows))
    assert got == [EvalItem("e1", "Q1", "A1", "a"), EvalItem(content_hash(CHAT, "4", "b"), CHAT, "4", "b")]


def test_load_eval_requires_task(tmp_path: Path) -> None:
    p = write_jsonl(tmp_path / "e.jsonl", [{"prompt": "Q1", "response": "A1", "task": "a"}, {"prompt": "Q2", "response": "A2"}])
    with pytest.raises(InputError) as ei:
        load_eval(p)
    msg = err(ei)
    assert str(p) in msg and "line 2" in msg and "missing field 'task'" in msg and "name the eval task" in msg


def test_load_eval_empty_task_is_refused(tmp_path: Path) -> None:
    p = write_jsonl(tmp_path / "e.jsonl", [{"prompt": "Q1", "response": "A1", "task": "  "}])
    with pytest.raises(InputError, match=r"line 1: field 'task' is empty"):
        load_eval(p)


# --------------------------------------------------------------------------- auto detection


def test_load_rows_auto_picks_candidates_when_all_have_strategy(tmp_path: Path) -> None:
    role, rows = load_rows(write_jsonl(tmp_path / "c.jsonl", ROWS), "auto")
    assert role == "candidates"
    assert rows == expected_candidates()
    assert detect_kind(tmp_path / "c.jsonl") == "candidates"


def test_load_rows_auto_picks_eval_when_a_row_lacks_strategy(tmp_path: Path) -> None:
    rows = [{"prompt": "Q1", "response": "A1", "task": "a", "strategy": "x"}, {"prompt": "Q2", "response": "A2", "task": "b"}]
    p = write_jsonl(tmp_path / "e.jsonl", rows)
    role, got = load_rows(p, "auto")
    assert role == "eval"
    assert [type(r) for r in got] == [EvalItem, EvalItem]
    assert [r.task for r in got] == ["a", "b"]
    assert detect_kind(p) == "eval"


def test_load_rows_explicit_role_and_unknown_role(tmp_path: Path) -> None:
    p = write_jsonl(tmp_path / "c.jsonl", ROWS[:3])
    role, got = load_rows(p, "eval")
    assert role == "eval" and [r.id for r in got] == ["c1", "c2", "c3"]
    with pytest.raises(InputError, match="role 'train' is unknown"):
        load_rows(p, "train")


# --------------------------------------------------------------------------- validation errors

GOOD = {"prompt": "P", "response": "R", "strategy": "s"}


def bad_case(tmp_path: Path, bad: dict[str, Any]) -> tuple[Path, str]:
    """Row 1 good, row 2 bad, in a JSONL file; return the path and the error message."""
    p = write_jsonl(tmp_path / "bad.jsonl", [GOOD, bad])
    with pytest.raises(InputError) as ei:
        load_candidates(p)
    return p, err(ei)


@pytest.mark.parametrize(
    "bad, field, expect",
    [
        ({"response": "R", "strategy": "s"}, "prompt", "missing field 'prompt': add the prompt text"),
        ({"prompt": "P2", "strategy": "s"}, "response", "missing field 'response': give every candidate a non-empty response"),
        ({"prompt": "P2", "response": "R"}, "strategy", "missing field 'strategy': name the strategy"),
        ({"prompt": "P2", "response": None, "strategy": "s"}, "response", "missing field 'response'"),
        ({"prompt": "P2", "response": "", "strategy": "s"}, "response", "field 'response' is empty: give every candidate a non-empty response"),
        ({"prompt": "P2", "response": " \n\t ", "strategy": "s"}, "response", "field 'response' is empty: give every candidate a non-empty response"),
        ({"prompt": "  ", "response": "R", "strategy": "s"}, "prompt", "field 'prompt' is empty: give a non-empty prompt"),
        ({"prompt": "P2", "response": [1, 2, 3], "strategy": "s"}, "response", "field 'response' has type list: use a string"),
        ({"prompt": "P2", "response": 1.5, "strategy": "s"}, "response", "field 'response' has type float: use a string"),
        ({"prompt": {"text": "P2"}, "response": "R", "strategy": "s"}, "prompt", "field 'prompt' has type dict: use a string or a list of chat messages"),
        ({"id": True, "prompt": "P2", "response": "R", "strategy": "s"}, "id", "field 'id' has type bool: use a string"),
        ({"prompt": "P2", "response": "R", "strategy": False}, "strategy", "field 'strategy' has type bool: use a string"),
        ({"prompt": [], "response": "R", "strategy": "s"}, "prompt", "field 'prompt' is an empty message list"),
        ({"prompt": [{"role": "robot", "content": "hi"}], "response": "R", "strategy": "s"}, "prompt", "field 'prompt' message 0 has role 'robot': use one of system, user, assistant"),
        ({"prompt": [{"role": "system", "content": "x"}, {"role": "user"}], "response": "R", "strategy": "s"}, "prompt", "field 'prompt' message 1 is not an object with string 'role' and 'content': write it as {\"role\": \"user\", \"content\": \"...\"}"),
        ({"prompt": ["hello"], "response": "R", "strategy": "s"}, "prompt", "field 'prompt' message 0 is not an object with string 'role' and 'content'"),
        ({"prompt": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}], "response": "R", "strategy": "s"}, "prompt", "field 'prompt' ends with a 'assistant' message: end it with a 'user' message"),
    ],
)
def test_bad_row_message_names_file_line_field_and_fix(tmp_path: Path, bad: dict[str, Any], field: str, expect: str) -> None:
    p, msg = bad_case(tmp_path, bad)
    assert msg.startswith(f"{p}: line 2: ")
    assert f"'{field}'" in msg
    assert expect in msg


def test_non_object_row(tmp_path: Path) -> None:
    p = tmp_path / "c.jsonl"
    p.write_text(json.dumps(GOOD) + "\n[1, 2]\n")
    with pytest.raises(InputError) as ei:
        load_candidates(p)
    assert err(ei) == f"{p}: line 2: expected an object with fields prompt/response/..., got list: write each row as an object like {{\"prompt\": ..., \"response\": ...}}"


def test_duplicate_id_names_both_locations(tmp_path: Path) -> None:
    rows = [dict(GOOD, id="x"), dict(GOOD, id="y", response="R2"), dict(GOOD, id="x", response="R3")]
    p = write_jsonl(tmp_path / "c.jsonl", rows)
    with pytest.raises(InputError) as ei:
        load_candidates(p)
    msg = err(ei)
    assert msg.startswith(f"{p}: line 3: duplicate id 'x' (first at line 1)")
    assert "give every row a unique id" in msg


def test_duplicate_content_without_ids_is_a_duplicate(tmp_path: Path) -> None:
    p = write_jsonl(tmp_path / "c.jsonl", [GOOD, GOOD])
    with pytest.raises(InputError) as ei:
        load_candidates(p)
    assert f"{p}: line 2: duplicate id {content_hash('P', 'R', 's')!r} (first at line 1)" in err(ei)


def test_duplicate_eval_id(tmp_path: Path) -> None:
    p = write_jsonl(tmp_path / "e.jsonl", [{"id": "e", "prompt": "a", "response": "b", "task": "t"}] * 2)
    with pytest.raises(InputError, match=r"line 2: duplicate id 'e' \(first at line 1\)"):
        load_eval(p)


def test_duplicate_id_in_parquet_names_rows(tmp_path: Path) -> None:
    p = write_parquet(tmp_path / "c.parquet", [dict(GOOD, id="x"), dict(GOOD, id="x", response="R2")])
    with pytest.raises(InputError) as ei:
        load_candidates(p)
    assert err(ei).startswith(f"{p}: row 2: duplicate id 'x' (first at row 1)")


def test_invalid_json_line_names_line_number(tmp_path: Path) -> None:
    p = tmp_path / "c.jsonl"
    p.write_text(json.dumps(GOOD) + "\n\n" + '{"prompt": "P", "response": \n')
    with pytest.raises(InputError) as ei:
        load_candidates(p)
    msg = err(ei)
    assert msg.startswith(f"{p}: line 3: invalid JSON")
    assert "write one JSON object per line" in msg


def test_blank_lines_keep_physical_line_numbers(tmp_path: Path) -> None:
    p = tmp_path / "c.jsonl"
    p.write_text(json.dumps(GOOD) + "\n\n\n" + json.dumps({"prompt": "P"}) + "\n")
    with pytest.raises(InputError, match=r": line 4: missing field 'response'"):
        load_candidates(p)


def test_non_utf8_jsonl(tmp_path: Path) -> None:
    p = tmp_path / "c.jsonl"
    p.write_bytes(json.dumps(GOOD).encode() + b"\n" + b'{"prompt": "caf\xe9", "response": "R", "strategy": "s"}\n')
    with pytest.raises(InputError) as ei:
        load_candidates(p)
    assert err(ei) == f"{p}: line 2: not valid UTF-8 (byte 0xe9 at column 16): re-save the file as UTF-8"


@pytest.mark.parametrize("suffix", [".json", ".csv"])
def test_non_utf8_json_and_csv(tmp_path: Path, suffix: str) -> None:
    p = tmp_path / f"c{suffix}"
    p.write_bytes(b"prompt,response,strategy\ncaf\xe9,R,s\n" if suffix == ".csv" else b'[\n{"prompt": "caf\xe9"}]')
    with pytest.raises(InputError) as ei:
        load_candidates(p)
    assert err(ei) == f"{p}: line 2: not valid UTF-8 (byte 0xe9): re-save the file as UTF-8"


def test_invalid_json_file(tmp_path: Path) -> None:
    p = tmp_path / "c.json"
    p.write_text('[{"prompt": "P",\n')
    with pytest.raises(InputError) as ei:
        load_candidates(p)
    assert err(ei).startswith(f"{p}: line 2: invalid JSON (Expecting property name") and err(ei).endswith(": fix the syntax; the file must hold a list of row objects")


def test_json_object_without_data_list(tmp_path: Path) -> None:
    p = tmp_path / "c.json"
    p.write_text(json.dumps({"items": [GOOD]}))
    with pytest.raises(InputError) as ei:
        load_candidates(p)
    assert err(ei).startswith(f"{p}: expected a JSON list of row objects") and err(ei).endswith("got dict: put the rows in a top-level list")


def test_json_row_numbers(tmp_path: Path) -> None:
    p = tmp_path / "c.json"
    p.write_text(json.dumps({"data": [GOOD, GOOD | {"response": ""}]}))
    with pytest.raises(InputError) as ei:
        load_candidates(p)
    assert err(ei).startswith(f"{p}: row 2: field 'response' is empty")


def test_csv_line_numbers_count_the_header(tmp_path: Path) -> None:
    p = write_csv(tmp_path / "c.csv", [GOOD, dict(GOOD, response="R2"), {"prompt": "P", "response": "R3"}])
    with pytest.raises(InputError) as ei:
        load_candidates(p)
    assert err(ei).startswith(f"{p}: line 4: missing field 'strategy'")


def test_csv_extra_values(tmp_path: Path) -> None:
    p = tmp_path / "c.csv"
    p.write_text("prompt,response,strategy\nP,R,s\nP,R,s,extra\n")
    with pytest.raises(InputError) as ei:
        load_candidates(p)
    assert err(ei) == f"{p}: line 3: more values than header columns: quote fields that contain commas"


def test_parquet_row_number_and_missing_value(tmp_path: Path) -> None:
    p = write_parquet(tmp_path / "c.parquet", [GOOD, {"prompt": "P2", "response": None, "strategy": "s"}])
    with pytest.raises(InputError) as ei:
        load_candidates(p)
    assert err(ei).startswith(f"{p}: row 2: missing field 'response'")


def test_corrupt_parquet(tmp_path: Path) -> None:
    p = tmp_path / "c.parquet"
    p.write_bytes(b"not parquet at all")
    with pytest.raises(InputError) as ei:
        load_candidates(p)
    assert err(ei).startswith(f"{p}: cannot read as Parquet") and "check the file is a valid Parquet file" in err(ei)


def test_unsupported_suffix(tmp_path: Path) -> None:
    p = tmp_path / "c.txt"
    p.write_text("hello")
    with pytest.raises(InputError) as ei:
        load_candidates(p)
    assert err(ei) == f"{p}: unsupported file type '.txt': use .jsonl, .json, .csv, .parquet or a datasets directory"


def test_nonexistent_path(tmp_path: Path) -> None:
    p = tmp_path / "nope.jsonl"
    with pytest.raises(InputError) as ei:
        load_eval(p)
    assert err(ei) == f"{p}: no such file or directory: check the path"


@pytest.mark.parametrize("suffix, content", [(".jsonl", ""), (".jsonl", "\n  \n"), (".json", "[]"), (".csv", "prompt,response,strategy\n")])
def test_empty_file(tmp_path: Path, suffix: str, content: str) -> None:
    p = tmp_path / f"c{suffix}"
    p.write_text(content)
    with pytest.raises(InputError) as ei:
        load_candidates(p)
    assert err(ei) == f"{p}: the file has no rows: add at least one row"


def test_csv_without_header(tmp_path: Path) -> None:
    p = tmp_path / "c.csv"
    p.write_text("")
    with pytest.raises(InputError) as ei:
        load_candidates(p)
    assert err(ei).startswith(f"{p}: the CSV has no header row")


def test_dataset_dict_with_two_splits(tmp_path: Path) -> None:
    import datasets

    p = tmp_path / "dd"
    datasets.DatasetDict({"train": datasets.Dataset.from_list([GOOD]), "test": datasets.Dataset.from_list([GOOD])}).save_to_disk(str(p))
    with pytest.raises(InputError) as ei:
        load_candidates(p)
    msg = err(ei)
    assert msg.startswith(f"{p}: a DatasetDict with splits ")
    assert "'train'" in msg and "'test'" in msg
    assert "point at one split's folder" in msg


def test_dataset_dict_with_one_split_loads(tmp_path: Path) -> None:
    import datasets

    p = tmp_path / "dd"
    datasets.DatasetDict({"train": datasets.Dataset.from_list(ROWS)}).save_to_disk(str(p))
    assert load_candidates(p) == expected_candidates()


def test_plain_directory_is_not_a_dataset(tmp_path: Path) -> None:
    d = tmp_path / "folder"
    d.mkdir()
    with pytest.raises(InputError) as ei:
        load_candidates(d)
    assert err(ei).startswith(f"{d}: not a directory saved by datasets.save_to_disk")


def test_input_error_is_a_curator_error_with_exit_code_2() -> None:
    assert issubclass(InputError, CuratorError)
    assert InputError("x").exit_code == 2


def test_read_rows_locations(tmp_path: Path) -> None:
    p = write_jsonl(tmp_path / "c.jsonl", [GOOD, GOOD])
    assert [w for w, _ in read_rows(p)] == [f"{p}: line 1", f"{p}: line 2"]


# --------------------------------------------------------------------------- truncation


@pytest.fixture(scope="module")
def tok() -> Any:
    return build_tiny_tokenizer()


def _ids(tok: Any, text: str) -> list[int]:
    return tok(text, add_special_tokens=False)["input_ids"]


def test_long_prompt_is_cut_from_its_start(tok: Any) -> None:
    prompt, response, max_len = "abcdefghij" * 20, "ok", 32
    p_text, r_text = render(tok, prompt, response)
    p_ids, r_ids = _ids(tok, p_text), _ids(tok, r_text)
    assert len(p_ids) > max_len and len(r_ids) < max_len
    enc = encode(tok, prompt, response, max_len)
    assert enc.truncated is True
    assert len(enc.input_ids) == len(enc.labels) == max_len
    assert enc.n_response == len(r_ids)
    assert enc.n_prompt == max_len - len(r_ids)
    assert enc.input_ids[enc.n_prompt :] == r_ids  # every response token kept
    assert enc.input_ids[: enc.n_prompt] == p_ids[-enc.n_prompt :]  # prompt's end kept
    assert enc.labels == [IGNORE_INDEX] * enc.n_prompt + r_ids
    # the end-of-turn marker survives, and the prompt's start is gone
    assert tok.decode(enc.input_ids).endswith("ok<|im_end|>\n")
    assert not tok.decode(enc.input_ids).startswith("<|im_start|>")


def test_response_longer_than_max_length(tok: Any) -> None:
    prompt, response, max_len = "short?", "z" * 100, 16
    r_ids = _ids(tok, render(tok, prompt, response)[1])
    enc = encode(tok, prompt, response, max_len)
    assert enc.truncated is True
    assert enc.n_prompt == 0 and enc.n_response == max_len
    assert enc.input_ids == r_ids[:max_len]
    assert enc.labels == r_ids[:max_len]
    assert IGNORE_INDEX not in enc.labels


def test_short_pair_is_not_truncated(tok: Any) -> None:
    prompt, response = [{"role": "system", "content": "be nice"}, {"role": "user", "content": "hi"}], "hello"
    p_text, r_text = render(tok, prompt, response)
    assert p_text.endswith("<|im_start|>assistant\n") and r_text == "hello<|im_end|>\n"
    p_ids, r_ids = _ids(tok, p_text), _ids(tok, r_text)
    enc = encode(tok, prompt, response, 512)
    assert enc.truncated is False
    assert enc.input_ids == p_ids + r_ids
    assert enc.n_prompt == len(p_ids) and enc.n_response == len(r_ids)
    assert enc.labels == [IGNORE_INDEX] * len(p_ids) + r_ids
    assert [i for i, lab in enumerate(enc.labels) if lab == IGNORE_INDEX] == list(range(len(p_ids)))


def test_exact_fit_is_not_truncated(tok: Any) -> None:
    p_text, r_text = render(tok, "hi", "yo")
    n = len(_ids(tok, p_text)) + len(_ids(tok, r_text))
    assert encode(tok, "hi", "yo", n).truncated is False
    short = encode(tok, "hi", "yo", n - 1)
    assert short.truncated is True and len(short.input_ids) == n - 1 and short.n_prompt == len(_ids(tok, p_text)) - 1


# --------------------------------------------------------------------------- inputs that used to crash a loader (found by tests/test_fuzz_loaders.py)


def one_error(p: Path, loader: Any = load_candidates) -> str:
    with pytest.raises(InputError) as ei:
        loader(p)
    msg = err(ei)
    assert "\n" not in msg and len(msg) < 300 + len(str(p))
    return msg


@pytest.mark.parametrize("suffix", [".jsonl", ".json"])
def test_deeply_nested_json_is_an_input_error(tmp_path: Path, suffix: str) -> None:
    p = tmp_path / f"c{suffix}"
    p.write_text("[" * 100_000 + "\n")  # RecursionError inside json.loads
    msg = one_error(p)
    assert msg.startswith(f"{p}: ") and "invalid JSON (nested too deeply)" in msg and "flatten the data" in msg
    if suffix == ".jsonl":
        assert msg.startswith(f"{p}: line 1: ")


def test_integer_with_too_many_digits_is_an_input_error(tmp_path: Path) -> None:
    p = tmp_path / "c.jsonl"
    p.write_text(json.dumps(GOOD) + "\n" + '{"prompt": "P", "response": ' + "9" * 5000 + ', "strategy": "s"}\n')  # ValueError, not JSONDecodeError
    assert one_error(p) == f"{p}: line 2: invalid JSON (an integer with more than 4300 digits): quote long numbers as strings; write one JSON object per line"


@pytest.mark.parametrize(
    "row, label",
    [
        ({"prompt": "a\ud800b", "response": "R", "strategy": "s"}, "field 'prompt'"),
        ({"prompt": [{"role": "user", "content": "\udfff"}], "response": "R", "strategy": "s"}, "field 'prompt' message 0 content"),
        ({"prompt": "P", "response": "R\ud83d", "strategy": "s"}, "field 'response'"),
        ({"id": "\ud800", "prompt": "P", "response": "R", "strategy": "s"}, "field 'id'"),
        ({"prompt": "P", "response": "R", "strategy": "s", "task": "\udc00"}, "field 'task'"),
    ],
)
def test_lone_surrogate_escape_is_an_input_error(tmp_path: Path, row: dict[str, Any], label: str) -> None:
    # json.dumps writes "\ud800" escapes; json.loads accepts them, but the text cannot be UTF-8 encoded (hashing, stores)
    p = write_jsonl(tmp_path / "c.jsonl", [GOOD, row])
    msg = one_error(p)
    assert msg.startswith(f"{p}: line 2: {label} holds an unpaired surrogate")
    assert msg.endswith("remove the broken \\u escape or write the full surrogate pair")


def test_surrogate_pair_escape_is_fine(tmp_path: Path) -> None:
    p = tmp_path / "c.jsonl"
    p.write_text('{"prompt": "smile \\ud83d\\ude00", "response": "R", "strategy": "s"}\n')
    assert load_candidates(p)[0].prompt == "smile \U0001F600"


def test_csv_field_longer_than_the_csv_module_default_loads(tmp_path: Path) -> None:
    big = "x" * 300_000  # csv's default field_size_limit is 131072
    p = write_csv(tmp_path / "c.csv", [dict(GOOD, prompt=big)])
    import csv as csv_module

    before = csv_module.field_size_limit()
    assert load_candidates(p)[0].prompt == big
    assert csv_module.field_size_limit() == before  # the global limit is restored


@pytest.mark.parametrize("sep", ["\u2028", "\x85", "\x0c", "\x1c"])
def test_csv_unicode_line_separators_stay_inside_the_field(tmp_path: Path, sep: str) -> None:
    # csv.writer does not quote these; str.splitlines() would have cut the record in two
    p = write_csv(tmp_path / "c.csv", [dict(GOOD, prompt=f"a{sep}b"), dict(GOOD, prompt="Q")])
    assert [c.prompt for c in load_candidates(p)] == [f"a{sep}b", "Q"]


def test_csv_unterminated_quote_names_the_record_start(tmp_path: Path) -> None:
    p = tmp_path / "c.csv"
    p.write_text('prompt,response,strategy\nP,R,s\n\n"P2,R,s\nP3,R,s\n')
    assert one_error(p) == f"{p}: line 4: malformed CSV (unexpected end of data): close every quoted field with a \" and double any \" inside it"


def test_csv_text_after_closing_quote(tmp_path: Path) -> None:
    p = tmp_path / "c.csv"
    p.write_text('prompt,response,strategy\n"P"x,R,s\n')
    assert one_error(p).startswith(f"{p}: line 2: malformed CSV (',' expected after '\"')")


def test_csv_duplicate_header_column(tmp_path: Path) -> None:
    p = tmp_path / "c.csv"
    p.write_text("prompt,response,prompt,strategy\nA,R,B,s\n")
    assert one_error(p) == f"{p}: line 1: column 'prompt' appears twice in the header: rename or remove one of them"


def test_csv_with_semicolons(tmp_path: Path) -> None:
    p = tmp_path / "c.csv"
    p.write_text("prompt;response;strategy\nP;R;s\n")
    assert one_error(p) == f"{p}: line 1: the header is one column 'prompt;response;strategy': separate the columns with commas"


def test_csv_prompt_that_looks_like_deep_json_stays_text(tmp_path: Path) -> None:
    p = write_csv(tmp_path / "c.csv", [dict(GOOD, prompt="[" * 100_000)])
    assert load_candidates(p)[0].prompt == "[" * 100_000


def test_parquet_value_without_a_python_form_names_row_and_field(tmp_path: Path) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    p = tmp_path / "c.parquet"
    ts = pa.array([1, 10**15], type=pa.timestamp("s"))  # year ~31 million: no datetime
    pq.write_table(pa.table({"prompt": ["P", "Q"], "response": ["R", "R"], "strategy": ["s", "s"], "when": ts}), p)
    msg = one_error(p)
    assert msg.startswith(f"{p}: row 2: field 'when' has no Python value (") and msg.endswith(": re-save the file with string columns prompt, response, ...")


def test_parquet_duplicate_column(tmp_path: Path) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    p = tmp_path / "c.parquet"
    cols = [pa.array(["A"]), pa.array(["B"]), pa.array(["R"]), pa.array(["s"])]
    pq.write_table(pa.Table.from_arrays(cols, names=["prompt", "prompt", "response", "strategy"]), p)
    assert one_error(p) == f"{p}: column 'prompt' appears twice: re-save the file with string columns prompt, response, ..."


def test_parquet_error_from_pyarrow_is_one_line(tmp_path: Path) -> None:
    p = tmp_path / "c.parquet"
    p.write_bytes(b"PAR1" + b"\n\n garbage \n" * 50 + b"PAR1")
    msg = one_error(p)
    assert msg.startswith(f"{p}: cannot read as Parquet (") and msg.endswith("check the file is a valid Parquet file")


def test_damaged_saved_dataset(tmp_path: Path) -> None:
    d = write_hf_dir(tmp_path / "ds", [GOOD] * 20)
    [arrow] = list(d.glob("*.arrow"))
    arrow.write_bytes(arrow.read_bytes()[:100])
    msg = one_error(d)
    assert msg.startswith(f"{d}: ") and msg.endswith(": point at a data file or a saved dataset")


def test_unreadable_path_is_an_input_error(tmp_path: Path) -> None:
    p = tmp_path / ("x" * 300 + ".jsonl")  # ENAMETOOLONG from the file system
    assert one_error(p) == f"{p}: not a usable path (File name too long): check the path"


@pytest.mark.parametrize("suffix", [".jsonl", ".json", ".csv"])
def test_leading_utf8_bom_is_ignored(tmp_path: Path, suffix: str) -> None:
    p = {".jsonl": write_jsonl, ".csv": write_csv}.get(suffix, lambda q, rows: (q.write_text(json.dumps(rows)), q)[1])(tmp_path / f"c{suffix}", ROWS)
    p.write_bytes(b"\xef\xbb\xbf" + p.read_bytes())
    assert load_candidates(p) == expected_candidates()


def test_bad_bytes_after_a_bom_name_the_right_line(tmp_path: Path) -> None:
    p = tmp_path / "c.csv"
    p.write_bytes(b"\xef\xbb\xbfprompt,response,strategy\nP,R,s\nP,R\xff2,s\n")  # utf-8-sig error offsets skip the BOM
    assert one_error(p) == f"{p}: line 3: not valid UTF-8 (byte 0xff): re-save the file as UTF-8"


def test_csv_bad_bytes_count_lines_as_the_csv_reader_does(tmp_path: Path) -> None:
    p = tmp_path / "c.csv"
    p.write_bytes(b'prompt,response,strategy\n"a\rb",R,s\nP,R\xff,s\n')  # a lone \r ends a line for the csv reader
    assert one_error(p) == f"{p}: line 4: not valid UTF-8 (byte 0xff): re-save the file as UTF-8"
    p.write_bytes(b'prompt,response,strategy\n"a\rb",R,s\nP,,s\n')
    assert one_error(p).startswith(f"{p}: line 4: missing field 'response'")


def test_csv_text_after_a_closing_quote_is_not_silently_joined(tmp_path: Path) -> None:
    p = tmp_path / "c.csv"
    p.write_text('prompt,response,strategy\nP,R,s\n"P"2,R,s\n')  # the lenient reader would load prompt 'P2'
    assert one_error(p).startswith(f"{p}: line 3: malformed CSV")
