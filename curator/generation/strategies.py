"""Generation strategies: Jinja2 templates over a prompt row, run on the teacher or the target model.

A strategy turns one prompt row into the request a model answers (an optional system message and
a user message), or, with ``model: none``, into the response itself (``reference`` is the row's
reference as it is). The built-in library follows the two papers curator implements:

- the swift study (arXiv 2502.13514): ``direct``, ``cot``, ``clarify``, ``evaluate``;
- response-method selection (arXiv 2502.11779): ``reference``, ``rewrite``, ``own-words``,
  ``step-by-step``, ``teacher``.

Templates see the row's fields: ``prompt`` (the text of the last user message when the prompt
is a chat), ``reference``, ``task``, ``id``, and any other field the row carries. A template that
names a field a row lacks is refused before any request is made.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from curator.errors import InputError
from curator.io.data import Message, Prompt, PromptRow
from curator.io.readers import short_repr

MODELS = ("teacher", "target", "none")
STRATEGY_KEYS = {"description", "model", "system", "user"}
_ANSWER_LINE = "End with a final line of the form \"The answer is ...\"."


@dataclass(frozen=True)
class Strategy:
    """One way of making a candidate. ``user`` (and ``system``) are Jinja2 templates; ``model`` is
    ``teacher``, ``target`` (the model being fine-tuned) or ``none`` (the rendered ``user``
    template is the response, no model is asked)."""

    name: str
    user: str
    model: str = "teacher"
    system: str | None = None
    description: str = ""
    source: str = "built-in"

    def template_hash(self) -> str:
        """sha256 (16 hex) over the templates and the model role: the strategy's identity in a run."""
        blob = json.dumps({"system": self.system, "user": self.user, "model": self.model}, sort_keys=True)
        return hashlib.sha256(blob.encode("utf-8")).hexdigest()[:16]

    def fields(self) -> set[str]:
        """The row fields the templates name."""
        return _variables(self.user, self.name, self.source) | (_variables(self.system, self.name, self.source) if self.system else set())

    def request(self, row: PromptRow) -> list[Message]:
        """The chat messages sent to the model: the strategy's system message, the prompt's earlier
        turns, then the rendered user template in place of the last user message."""
        ctx = context(row)
        user = _render(self.user, ctx, self.name, self.source)
        history: list[Message] = [] if isinstance(row.prompt, str) else [dict(m) for m in row.prompt[:-1]]
        own_system = [m for m in history if m["role"] == "system"]
        history = [m for m in history if m["role"] != "system"]
        system_parts = ([_render(self.system, ctx, self.name, self.source)] if self.system else []) + [m["content"] for m in own_system]
        system = [{"role": "system", "content": "\n\n".join(system_parts)}] if system_parts else []
        return system + history + [{"role": "user", "content": user}]

    def response(self, row: PromptRow) -> str:
        """The response of a ``model: none`` strategy: its rendered user template, trimmed."""
        return _render(self.user, context(row), self.name, self.source).strip()


def _prompt_field(prompt: Prompt) -> str:
    return prompt if isinstance(prompt, str) else prompt[-1]["content"]


def context(row: PromptRow) -> dict[str, Any]:
    """What a template sees of a row: its fields, with ``prompt`` as the text of the question."""
    ctx = dict(row.fields)
    ctx["prompt"] = _prompt_field(row.prompt)
    ctx["id"] = row.id
    return ctx


# --------------------------------------------------------------------------- the built-in library

BUILT_IN: dict[str, Strategy] = {
    s.name: s
    for s in (
        Strategy("direct", "{{ prompt }}\n\nAnswer directly, without explaining your reasoning. " + _ANSWER_LINE, description="the answer alone, no reasoning (swift study)"),
        Strategy("cot", "{{ prompt }}\n\nThink step by step, showing your reasoning, then give the answer. " + _ANSWER_LINE, description="chain-of-thought: reasoning, then the answer (swift study)"),
        Strategy("clarify", "{{ prompt }}\n\nFirst restate the question in your own words and clarify what exactly it asks, then answer it. " + _ANSWER_LINE, description="restate and clarify the query, then answer (swift study)"),
        Strategy("evaluate", "{{ prompt }}\n\nPropose an answer, then check it critically step by step; if the check finds a mistake, correct it. " + _ANSWER_LINE, description="propose, check, correct (swift study)"),
        Strategy("reference", "{{ reference }}", model="none", description="the reference answer as it is (selection paper)"),
        Strategy("rewrite", "Question:\n{{ prompt }}\n\nReference answer:\n{{ reference }}\n\nRewrite the reference answer in your own words as a complete answer to the question. Keep its final answer unchanged. Reply with the rewritten answer only.", description="the teacher rewrites the reference (selection paper)"),
        Strategy("own-words", "Question:\n{{ prompt }}\n\nReference answer:\n{{ reference }}\n\nRestate the reference answer in your own words as a complete answer to the question. Keep its final answer unchanged. Reply with your answer only.", model="target", description="the target model restates the reference in its own words (selection paper)"),
        Strategy("step-by-step", "Question:\n{{ prompt }}\n\nReference answer:\n{{ reference }}\n\nRewrite the reference answer as numbered steps that lead to its final answer, keeping that answer unchanged. " + _ANSWER_LINE, description="the teacher rewrites the reference as steps (selection paper)"),
        Strategy("teacher", "{{ prompt }}", description="the teacher answers the prompt as it is (selection paper)"),
    )
}


# --------------------------------------------------------------------------- templates


