#!/usr/bin/env python3
"""Build a multi-family strategy benchmark offline: per family, training prompts and held-out eval items.

Families and sources (read straight out of the wheels; neither package is installed):

* ``gsm8k``: the 8 GSM8K chain-of-thought exemplars in ``lm_eval/tasks/gsm8k/gsm8k-cot.yaml``
  (``lm-eval==0.4.13``). Every other gsm8k-style file in that wheel repeats the same 8, so this
  family is small: 5 training prompts and 3 eval items with the default sizes.
* ``bbh``: the BIG-Bench Hard CoT exemplars, ``lm_eval/tasks/bbh/cot_fewshot/*.yaml`` (27 tasks × 3).
* ``mmlu``: the MMLU Flan CoT prompts, ``lm_eval/tasks/mmlu/flan_cot_fewshot/_cot_prompts.json``.
* ``champ-math``: the CHAMP competition-math problems with step-by-step solutions
  (``champ-dataset==1.0.0``, ``champ_dataset/dataset_files/v0.json``).

For each family it writes ``OUT/<family>/prompts.jsonl`` (id, prompt, reference, task: the input
of ``curator generate``) and ``OUT/<family>/eval.jsonl`` (id, prompt, response, task: the eval
rows ``curator validate`` reads; the response is the source's reference answer), disjoint, from a
seeded split, and ``OUT/SOURCE.md``. The output is deterministic. With ``--generate`` it then runs
the real ``curator generate`` per family, writing ``OUT/<family>/candidates.jsonl``; after that,
``curator validate --suite OUT --out RUN`` runs the benchmark.

Usage:
  python scripts/build_strategy_suite.py --out benchmarks/strategy-suite
  python scripts/build_strategy_suite.py --out suite --generate [--model smollm2-135m] [--max-new-tokens 128]
Wheels are looked for at --lm-eval-wheel / --champ-wheel, and fetched with
``pip download --no-deps`` into their folder when missing (unless --offline).
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
from typing import Any, Callable, Sequence

import yaml

REPO_ROOT = Path(__file__).resolve().parent.parent
LM_EVAL = ("lm-eval==0.4.13", "lm_eval-0.4.13-py3-none-any.whl")
CHAMP = ("champ-dataset==1.0.0", "champ_dataset-1.0.0-py3-none-any.whl")
GSM8K_MEMBER = "lm_eval/tasks/gsm8k/gsm8k-cot.yaml"
BBH_DIR = "lm_eval/tasks/bbh/cot_fewshot/"
MMLU_MEMBER = "lm_eval/tasks/mmlu/flan_cot_fewshot/_cot_prompts.json"
CHAMP_MEMBER = "champ_dataset/dataset_files/v0.json"
# Damaged in the source file (see curator/assets/demo/SOURCE.md): broken LaTeX, options that are clock times.
MMLU_SKIP = ("abstract_algebra", "high_school_physics")
FAMILIES = ("gsm8k", "bbh", "mmlu", "champ-math")
STRATEGIES = ("direct", "cot", "clarify", "evaluate", "rewrite", "own-words")
COT = "Let's think step by step."
_MMLU_ANSWER = re.compile(r"^Let's think step by step\.\s*(?P<body>.*?)\s*the answer is \((?P<letter>[A-J])\)\.?\s*$", re.S | re.I)
_ANSWER = re.compile(r"answer is", re.I)


@dataclass(frozen=True)
class Item:
    """One source question with its reference answer."""

    family: str
    task: str
    key: str  # stable id inside the family, from the source's own order or identifier
    prompt: str
    reference: str
    member: str  # the file inside the wheel it came from


# --------------------------------------------------------------------------- sources


def ensure_wheel(path: Path, requirement: str, name: str, offline: bool) -> Path:
    """``path`` (a wheel file, or a folder holding it); ``pip download`` it there when missing."""
    wheel = path if path.suffix == ".whl" else path / name
    if wheel.is_file():
        return wheel
    if offline:
        raise SystemExit(f"{wheel}: missing, and --offline forbids fetching it: run `pip download --no-deps {requirement} -d {wheel.parent}`")
    wheel.parent.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", requirement, "-d", str(wheel.parent)]
    print("running:", " ".join(cmd), file=sys.stderr)
    subprocess.run(cmd, check=True)
    if not wheel.is_file():
        raise SystemExit(f"pip download did not produce {wheel}")
    return wheel


def licence(wheel: Path) -> str:
    """The licence the wheel's own metadata declares (its License field and licence classifiers)."""
    with zipfile.ZipFile(wheel) as zf:
        meta = next(n for n in zf.namelist() if n.endswith(".dist-info/METADATA"))
        lines = zf.read(meta).decode("utf-8").splitlines()
    field = [f"License: {ln.split(':', 1)[1].strip()}" for ln in lines if ln.startswith("License:")]
    classifiers = [f"classifier: {ln.split('::')[-1].strip()}" for ln in lines if ln.startswith("Classifier: License ::")]
    return "; ".join(field + classifiers) or "not declared"


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _clean(text: str) -> str:
    return text.strip().replace("\r\n", "\n")


