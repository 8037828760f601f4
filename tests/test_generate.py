"""`curator generate` on the local backend (the tiny model) and its input rules.

The OpenAI-compatible backend against a real `transformers serve` is in test_generate_serve.py.
"""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from curator.errors import InputError
from curator.generation.generate import GenerateConfig, GeneratorSpec, generate_file, select_prompts
from curator.generation.remote import RemoteBackend, RemoteConfig, normalise_url, retry_after
from curator.generation.strategies import BUILT_IN, load_file, resolve
from curator.io.data import PromptRow, content_hash, load_candidates, load_prompts
from tests.conftest import write_jsonl
from tests.test_cli import assert_one_error_line, invoke

TINY = GeneratorSpec(model="tiny-random")


def prompts_file(tmp_path: Path, n: int = 5, reference: bool = True) -> Path:
    rows = []
    for i in range(n):
        row: dict[str, Any] = {"id": f"p{i}", "prompt": f"What is {i} + {i}?", "task": "math" if i % 2 else "count"}
        if reference:
            row["reference"] = f"{i} plus {i} is {2 * i}. The answer is {2 * i}."
        rows.append(row)
    return write_jsonl(tmp_path / "prompts.jsonl", rows)


def config(*strategies: str, **kw: Any) -> GenerateConfig:
    kw.setdefault("max_new_tokens", 8)
    return GenerateConfig(strategies=strategies, teacher=TINY, target=TINY, **kw)


def rows_of(path: Path) -> list[dict[str, Any]]:
    return [json.loads(x) for x in path.read_text(encoding="utf-8").splitlines()]


def by_pair(path: Path) -> dict[tuple[str, str], str]:
    rows = rows_of(path)
    pairs = {(r["group"], r["strategy"]): r["response"] for r in rows}
    assert len(pairs) == len(rows), "a (prompt, strategy) pair was written twice"
    return pairs


# --------------------------------------------------------------------------- strategies


def row(**fields: Any) -> PromptRow:
    fields.setdefault("prompt", "What is 1 + 1?")
    return PromptRow(fields.get("id", "r"), fields["prompt"], fields.get("reference"), fields.get("task"), dict(fields), "x.jsonl:1")


def test_built_in_library_holds_both_papers_strategies_and_renders_each() -> None:
    assert list(BUILT_IN) == ["direct", "cot", "clarify", "evaluate", "reference", "rewrite", "own-words", "step-by-step", "teacher"]
    r = row(reference="It is 2. The answer is 2.")
    for s in BUILT_IN.values():
        if s.model == "none":
            assert s.response(r) == "It is 2. The answer is 2."
            continue
        msgs = s.request(r)
        assert msgs[-1]["role"] == "user" and "What is 1 + 1?" in msgs[-1]["content"]
        assert ("It is 2." in msgs[-1]["content"]) == ("reference" in s.fields())
    assert BUILT_IN["own-words"].model == "target" and BUILT_IN["rewrite"].model == "teacher"
    assert BUILT_IN["teacher"].request(r) == [{"role": "user", "content": "What is 1 + 1?"}]
    assert len({s.template_hash() for s in BUILT_IN.values()}) == len(BUILT_IN)


def test_chat_prompt_keeps_its_history_and_merges_system_messages(tmp_path: Path) -> None:
    f = tmp_path / "s.yaml"
    f.write_text("tutor:\n  system: 'You teach {{ task }}.'\n  user: 'Q: {{ prompt }}'\n")
    s = load_file(f)["tutor"]
    chat = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"}, {"role": "user", "content": "2+2?"}]
    msgs = s.request(row(prompt=chat, task="maths"))
    assert msgs == [
        {"role": "system", "content": "You teach maths.\n\nBe brief."},
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "Hello"},
        {"role": "user", "content": "Q: 2+2?"},
    ]


@pytest.mark.parametrize(
    "text, needle",
    [
        ("mine: {user: ''}", "has no 'user' template"),
        ("mine: {user: 'x', colour: red}", "unknown key 'colour'"),
        ("mine: {user: 'x', model: gpt}", "use teacher, target or none"),
        ("mine: {user: '{{ prompt'}", "template syntax error"),
        ("- a\n- b\n", "a mapping of strategy name"),
        ("mine: [1, 2", "not valid YAML"),
    ],
)
def test_bad_strategy_files_are_refused_with_the_file_and_the_fix(tmp_path: Path, text: str, needle: str) -> None:
    f = tmp_path / "bad.yaml"
    f.write_text(text)
    with pytest.raises(InputError, match=str(f).replace(".", r"\.")) as e:
        load_file(f)
    assert needle in str(e.value)