def _environment() -> Any:
    from jinja2 import StrictUndefined
    from jinja2.sandbox import SandboxedEnvironment

    return SandboxedEnvironment(undefined=StrictUndefined, autoescape=False, keep_trailing_newline=False)


def _variables(source: str, name: str, where: str) -> set[str]:
    from jinja2 import TemplateSyntaxError, meta

    try:
        return set(meta.find_undeclared_variables(_environment().parse(source)))
    except TemplateSyntaxError as exc:
        raise InputError(f"{where}: strategy {name!r}: template syntax error on template line {exc.lineno}: {exc.message}: fix the Jinja2 template") from None


def _render(source: str, ctx: dict[str, Any], name: str, where: str) -> str:
    from jinja2 import TemplateError, UndefinedError

    try:
        return _environment().from_string(source).render(**ctx)
    except UndefinedError as exc:
        raise InputError(f"{where}: strategy {name!r}: {exc.message}: give the row that field, or drop the strategy") from None
    except TemplateError as exc:
        raise InputError(f"{where}: strategy {name!r}: the template failed: {exc}: fix the Jinja2 template") from None


def check_rows(strategies: list[Strategy], rows: list[PromptRow]) -> None:
    """Refuse, before any request, a (row, strategy) pair whose template names a field the row lacks."""
    for s in strategies:
        needed = s.fields()
        for row in rows:
            have = context(row)
            for f in sorted(needed):
                if f in have and not (isinstance(have[f], str) and not have[f].strip()):
                    continue
                if f == "reference":
                    raise InputError(f"{row.where}: strategy {s.name!r} needs a reference answer and this row has none: add a 'reference' field to every prompt row, or drop {s.name!r} from --strategies")
                raise InputError(f"{row.where}: strategy {s.name!r} ({s.source}) uses the field {f!r}, which this row lacks: add it to the rows, or fix the template")


# --------------------------------------------------------------------------- YAML files


def load_file(path: str | Path) -> dict[str, Strategy]:
    """Strategies defined in a YAML file: a mapping of name to ``{user, system, model, description}``.

    ``user`` is required; ``model`` is ``teacher`` (default), ``target`` or ``none``. Every error
    names the file, the strategy and the fix.
    """
    import yaml

    p = Path(path)
    try:
        data = yaml.safe_load(p.read_text(encoding="utf-8"))
    except OSError as exc:
        raise InputError(f"{p}: cannot read the strategies file ({exc.strerror}): check the path") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        at = f":{mark.line + 1}" if mark is not None else ""
        raise InputError(f"{p}{at}: not valid YAML ({getattr(exc, 'problem', None) or exc}): fix the file") from None
    if isinstance(data, dict) and set(data) == {"strategies"}:
        data = data["strategies"]
    if not isinstance(data, dict) or not data:
        raise InputError(f"{p}: a strategies file is a mapping of strategy name to {{user: ..., system: ..., model: teacher|target|none}}: see docs/generate.md")
    out: dict[str, Strategy] = {}
    for name, spec in data.items():
        if not isinstance(name, str) or not name.strip() or "," in name:
            raise InputError(f"{p}: strategy name {short_repr(name)} is invalid: use a non-empty name without commas")
        if not isinstance(spec, dict):
            raise InputError(f"{p}: strategy {name!r} is a {type(spec).__name__}: write it as a mapping with at least a 'user' template")
        unknown = sorted(set(spec) - STRATEGY_KEYS)
        if unknown:
            raise InputError(f"{p}: strategy {name!r} has unknown key {unknown[0]!r}: use {', '.join(sorted(STRATEGY_KEYS))}")
        user, system = spec.get("user"), spec.get("system")
        if not isinstance(user, str) or not user.strip():
            raise InputError(f"{p}: strategy {name!r} has no 'user' template: add one, e.g. user: \"{{{{ prompt }}}}\"")
        if system is not None and not isinstance(system, str):
            raise InputError(f"{p}: strategy {name!r}: 'system' must be a string template")
        model = spec.get("model", "teacher")
        if model not in MODELS:
            raise InputError(f"{p}: strategy {name!r} has model {short_repr(model)}: use teacher, target or none")
        s = Strategy(name, user, model, system or None, str(spec.get("description") or ""), str(p))
        s.fields()  # a syntax error is reported now, not at the first row
        out[name] = s
    return out


def resolve(specs: tuple[str, ...] | list[str]) -> list[Strategy]:
    """The strategies named by ``--strategies`` values: comma-separated names (built-in, or defined
    in a YAML file given in the same option), or a YAML file (all of its strategies)."""
    files: dict[str, Strategy] = {}
    names: list[str] = []
    for spec in specs:
        spec = spec.strip()
        if spec.lower().endswith((".yaml", ".yml")):
            defined = load_file(spec)
            clash = sorted(set(defined) & set(files))
            if clash:
                raise InputError(f"{spec}: strategy {clash[0]!r} is also defined in {files[clash[0]].source}: give it one definition")
            files.update(defined)
            names.extend(defined)
            continue
        names.extend(n.strip() for n in spec.split(",") if n.strip())
    if not names:
        raise InputError("--strategies is empty: name built-in strategies (e.g. direct,cot) or a YAML file of your own (see `curator generate --help`)")
    out: list[Strategy] = []
    for n in dict.fromkeys(names):
        s = files.get(n) or BUILT_IN.get(n)
        if s is None:
            raise InputError(f"unknown strategy {n!r} in --strategies: use one of {', '.join(BUILT_IN)}, or define it in a YAML file passed to --strategies")
        out.append(s)
    return out