def gsm8k_items(zf: zipfile.ZipFile) -> list[Item]:
    data = yaml.safe_load(zf.read(GSM8K_MEMBER))
    out = []
    for i, s in enumerate(data["fewshot_config"]["samples"]):
        target = " ".join(_clean(s["target"]).split())
        if not _ANSWER.search(target):
            raise ValueError(f"{GSM8K_MEMBER}[{i}]: no 'The answer is' in the target")
        out.append(Item("gsm8k", "gsm8k", str(i), _clean(s["question"]), target, GSM8K_MEMBER))
    return out


def bbh_items(zf: zipfile.ZipFile) -> list[Item]:
    out = []
    for member in sorted(n for n in zf.namelist() if n.startswith(BBH_DIR) and n.endswith(".yaml") and not Path(n).name.startswith("_")):
        task = Path(member).stem
        data = yaml.safe_load(zf.read(member))
        desc = _clean(data.get("description") or "")
        for i, s in enumerate(data["fewshot_config"]["samples"]):
            target = _clean(s["target"])
            if not _ANSWER.search(target):
                continue  # no final answer to check: not used
            prompt = f"{desc}\n\n{_clean(s['input'])}" if desc else _clean(s["input"])
            out.append(Item("bbh", task, f"{task}-{i}", prompt, f"{COT} {target}", member))
    return out


def mmlu_items(zf: zipfile.ZipFile) -> list[Item]:
    data = json.loads(zf.read(MMLU_MEMBER).decode("utf-8"))
    out = []
    for subject in sorted(data):
        if subject in MMLU_SKIP:
            continue
        for i, block in enumerate(data[subject].strip().split("\n\nQ: ")[1:]):
            question, sep, answer = block.strip().partition("\nA: ")
            m = _MMLU_ANSWER.match(answer)
            if not sep or "\nA: " in answer or "\n(A) " not in question or not m or len(re.findall(r"answer is", answer, re.I)) != 1:
                continue  # a block that does not parse cleanly is left out, not repaired
            out.append(Item("mmlu", subject, f"{subject}-{i}", question.strip(), f"{COT} {m['body']} The answer is ({m['letter']}).", MMLU_MEMBER))
    return out


def champ_items(zf: zipfile.ZipFile) -> list[Item]:
    data = json.loads(zf.read(CHAMP_MEMBER).decode("utf-8"))["problems"]

    def text(d: dict[str, Any]) -> str:
        return _clean(d.get("_text") or d["_raw_text"].replace("@@", ""))

    def order(pid: str) -> tuple[str, int]:
        head, _, num = pid.rpartition("_")
        return head, int(num) if num.isdigit() else -1

    out = []
    for pid in sorted(data, key=order):
        p = data[pid]
        steps = " ".join(text(s) for s in p["solution"]["steps"])
        answer = _clean(p.get("_answer") or p["_raw_answer"].replace("@@", "")).rstrip(".")
        if not steps or not answer:
            continue
        out.append(Item("champ-math", p["category"], pid.removeprefix("P_"), text(p), f"{steps} The answer is {answer}.", CHAMP_MEMBER))
    return out


READERS: dict[str, tuple[str, Callable[[zipfile.ZipFile], list[Item]]]] = {
    "gsm8k": ("lm-eval", gsm8k_items),
    "bbh": ("lm-eval", bbh_items),
    "mmlu": ("lm-eval", mmlu_items),
    "champ-math": ("champ", champ_items),
}


# --------------------------------------------------------------------------- the split