def test_resolve_mixes_names_and_files_and_refuses_unknown_names(tmp_path: Path) -> None:
    f = tmp_path / "mine.yaml"
    f.write_text("strategies:\n  socratic:\n    user: 'Ask yourself questions, then answer: {{ prompt }}'\n")
    assert [s.name for s in resolve(["direct,cot", str(f)])] == ["direct", "cot", "socratic"]
    assert [s.name for s in resolve([str(f), "socratic,direct"])] == ["socratic", "direct"]
    with pytest.raises(InputError, match="unknown strategy 'nope'"):
        resolve(["direct,nope"])
    with pytest.raises(InputError, match="--strategies is empty"):
        resolve([" , "])


# --------------------------------------------------------------------------- the local backend


def test_local_run_writes_one_candidate_per_prompt_and_strategy_with_provenance(tmp_path: Path) -> None:
    p = prompts_file(tmp_path)
    out = tmp_path / "out.jsonl"
    r = generate_file(p, out, config("direct", "reference", "own-words", seed=3))
    assert {k: c.written for k, c in r.strategies.items()} == {"direct": 5, "reference": 5, "own-words": 5}
    rows = rows_of(out)
    assert len(rows) == 15
    cands = {c.id: c for c in load_candidates(out)}  # every other command reads the output
    for x in rows:
        c = cands[x["id"]]
        assert x["id"] == content_hash(x["prompt"], x["response"], x["strategy"], x["group"])
        assert c.group == x["group"] and x["group"] in {f"p{i}" for i in range(5)}
        prov = x["provenance"]
        assert prov["template_hash"] == BUILT_IN[x["strategy"]].template_hash()
        if x["strategy"] == "reference":
            assert prov == {"strategy_role": "none", "template_hash": prov["template_hash"]}
            assert x["response"].endswith("The answer is " + str(2 * int(x["group"][1:])) + ".")
        else:
            assert prov["backend"] == "local" and prov["model"] == "tiny-random" and prov["seed"] == 3
            assert prov["sampling"] == {"temperature": 0.7, "top_p": 0.9, "max_new_tokens": 8}
            assert prov["strategy_role"] == ("target" if x["strategy"] == "own-words" else "teacher")
    side = json.loads((tmp_path / "out.generate.json").read_text())
    assert side["settings"]["seed"] == 3 and set(side["strategies"]) == {"direct", "reference", "own-words"}
    assert side["generators"]["teacher"] == {"backend": "local", "model": "tiny-random"}
    assert side["runs"][0]["counts"]["direct"]["written"] == 5


def test_rows_do_not_depend_on_batching_and_a_rerun_generates_nothing(tmp_path: Path) -> None:
    p = prompts_file(tmp_path)
    a, b = tmp_path / "a.jsonl", tmp_path / "b.jsonl"
    generate_file(p, a, config("direct", "cot"))
    generate_file(p, b, GenerateConfig(strategies=("direct", "cot"), teacher=GeneratorSpec(model="tiny-random", batch_size=1), target=TINY, max_new_tokens=8))
    assert by_pair(a) == by_pair(b)
    before = a.read_bytes()
    again = generate_file(p, a, config("direct", "cot"))
    assert again.written == 0 and {c.present for c in again.strategies.values()} == {5}
    assert a.read_bytes() == before


def test_an_interrupted_run_resumes_to_the_same_rows(tmp_path: Path) -> None:
    p = prompts_file(tmp_path, n=6)
    clean = tmp_path / "clean.jsonl"
    generate_file(p, clean, config("direct", "cot"))
    out = tmp_path / "out.jsonl"

    def stop_after_two(stage: str, done: int, total: int) -> None:
        if stage == "rows" and done == 2:
            raise KeyboardInterrupt

    cfg = GenerateConfig(strategies=("direct", "cot"), teacher=GeneratorSpec(model="tiny-random", batch_size=1), target=TINY, max_new_tokens=8)
    with pytest.raises(KeyboardInterrupt):
        generate_file(p, out, cfg, progress=stop_after_two)
    assert 1 <= len(rows_of(out)) < 12
    r = generate_file(p, out, cfg)
    assert sum(c.present for c in r.strategies.values()) + r.written == 12
    assert by_pair(out) == by_pair(clean)


