"""Output paths: names that come from data never write outside the folder the user chose.

Strategy, task, group, record and dataset names below hold ``..``, ``/``, absolute paths, ``~``,
backslashes, NUL bytes and newlines. The whole pipeline (index, influence, study, align, select,
rank, export) runs on them, and afterwards every file in the sandbox must lie inside an output the
command was given. ``safe_name`` and ``inside`` (curator/io/paths.py) are checked as properties.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from hypothesis import given, settings
from hypothesis import strategies as st

from curator.cli.main import cli
from curator.io.data import Candidate
from curator.errors import InputError
from curator.io.paths import MAX_NAME, inside, safe_name
from tests.test_export import cand, row

ESCAPE = "ESCAPED-by-a-name"


def evil_names(sandbox: Path) -> list[str]:
    """Names that would leave the output folder if they were joined to it as they are."""
    return [
        f"../../{ESCAPE}-1",
        f"../{ESCAPE}-2",
        str(sandbox.parent / f"{ESCAPE}-3"),  # absolute
        f"a/b/../../../../{ESCAPE}-4",
        f"..\\..\\{ESCAPE}-5",
        f"~/{ESCAPE}-6",
        "..",
        ".",
        f"x\x00y{ESCAPE}-7",
        f"new\nline {ESCAPE}-8",
        "/etc/passwd",
        "C:\\Windows\\" + ESCAPE,
        "x" * 300,
    ]


def files_under(root: Path) -> set[Path]:
    return {p for p in root.rglob("*") if p.is_file() or p.is_symlink()}


def assert_nothing_escaped(sandbox: Path) -> None:
    for base in (sandbox.parent, sandbox.parent.parent, Path.home(), Path("/etc")):
        assert not any(p.name.startswith(ESCAPE) for p in base.iterdir()), base
    assert not [p for p in sandbox.parent.rglob(f"*{ESCAPE}*")], "a file named from data landed outside its folder"


# --------------------------------------------------------------------------- safe_name and inside


@given(st.text(max_size=300))
@settings(max_examples=400, derandomize=True, database=None, deadline=None)
def test_safe_name_is_one_harmless_component(text: str) -> None:
    name = safe_name(text)
    assert name and len(name) <= MAX_NAME
    assert name not in (".", "..") and not name.startswith((".", "-"))
    assert all(ch.isascii() and (ch.isalnum() or ch in "._-") for ch in name), name
    assert Path(name).name == name and len(Path(name).parts) == 1
    assert safe_name(text) == name  # stable: the same data gives the same file name
    assert safe_name(name) == name  # a safe name is left alone


@given(st.lists(st.text(max_size=40), min_size=2, max_size=6, unique=True))
@settings(max_examples=300, derandomize=True, database=None, deadline=None)
def test_safe_name_never_maps_two_names_to_one_file(texts: list[str]) -> None:
    assert len({safe_name(t) for t in texts}) == len(texts)


def test_safe_name_examples(tmp_path: Path) -> None:
    assert safe_name("direct") == "direct"
    assert safe_name("cot_v2.1-final") == "cot_v2.1-final"
    for evil in evil_names(tmp_path):
        name = safe_name(evil)
        assert "/" not in name and "\\" not in name and "\x00" not in name and "\n" not in name
        assert (tmp_path / name).resolve().parent == tmp_path.resolve()
    assert safe_name("../../etc/x").startswith("etc-x-")
    assert safe_name("..") != safe_name(".") and safe_name("a/b") != safe_name("a-b")


def test_inside_refuses_names_that_leave_the_folder(tmp_path: Path) -> None:
    out = tmp_path / "out"
    out.mkdir()
    assert inside(out, "report.md") == out / "report.md"
    assert inside(out, "sub", "x.json") == out / "sub" / "x.json"
    for bad in ("../x", "a/../../x", str(tmp_path / "abs"), "/etc/passwd"):
        with pytest.raises(InputError, match="outside the output folder"):
            inside(out, bad)
    (out / "link").symlink_to(tmp_path)  # a symlink inside that points away
    with pytest.raises(InputError, match="outside the output folder"):
        inside(out, "link", "x")
    for evil in evil_names(tmp_path):
        assert inside(out, safe_name(evil)).parent == out


# --------------------------------------------------------------------------- the whole pipeline with hostile names


def hostile_inputs(d: Path, names: list[str]) -> tuple[Path, Path]:
    """Candidates whose ids, strategies, tasks and groups are hostile names; eval items whose tasks are."""
    d.mkdir()
    strategies = ["direct", names[0], names[2], names[4], names[9]]
    cands, evals = [], []
    for g in range(3):
        q = f"Question {g}: what is {g} + {g}?"
        for s_i, strategy in enumerate(strategies):
            cands.append({"id": f"{names[(g + s_i) % len(names)]}#{g}-{s_i}", "prompt": q, "response": f"The answer is {2 * g} (way {s_i}).",
                          "strategy": strategy, "task": names[g], "group": names[3 + g]})
    for j in range(4):
        evals.append({"id": f"{names[j + 5]}#{j}", "prompt": f"Eval {j}: what is {j} + 1?", "response": f"It is {j + 1}.", "task": names[j % 3]})
    c, e = d / "cands.jsonl", d / "eval.jsonl"
    c.write_text("".join(json.dumps(r) + "\n" for r in cands))
    e.write_text("".join(json.dumps(r) + "\n" for r in evals))
    return c, e


@pytest.mark.filterwarnings("ignore:Tight layout not applied")  # 300-character strategy names in the plots
def test_pipeline_with_hostile_names_writes_only_inside_its_outputs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    sandbox = tmp_path / "sandbox"
    sandbox.mkdir()
    names = evil_names(sandbox)
    cands, evals = hostile_inputs(sandbox / "in", names)
    # a pulled file (as `curator argilla pull` writes it) with hostile strategies, ids and dataset name
    r1 = [cand(names[0], names[2], "4", 1), cand(names[1], names[4], "It is 4.", 2)]
    pulled = sandbox / "in" / "pulled.jsonl"
    pulled.write_text(json.dumps(row(names[3], "What is 2 + 2?", r1, "submitted", [names[1], names[0]], {names[1]: 1.0, names[0]: 0.0}, n=1, dataset=names[5], workspace=names[6])) + "\n")
    work = sandbox / "work"
    (work / "a" / "b").mkdir(parents=True)
    monkeypatch.chdir(work / "a" / "b")  # relative escapes from here would land in work/ or sandbox/
    before = files_under(sandbox)
    outs = {k: work / "a" / "b" / v for k, v in {
        "train": "train_store", "eval": "eval_store", "influence": "influence.parquet", "study": "study", "scores": "scores.parquet",
        "select": "selection", "rank": "rank.csv", "sft": "sft.jsonl", "dpo": "dpo_dir"}.items()}
    runner = CliRunner()

    def ok(*args: Any) -> None:
        r = runner.invoke(cli, ["-q", *map(str, args)])
        assert r.exit_code == 0, (args, r.output, r.exception)

    model = ["--model", "tiny-random"]
    ok("index", cands, "--out", outs["train"], *model, "--dim", "64")
    ok("index", evals, "--out", outs["eval"], *model, "--dim", "64")
    ok("influence", "--train", outs["train"], "--eval", outs["eval"], "--out", outs["influence"], "--top-k", "2")
    ok("study", "--train", outs["train"], "--eval", outs["eval"], "--out", outs["study"], "--baseline", "direct", "--n-boot", "50")
    ok("align", cands, "--out", outs["scores"], *model, "--samples", "2", "--max-new-tokens", "4", "--metrics", "rouge-l,token-f1")
    ok("select", outs["scores"], "--out", outs["select"])
    ok("rank", outs["scores"], "--influence", outs["influence"], "--out", outs["rank"])

    ok("export", pulled, "--format", "sft", "--out", outs["sft"])
    ok("export", pulled, "--format", "dpo", "--out", outs["dpo"])

    topk = outs["influence"].with_name("influence.topk.parquet")
    allowed = [o for o in outs.values()] + [topk]
    new = files_under(sandbox) - before
    stray = [p for p in new if not any(p == o or o in p.parents or p.name.startswith(o.stem + ".") and p.parent == o.parent for o in allowed)]
    assert not stray, f"written outside the chosen outputs: {sorted(map(str, stray))}"
    assert {p.name for p in new if p.parent == outs["study"]} == {"report.md", "report.json", "heatmap.png", "influence.parquet"}
    assert {p.name for p in new if p.parent == outs["select"]} == {"report.md", "report.json", "strategies.png"}
    assert (work / "a" / "b" / "sft.README.md").exists() and (outs["dpo"] / "README.md").exists()
    assert_nothing_escaped(sandbox)


# --------------------------------------------------------------------------- Argilla names


def test_listen_log_name_from_a_hostile_dataset_name_stays_in_the_working_folder(tmp_path: Path) -> None:
    from curator.integrations.argilla.listen import default_log_path

    assert default_log_path("my-set") == Path("listen-my-set.log.jsonl")
    for evil in evil_names(tmp_path):
        p = default_log_path(evil)
        assert len(p.parts) == 1 and p.name.startswith("listen-") and p.name.endswith(".log.jsonl"), p
        assert (tmp_path / p).resolve().parent == tmp_path.resolve()
    assert default_log_path("a/b") != default_log_path("a-b")


class NoServer:
    """A client that fails the test if push touches it."""

    def __getattr__(self, name: str) -> Any:
        raise AssertionError(f"push used the client ({name}) before checking its names")


CANDS = [Candidate("c1", "P", "R1", "direct", None, "g1"), Candidate("c2", "P", "R2", "cot", None, "g1")]


@pytest.mark.parametrize(
    "dataset, workspace, needle",
    [
        ("", "curator", "dataset name '' is empty"),
        ("set\nname", "curator", "dataset name 'set\\nname' has control characters"),
        ("set\x00", "curator", "has control characters"),
        (" padded ", "curator", "dataset name ' padded ' starts or ends with spaces"),
        ("x" * 201, "curator", "is 201 characters long, Argilla takes at most 200"),
        ("ok", "team\tb", "workspace name 'team\\tb' has control characters"),
    ],
)
def test_push_refuses_names_argilla_cannot_hold_before_contacting_it(dataset: str, workspace: str, needle: str) -> None:
    from curator.integrations.argilla.push import push

    with pytest.raises(InputError) as ei:
        push(CANDS, None, dataset, workspace=workspace, client=NoServer())
    msg = str(ei.value)
    assert needle in msg and "\n" not in msg and "pass a plain --" in msg


def test_push_refuses_a_strategy_argilla_cannot_use_as_a_label() -> None:
    from curator.integrations.argilla.mapping import spec_for

    long = Candidate("c3", "P", "R3", "s" * 250, None, "g1")
    with pytest.raises(InputError, match=r"strategy name 'sss.*is 250 characters long, Argilla takes at most 200: rename the strategy"):
        spec_for([*CANDS, long])
    with pytest.raises(InputError, match=r"strategy name 'a\\tb' has control characters: rename the strategy"):
        spec_for([*CANDS, Candidate("c5", "P", "R5", "a\tb", None, "g1")])
    assert " padded " in spec_for([*CANDS, Candidate("c6", "P", "R6", " padded ", None, "g1")]).strategies
    assert spec_for([*CANDS, Candidate("c4", "P", "R4", "../../etc/x", None, "g1")]).strategies == ("direct", "cot", "../../etc/x")


def test_cli_push_with_a_bad_dataset_name_is_one_line_exit_2(tmp_path: Path) -> None:
    data = tmp_path / "c.jsonl"
    data.write_text("".join(json.dumps({"prompt": "P", "response": f"R{i}", "strategy": s}) + "\n" for i, s in enumerate(["direct", "cot"])))
    r = CliRunner().invoke(cli, ["argilla", "push", str(data), "--dataset", "bad\nname", "--api-url", "http://127.0.0.1:9", "--api-key", "k"])
    assert r.exit_code == 2, (r.output, r.exception)
    assert r.stderr.splitlines() == ["error: dataset name 'bad\\nname' has control characters: pass a plain --dataset NAME"]