def split(items: Sequence[Item], n_train: int, n_eval: int, rng: random.Random) -> tuple[list[Item], list[Item]]:
    """Disjoint (train, eval) lists, dealt task by task so every eval task also has training prompts.

    Tasks (those with at least 2 items) and each task's items are shuffled with ``rng``; the first
    ``min(tasks, n_eval)`` tasks deal their items in rounds: round 0 to train, round 1 to eval, later
    rounds to whichever side still needs items. When those tasks hold fewer than ``n_train + n_eval``
    items, both sizes shrink in proportion (eval keeps at least 1).
    """
    if n_train < 1 or n_eval < 1:
        raise ValueError("train and eval sizes must be >= 1")
    by_task: dict[str, list[Item]] = {}
    for it in items:
        by_task.setdefault(it.task, []).append(it)
    tasks = sorted(by_task)
    rng.shuffle(tasks)
    for t in tasks:
        rng.shuffle(by_task[t])
    usable = [t for t in tasks if len(by_task[t]) >= 2]
    chosen = usable[: min(len(usable), n_eval)]
    avail = sum(len(by_task[t]) for t in chosen)
    if avail < 2:
        raise ValueError("fewer than 2 items in tasks with 2 or more items: nothing to split")
    if avail < n_train + n_eval:
        n_eval = min(avail - 1, max(1, round(avail * n_eval / (n_train + n_eval))))
        n_train = avail - n_eval
    train: list[Item] = []
    held: list[Item] = []
    for r in range(max(len(by_task[t]) for t in chosen)):
        for t in chosen:
            if r >= len(by_task[t]) or (len(train) >= n_train and len(held) >= n_eval):
                continue
            train_first = r != 1 or len(held) >= n_eval
            (train if train_first and len(train) < n_train else held).append(by_task[t][r])
    return train, held


def prompt_row(it: Item) -> dict[str, str]:
    return {"id": f"{it.family}-{it.key}", "prompt": it.prompt, "reference": it.reference, "task": it.task}


def eval_row(it: Item) -> dict[str, str]:
    return {"id": f"eval-{it.family}-{it.key}", "prompt": it.prompt, "response": it.reference, "task": it.task}