def test_a_torn_last_line_is_repaired_and_regenerated(tmp_path: Path) -> None:
    p = prompts_file(tmp_path)
    out = tmp_path / "out.jsonl"
    generate_file(p, out, config("direct"))
    full = by_pair(out)
    lines = out.read_text().splitlines(keepends=True)
    out.write_text("".join(lines[:3]) + lines[3][:25])  # killed mid-write: 3 rows and a torn fourth
    r = generate_file(p, out, config("direct"))
    assert r.strategies["direct"].present == 3 and r.written == 2
    assert by_pair(out) == full
    # a whole last row whose newline was lost is kept, not cut
    out.write_text(out.read_text().rstrip("\n"))
    assert generate_file(p, out, config("direct")).written == 0
    assert by_pair(out) == full and out.read_text().endswith("\n")


@pytest.mark.parametrize(
    "change, needle",
    [
        ({"temperature": 0.5}, "--temperature 0.7, and this run asks for 0.5"),
        ({"seed": 1}, "--seed 0, and this run asks for 1"),
        ({"max_new_tokens": 9}, "--max-new-tokens 8"),
        ({"verify": "answer"}, "--verify 'none'"),
        ({"teacher": GeneratorSpec(model="smollm2-135m")}, "--model 'tiny-random', and this run asks for 'smollm2-135m'"),
    ],
)
def test_other_settings_into_the_same_output_are_refused_naming_the_setting(tmp_path: Path, change: dict[str, Any], needle: str) -> None:
    p = prompts_file(tmp_path, n=2)
    out = tmp_path / "out.jsonl"
    generate_file(p, out, config("direct"))
    before = out.read_bytes(), (tmp_path / "out.generate.json").read_bytes()
    kw: dict[str, Any] = {"strategies": ("direct",), "teacher": TINY, "target": TINY, "max_new_tokens": 8, **change}
    with pytest.raises(InputError, match="use the same setting") as e:
        generate_file(p, out, GenerateConfig(**kw))
    assert needle in str(e.value)
    assert (out.read_bytes(), (tmp_path / "out.generate.json").read_bytes()) == before


def test_a_changed_template_under_the_same_name_is_refused_and_new_strategies_join(tmp_path: Path) -> None:
    p = prompts_file(tmp_path, n=2)
    out = tmp_path / "out.jsonl"
    f = tmp_path / "s.yaml"
    f.write_text("mine: {user: 'Answer: {{ prompt }}'}\n")
    generate_file(p, out, config(str(f)))
    f.write_text("mine: {user: 'Answer briefly: {{ prompt }}'}\n")
    with pytest.raises(InputError, match="strategy 'mine' was generated from other templates"):
        generate_file(p, out, config(str(f)))
    r = generate_file(p, out, config("direct"))  # another strategy into the same file: allowed
    assert r.written == 2
    assert {k[1] for k in by_pair(out)} == {"mine", "direct"}


def test_per_strategy_picks_the_same_prompts_for_every_strategy_and_grows(tmp_path: Path) -> None:
    p = prompts_file(tmp_path, n=10)
    out = tmp_path / "out.jsonl"
    generate_file(p, out, config("direct", "reference", per_strategy=3))
    pairs = by_pair(out)
    groups = {g for g, _ in pairs}
    assert len(groups) == 3 and pairs.keys() == {(g, s) for g in groups for s in ("direct", "reference")}
    rows = load_prompts(p)
    assert {r.id for r in select_prompts(rows, 3, 0)} == groups
    assert len({frozenset(r.id for r in select_prompts(rows, 3, seed)) for seed in range(5)}) > 1  # the pick follows the seed
    assert {r.id for r in select_prompts(rows, 5, 0)} > groups  # and a larger N keeps it
    r = generate_file(p, out, config("direct", "reference"))  # then the full set: only the rest
    assert r.written == 14 and r.strategies["direct"].present == 3
    assert len(by_pair(out)) == 20


def test_verify_answer_drops_or_flags_disagreeing_answers_and_counts_them(tmp_path: Path) -> None:
    p = prompts_file(tmp_path, n=4)
    f = tmp_path / "s.yaml"
    f.write_text("always-two: {model: none, user: 'The answer is 2.'}\nsilent: {model: none, user: '{{ \"\" }}'}\n")
    out = tmp_path / "out.jsonl"
    r = generate_file(p, out, config(str(f), "reference", verify="answer"))
    assert r.strategies["always-two"].written == 1 and r.strategies["always-two"].dropped == 3  # only p1: 1 + 1 = 2
    assert r.strategies["reference"].written == 4 and r.strategies["reference"].dropped == 0
    assert r.strategies["silent"].empty == 4 and r.strategies["silent"].written == 0  # counted, never written
    assert {g for g, s in by_pair(out) if s == "always-two"} == {"p1"}
    side = json.loads((tmp_path / "out.generate.json").read_text())
    assert sorted((x["group"], x["reason"]) for x in side["skipped"] if x["strategy"] == "always-two") == [("p0", "answer-mismatch"), ("p2", "answer-mismatch"), ("p3", "answer-mismatch")]
    assert generate_file(p, out, config(str(f), "reference", verify="answer")).written == 0  # skipped pairs are not retried
    flagged = tmp_path / "flag.jsonl"
    r = generate_file(p, flagged, config(str(f), verify="answer", on_mismatch="flag"))
    assert r.strategies["always-two"].written == 4 and r.strategies["always-two"].flagged == 3
    assert sorted(x["answer_check"] for x in rows_of(flagged)) == ["match", "mismatch", "mismatch", "mismatch"]


def test_a_second_writer_of_the_same_output_is_refused(tmp_path: Path) -> None:
    from curator.generation.output import Output
    from curator.store.lock import StoreLockedError

    p = prompts_file(tmp_path, n=2)
    out = tmp_path / "out.jsonl"
    holder = Output(out)
    holder.open({"settings": config("direct").settings(), "generators": {}, "strategies": {}, "skipped": [], "runs": []})
    try:
        with pytest.raises(StoreLockedError, match="generate output is being written by pid"):
            generate_file(p, out, config("direct"))
    finally:
        holder.close()
    assert generate_file(p, out, config("direct")).written == 2


# --------------------------------------------------------------------------- bad input: one line, exit 2, nothing written


def _cli(tmp_path: Path, prompts: Path, *args: str) -> Any:
    return invoke(["-q", "generate", str(prompts), "--model", "tiny-random", "--target-model", "tiny-random", "--max-new-tokens", "4", "--out", str(tmp_path / "o.jsonl"), *args])


@pytest.mark.parametrize(
    "args, needles",
    [
        (["--strategies", "direct,nope"], ["unknown strategy 'nope'", "direct, cot, clarify"]),
        (["--strategies", "rewrite"], ["prompts.jsonl: line 1:", "strategy 'rewrite' needs a reference answer", "drop 'rewrite'"]),
        (["--strategies", "direct", "--per-strategy", "0"], ["--per-strategy 0 is invalid"]),
        (["--strategies", "direct", "--per-strategy", "-3"], ["--per-strategy -3 is invalid"]),
        (["--strategies", "direct", "--backend", "openai", "--base-url", "localhost:8000", "--model", "m"], ["--base-url 'localhost:8000' is not an http(s) URL"]),
        (["--strategies", "direct", "--backend", "openai", "--base-url", "ftp://h/v1", "--model", "m"], ["is not an http(s) URL"]),
        (["--strategies", "direct", "--backend", "openai", "--base-url", "http://127.0.0.1:9/v1", "--model", "m"], ["cannot reach an OpenAI-compatible server", "fix --base-url"]),
        (["--strategies", "direct", "--backend", "openai", "--model", "m"], ["needs --base-url"]),
        (["--strategies", "direct", "--base-url", "http://h/v1"], ["only for the openai backend"]),
        (["--strategies", "direct", "--verify", "answer"], ["no row has a 'reference'"]),
        (["--strategies", "direct", "--backend", "openai", "--base-url", "http://h/v1", "--model", "m", "--extra-body", "{bad"], ["--extra-body is not valid JSON"]),
        (["--strategies", "direct", "--backend", "openai", "--base-url", "http://h/v1", "--model", "m", "--extra-body", '{"seed": 1}'], ["--extra-body sets 'seed'"]),
    ],
)
def test_bad_input_is_one_line_and_exit_2_with_nothing_written(tmp_path: Path, args: list[str], needles: list[str]) -> None:
    p = prompts_file(tmp_path, reference=False)
    assert_one_error_line(_cli(tmp_path, p, *args), *needles)
    assert not (tmp_path / "o.jsonl").exists() and not (tmp_path / "o.generate.json").exists()