def write_jsonl(path: Path, rows: list[dict[str, str]]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8", newline="\n")


# --------------------------------------------------------------------------- build


def build(wheels: dict[str, Path], out: Path, families: Sequence[str], n_train: int, n_eval: int, seed: int, max_chars: int) -> dict[str, dict[str, Any]]:
    """Write every family's prompts.jsonl and eval.jsonl and OUT/SOURCE.md; return per-family counts."""
    counts: dict[str, dict[str, Any]] = {}
    for fam in families:
        source, reader = READERS[fam]
        with zipfile.ZipFile(wheels[source]) as zf:
            found = reader(zf)
        kept = [it for it in found if len(it.prompt) + len(it.reference) <= max_chars]
        train, held = split(kept, n_train, n_eval, random.Random(f"strategy-suite:{seed}:{fam}"))
        if {t.prompt for t in train} & {e.prompt for e in held}:
            raise SystemExit(f"{fam}: a question is both a training prompt and an eval item; the source repeats it: report this")
        write_jsonl(out / fam / "prompts.jsonl", [prompt_row(it) for it in train])
        write_jsonl(out / fam / "eval.jsonl", [eval_row(it) for it in held])
        members = sorted({it.member for it in found})
        counts[fam] = {"source": source, "members": members, "parsed": len(found), "short": len(kept), "train": len(train), "eval": len(held),
                       "tasks_train": len({t.task for t in train}), "tasks_eval": len({t.task for t in held}),
                       "chars": round(sum(len(t.prompt) + len(t.reference) for t in train + held) / max(1, len(train) + len(held)))}
    (out / "SOURCE.md").write_text(source_md(wheels, counts, n_train, n_eval, seed, max_chars), encoding="utf-8", newline="\n")
    return counts


def source_md(wheels: dict[str, Path], counts: dict[str, dict[str, Any]], n_train: int, n_eval: int, seed: int, max_chars: int) -> str:
    reqs = {"lm-eval": LM_EVAL[0], "champ": CHAMP[0]}
    used = sorted({c["source"] for c in counts.values()})
    lines = [
        "# Strategy suite: sources and construction",
        "",
        "Generated by `scripts/build_strategy_suite.py`; do not edit by hand. Each family folder holds",
        "`prompts.jsonl` (id, prompt, reference, task: the input of `curator generate`) and `eval.jsonl`",
        "(id, prompt, response, task: held-out eval items whose `response` is the source's reference answer).",
        "`--generate` adds `candidates.jsonl`, made with `curator generate`.",
        "",
        "## Sources",
        "",
        "| package | wheel sha256 | licence (package metadata) | files used |",
        "|---|---|---|---|",
    ]
    for s in used:
        members = sorted({m for c in counts.values() if c["source"] == s for m in c["members"]})
        shown = [m for m in members if not m.startswith(BBH_DIR)] + ([f"`{BBH_DIR}*.yaml`"] if any(m.startswith(BBH_DIR) for m in members) else [])
        lines.append(f"| `{reqs[s]}` | `{sha256(wheels[s])}` | {licence(wheels[s])} | " + ", ".join(m if m.startswith("`") else f"`{m}`" for m in shown) + " |")
    lines += [
        "",
        "Upstream data, as redistributed by those packages: GSM8K chain-of-thought exemplars (Wei et al. 2022, on",
        "GSM8K, openai/grade-school-math, MIT); BIG-Bench Hard CoT prompts (suzgun/BIG-Bench-Hard, MIT);",
        "MMLU questions (hendrycks/test, MIT) with the Flan CoT answers; CHAMP (Mao, Kim and Zhou 2024,",
        "https://yujunmao1.github.io/CHAMP/, MIT per its LICENSE in the wheel).",
        "",
        "## Rows",
        "",
        "- gsm8k: prompt = the question; reference = the exemplar's worked answer (\"... The answer is N.\"). task `gsm8k`.",
        "- bbh: prompt = the task's description, a blank line, then the exemplar input; reference = \"Let's think step by step. \" + the",
        "  exemplar's target (\"... So the answer is X.\"). task = the BBH task (file name).",
        "- mmlu: prompt = the question with its choice line; reference = \"Let's think step by step. <reasoning> The answer is (X).\";",
        "  blocks that do not parse cleanly are left out, and so are the damaged subjects " + ", ".join(f"`{s}`" for s in MMLU_SKIP) + ". task = the subject.",
        "- champ-math: prompt = the problem; reference = the solution steps joined by spaces, then \"The answer is <answer>.\". task = the category.",
        "",
        f"Only items with len(prompt) + len(reference) <= {max_chars} characters are used (`--max-chars`), to keep a 135M model on a CPU cheap.",
        "",
        "## Split",
        "",
        f"Seed {seed} (`--seed`), sizes {n_train} training prompts and {n_eval} eval items per family (`--train`, `--eval`). Per family, tasks with",
        "at least 2 items and each task's items are shuffled (`random.Random(\"strategy-suite:<seed>:<family>\")`); the first min(tasks, eval size)",
        "tasks deal their items in rounds: round 0 to training, round 1 to eval, later rounds to whichever side still needs items. So every eval",
        "task also has training prompts (in-task influence is defined) and the two sets never share a question. A family with fewer",
        "items than asked for shrinks both sides in proportion.",
        "",
        "| family | parsed | within length | train | eval | tasks (train / eval) | mean chars (prompt + reference) |",
        "|---|---|---|---|---|---|---|",
    ]
    for fam, c in counts.items():
        lines.append(f"| {fam} | {c['parsed']} | {c['short']} | {c['train']} | {c['eval']} | {c['tasks_train']} / {c['tasks_eval']} | {c['chars']} |")
    if "gsm8k" in counts:
        lines += ["", f"gsm8k is small on purpose: lm-eval 0.4.13 ships only the 8 GSM8K CoT exemplars (its other gsm8k-style files repeat",
                  f"the same 8), so it has {counts['gsm8k']['train']} training prompts and {counts['gsm8k']['eval']} eval items. Its measured ranking rests on",
                  "very few eval items: read it as the weakest family."]
    lines += ["", "## Rebuild", "", "```", "python scripts/build_strategy_suite.py --out DIR            # wheels fetched with pip download when missing",
              "python scripts/build_strategy_suite.py --out DIR --generate # then curator generate per family (SmolLM2 by default)", "```", ""]
    return "\n".join(lines)


def generate(out: Path, families: Sequence[str], strategies: Sequence[str], model: str, max_new_tokens: int, per_strategy: int | None, seed: int, device: str | None, batch_size: int | None) -> None:
    """Run the real ``curator generate`` per family into ``OUT/<family>/candidates.jsonl`` (resumes)."""
    for fam in families:
        cmd = [sys.executable, "-m", "curator.cli.main", "generate", str(out / fam / "prompts.jsonl"), "--strategies", ",".join(strategies),
               "--model", model, "--target-model", model, "--max-new-tokens", str(max_new_tokens), "--seed", str(seed),
               "--out", str(out / fam / "candidates.jsonl")]
        cmd += ["--per-strategy", str(per_strategy)] if per_strategy else []
        cmd += ["--device", device] if device else []
        cmd += ["--batch-size", str(batch_size)] if batch_size else []
        print("running:", " ".join(cmd), file=sys.stderr, flush=True)
        done = subprocess.run(cmd, cwd=REPO_ROOT)
        if done.returncode:
            raise SystemExit(f"curator generate failed for {fam} (exit {done.returncode}); rerun this script with the same options to continue")


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=REPO_ROOT / "benchmarks" / "strategy-suite", help="suite folder (default: benchmarks/strategy-suite)")
    ap.add_argument("--lm-eval-wheel", type=Path, default=Path("/tmp/lmeval"), help=f"{LM_EVAL[1]}, or a folder holding it")
    ap.add_argument("--champ-wheel", type=Path, default=Path("/tmp/champ"), help=f"{CHAMP[1]}, or a folder holding it")
    ap.add_argument("--offline", action="store_true", help="never run pip download; a missing wheel is an error")
    ap.add_argument("--families", default=",".join(FAMILIES), help=f"comma-separated subset of {','.join(FAMILIES)}")
    ap.add_argument("--train", type=int, default=16, help="training prompts per family (default 16)")
    ap.add_argument("--eval", type=int, default=12, help="held-out eval items per family (default 12)")
    ap.add_argument("--seed", type=int, default=0, help="split seed, and the generation seed (default 0)")
    ap.add_argument("--max-chars", type=int, default=900, help="longest prompt + reference used, in characters (default 900)")
    ap.add_argument("--generate", action="store_true", help="then run `curator generate` per family into <family>/candidates.jsonl")
    ap.add_argument("--strategies", default=",".join(STRATEGIES), help=f"strategies to generate (default {','.join(STRATEGIES)})")
    ap.add_argument("--model", default="smollm2-135m", help="teacher and target model of `curator generate` (default smollm2-135m)")
    ap.add_argument("--max-new-tokens", type=int, default=128, help="longest generated answer (default 128)")
    ap.add_argument("--per-strategy", type=int, default=None, help="generate for only N prompts per family (a smoke run)")
    ap.add_argument("--device", default=None, help="--device for curator generate")
    ap.add_argument("--batch-size", type=int, default=None, help="--batch-size for curator generate")
    args = ap.parse_args(argv)
    args.families = [f.strip() for f in args.families.split(",") if f.strip()]
    bad = [f for f in args.families if f not in FAMILIES]
    if bad or not args.families:
        ap.error(f"--families: unknown {', '.join(bad) or '(none given)'}; use some of {', '.join(FAMILIES)}")
    if args.train < 1 or args.eval < 1:
        ap.error("--train and --eval must be >= 1")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    wheels = {}
    if any(READERS[f][0] == "lm-eval" for f in args.families):
        wheels["lm-eval"] = ensure_wheel(args.lm_eval_wheel, *LM_EVAL, args.offline)
    if "champ-math" in args.families:
        wheels["champ"] = ensure_wheel(args.champ_wheel, *CHAMP, args.offline)
    counts = build(wheels, args.out, args.families, args.train, args.eval, args.seed, args.max_chars)
    for fam, c in counts.items():
        note = "" if (c["train"], c["eval"]) == (args.train, args.eval) else f" (asked for {args.train}/{args.eval}: the source has fewer)"
        print(f"{fam}: {c['train']} training prompts, {c['eval']} eval items over {c['tasks_eval']} task(s){note}")
    print(f"wrote {args.out}/<family>/prompts.jsonl, eval.jsonl and {args.out / 'SOURCE.md'}")
    if args.generate:
        generate(args.out, args.families, [s.strip() for s in args.strategies.split(",") if s.strip()], args.model, args.max_new_tokens, args.per_strategy, args.seed, args.device, args.batch_size)
        print(f"candidates written; run: curator validate --suite {args.out} --out <run folder>")
    return 0


if __name__ == "__main__":
    sys.exit(main())