def test_a_template_naming_a_missing_field_is_refused_before_any_request(tmp_path: Path) -> None:
    p = write_jsonl(tmp_path / "prompts.jsonl", [{"prompt": "a", "context": "c1"}, {"prompt": "b"}])
    f = tmp_path / "s.yaml"
    f.write_text("grounded: {user: 'Context: {{ context }}\n\n{{ prompt }}'}\n")
    assert_one_error_line(_cli(tmp_path, p, "--strategies", str(f)), "prompts.jsonl: line 2:", "strategy 'grounded'", "uses the field 'context'")
    assert not (tmp_path / "o.jsonl").exists()


def test_an_output_that_generate_did_not_write_is_refused(tmp_path: Path) -> None:
    p = prompts_file(tmp_path)
    (tmp_path / "o.jsonl").write_text('{"prompt": "x", "response": "y", "strategy": "s"}\n')
    assert_one_error_line(_cli(tmp_path, p, "--strategies", "direct"), "was not written by curator generate")
    assert (tmp_path / "o.jsonl").read_text() == '{"prompt": "x", "response": "y", "strategy": "s"}\n'
    assert_one_error_line(invoke(["generate", str(p), "--strategies", "direct", "--out", str(tmp_path / "o.csv")]), "use a .jsonl name")


def test_cli_reports_counts_per_strategy(tmp_path: Path) -> None:
    p = prompts_file(tmp_path, n=3)
    r = _cli(tmp_path, p, "--strategies", "direct,reference", "--verify", "answer")
    assert r.exit_code == 0, r.output
    assert "for 3 of 3 prompts" in r.stdout
    assert "  reference: 3 written; 0 dropped by --verify" in r.stdout
    assert "teacher tiny-random (local): 3 answers" in r.stdout


# --------------------------------------------------------------------------- the HTTP client, against a test double


class _Echo(BaseHTTPRequestHandler):
    """Refuses every request with 401 and echoes the Authorization header, like a careless server."""

    def do_GET(self) -> None:  # noqa: N802
        body = json.dumps({"error": {"message": f"bad key {self.headers.get('Authorization')}"}}).encode()
        self.send_response(401)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    do_POST = do_GET

    def log_message(self, *a: Any) -> None:
        pass


class _EchoChat(_Echo):
    """Lists models freely; refuses chat requests with 401, echoing the Authorization header."""

    def do_GET(self) -> None:  # noqa: N802
        body = b'{"object": "list", "data": []}'
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


@pytest.mark.parametrize("handler", [_Echo, _EchoChat], ids=["models-refused", "chat-refused"])
def test_the_api_key_is_sent_as_a_bearer_token_and_never_printed(tmp_path: Path, handler: type, monkeypatch: pytest.MonkeyPatch) -> None:
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        p = prompts_file(tmp_path)
        secret = "sk-test-" + "7" * 24
        url = f"http://127.0.0.1:{server.server_port}/v1"
        r = invoke(["-q", "generate", str(p), "--strategies", "direct", "--backend", "openai", "--base-url", url, "--model", "m", "--api-key-env", "MY_KEY", "--out", str(tmp_path / "o.jsonl")], env={"MY_KEY": secret})
        line = assert_one_error_line(r, "refused the API key (HTTP 401", "bad key Bearer ***", "$MY_KEY")
        assert secret not in r.output and secret not in line
        assert not any(secret in f.read_text(errors="replace") for f in tmp_path.rglob("*") if f.is_file())
    finally:
        server.shutdown()


def test_urls_and_retry_after_headers() -> None:
    assert normalise_url("http://localhost:8000") == "http://localhost:8000/v1"
    assert normalise_url("http://localhost:8000/v1/") == "http://localhost:8000/v1"
    assert normalise_url("https://api.example.com/v1/chat/completions") == "https://api.example.com/v1"
    assert normalise_url("http://h:11434/api/v1") == "http://h:11434/api/v1"
    for bad in ("", "localhost:8000", "http://", "http://h:99999/v1", "http://h/v1?x=1"):
        with pytest.raises(InputError):
            normalise_url(bad)
    assert retry_after("3") == 3.0 and retry_after("0.5") == 0.5 and retry_after(None) is None and retry_after("soon") is None
    assert retry_after("100000") == 300.0  # capped
    assert retry_after("Wed, 21 Oct 2015 07:28:00 GMT") == 0.0  # a date in the past: no wait
    RemoteBackend(RemoteConfig("http://h/v1", "m")).close()


def test_docs_show_every_built_in_template_verbatim() -> None:
    doc = (Path(__file__).resolve().parent.parent / "docs" / "generate.md").read_text(encoding="utf-8")
    for s in BUILT_IN.values():
        assert f"`{s.name}` ({s.model})" in doc, s.name
        assert f"```jinja\n{s.user}\n```" in doc, s.name


def test_generate_killed_with_sigkill_resumes_to_the_clean_rows(tmp_path: Path) -> None:
    import signal
    import subprocess
    import sys
    import time

    p = prompts_file(tmp_path, n=30)
    base = [sys.executable, "-m", "curator.cli.main", "-q", "generate", str(p), "--strategies", "direct,cot", "--model", "tiny-random", "--max-new-tokens", "16", "--batch-size", "1"]
    subprocess.run([*base, "--out", str(tmp_path / "clean.jsonl")], check=True, capture_output=True, timeout=300)
    out = tmp_path / "out.jsonl"
    child = subprocess.Popen([*base, "--out", str(out)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and not (out.exists() and out.read_text().count("\n") >= 5):
        time.sleep(0.02)
    child.send_signal(signal.SIGKILL)
    child.wait(timeout=30)
    partial = out.read_text()
    assert 5 <= partial.count("\n") < 60, "the kill came after the run had finished"
    r = subprocess.run([*base, "--out", str(out)], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    assert by_pair(out) == by_pair(tmp_path / "clean.jsonl")


class _Stall(BaseHTTPRequestHandler):
    """Answers /models, and never answers a chat request (``arrived`` is set when one comes)."""

    arrived = threading.Event()

    def do_GET(self) -> None:  # noqa: N802
        body = b'{"object": "list", "data": []}'
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_POST(self) -> None:  # noqa: N802
        import time

        type(self).arrived.set()
        time.sleep(600)

    def log_message(self, *a: Any) -> None:
        pass


def test_ctrl_c_abandons_the_requests_in_flight_instead_of_waiting_for_them(tmp_path: Path) -> None:
    import signal
    import subprocess
    import sys
    import time

    server = ThreadingHTTPServer(("127.0.0.1", 0), _Stall)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        p = prompts_file(tmp_path)
        out = tmp_path / "o.jsonl"
        cmd = [sys.executable, "-m", "curator.cli.main", "-q", "generate", str(p), "--strategies", "direct", "--backend", "openai", "--base-url", f"http://127.0.0.1:{server.server_port}/v1", "--model", "m", "--timeout", "500", "--out", str(out)]
        child = subprocess.Popen(cmd, stderr=subprocess.PIPE, text=True)
        assert _Stall.arrived.wait(60)  # the requests are in flight, and will not be answered for 600 s
        time.sleep(0.5)
        child.send_signal(signal.SIGINT)
        err = child.communicate(timeout=120)[1]  # waiting for them would take --timeout (500 s)
        assert child.returncode == 130 and "interrupted: rerun the same command" in err
        assert not out.exists()  # nothing was made, so nothing is left
    finally:
        server.shutdown()


def test_generate_under_torchrun_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(InputError, match="runs in one process, not split across torchrun ranks"):
        generate_file(prompts_file(tmp_path), tmp_path / "o.jsonl", config("direct"))
    assert not (tmp_path / "o.jsonl").exists()
