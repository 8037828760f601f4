"""`curator generate`: each strategy's candidates, from a local model or an OpenAI-compatible server."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from curator.cli.render import device_from, device_options, progress

STRATEGY_HELP = """Strategies, comma-separated or repeated: built-in names (direct, cot, clarify, evaluate,
reference, rewrite, own-words, step-by-step, teacher; see docs/generate.md), or a YAML file of your own
templates (all its strategies)."""


def _extra(text: str | None, flag: str) -> dict[str, Any]:
    import json

    from curator.errors import InputError

    if not text:
        return {}
    try:
        value = json.loads(text)
    except ValueError as exc:
        raise InputError(f"{flag} is not valid JSON ({exc}): write an object, e.g. '{{\"top_k\": 20}}'") from None
    if not isinstance(value, dict):
        raise InputError(f"{flag} must be a JSON object of request fields, e.g. '{{\"top_k\": 20}}'")
    return value


def _spec(backend: str, model: str | None, base_url: str | None, extra_body: str | None, api_key_env: str, concurrency: int, timeout: float, retries: int, batch_size: int, role: str) -> Any:
    from curator.errors import InputError
    from curator.generation.generate import GeneratorSpec
    from curator.generation.remote import RemoteConfig

    flag = "--model" if role == "teacher" else "--target-model"
    url_flag = "--base-url" if role == "teacher" else "--target-base-url"
    extra_flag = "--extra-body" if role == "teacher" else "--target-extra-body"
    extra = _extra(extra_body, extra_flag)
    if backend == "openai":
        if not base_url:
            raise InputError(f"the openai backend needs {url_flag}, e.g. http://localhost:8000/v1")
        if not model:
            raise InputError(f"the openai backend needs {flag}: the model name the server serves (see its /v1/models)")
        return GeneratorSpec("openai", model, RemoteConfig(base_url, model, api_key_env, concurrency, timeout, retries=retries, extra_body=extra), batch_size)
    if base_url or extra:
        raise InputError(f"{url_flag if base_url else extra_flag} is only for the openai backend: add {'--backend' if role == 'teacher' else '--target-backend'} openai, or drop it")
    return GeneratorSpec("local", model or "smollm2-135m", None, batch_size)


@click.command()
@click.argument("prompts", type=click.Path(path_type=Path))
@click.option("--strategies", multiple=True, required=True, metavar="LIST|FILE", help=STRATEGY_HELP)
@click.option("--out", required=True, type=click.Path(path_type=Path), help="Candidates file (.jsonl), appended to; its run record is <name>.generate.json beside it. A rerun continues it.")
@click.option("--per-strategy", type=int, default=None, help="Generate for only N prompts, the same N for every strategy (a seeded pick; a larger N keeps them). Default: all.")
@click.option("--backend", type=click.Choice(["local", "openai"]), default="local", show_default=True, help="The teacher: a model run here, or an OpenAI-compatible server.")
@click.option("--model", default=None, help="Teacher model: local spec or folder [default: smollm2-135m], or the served model name (openai).")
@click.option("--base-url", default=None, help="Teacher server's API root (openai), e.g. http://localhost:8000/v1.")
@click.option("--extra-body", default=None, metavar="JSON", help="Extra fields for every teacher request (openai), e.g. '{\"top_k\": 20}'; `transformers serve` samples only with '{\"generation_config\": \"{\\\"do_sample\\\": true}\"}'.")
@click.option("--target-backend", type=click.Choice(["local", "openai"]), default="local", show_default=True, help="The target model (own-words, and model: target strategies).")
@click.option("--target-model", default=None, help="Target model: local spec or folder [default: smollm2-135m], or the served model name (openai).")
@click.option("--target-base-url", default=None, help="Target server's API root (openai).")
@click.option("--target-extra-body", default=None, metavar="JSON", help="Extra fields for every target request (openai).")
@click.option("--api-key-env", default="OPENAI_API_KEY", show_default=True, help="Environment variable holding the servers' API key (sent as a Bearer token; never printed). Unset: no key.")
@click.option("--concurrency", type=int, default=8, show_default=True, help="Requests in flight per server (openai).")
@click.option("--timeout", type=float, default=120.0, show_default=True, help="Seconds to wait for one answer (openai).")
@click.option("--retries", type=int, default=6, show_default=True, help="Retries of a request after a connection error, timeout, 5xx or 429 (openai).")
@click.option("--batch-size", type=int, default=32, show_default=True, help="Prompts per generation batch (local); one row each, so larger batches decode faster per row.")
@click.option("--temperature", type=float, default=0.7, show_default=True, help="Sampling temperature (0 = greedy).")
@click.option("--top-p", type=float, default=0.9, show_default=True, help="Nucleus sampling threshold.")
@click.option("--max-new-tokens", type=int, default=256, show_default=True, help="Longest answer, in tokens.")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of the sampling and of the --per-strategy pick.")
@click.option("--verify", type=click.Choice(["none", "answer"]), default="none", show_default=True, help="answer: compare each answer's final answer with the row's reference.")
@click.option("--on-mismatch", type=click.Choice(["drop", "flag"]), default="drop", show_default=True, help="With --verify answer: drop a disagreeing answer, or keep it with answer_check=mismatch.")
@device_options
@click.pass_context
def generate(ctx: click.Context, prompts: Path, strategies: tuple[str, ...], out: Path, per_strategy: int | None, backend: str, model: str | None, base_url: str | None, extra_body: str | None, target_backend: str, target_model: str | None, target_base_url: str | None, target_extra_body: str | None, api_key_env: str, concurrency: int, timeout: float, retries: int, batch_size: int, temperature: float, top_p: float, max_new_tokens: int, seed: int, verify: str, on_mismatch: str, **kw: object) -> None:
    """Generate each strategy's candidate responses for the prompts in PROMPTS.

    PROMPTS rows carry `prompt` (text or chat messages) and optionally `reference`, `task`, `id`
    and any field your templates use. Each output row is a candidate (id, group, prompt, response,
    strategy, task) with its provenance. A rerun generates only the missing (prompt, strategy)
    pairs; other settings into the same --out are refused.

    \b
    Cheap first, then full (docs/quickstart.md):
      curator generate prompts.jsonl --strategies direct,cot,clarify,evaluate --per-strategy 8 --out sample.jsonl
      curator align sample.jsonl --out sample-scores.parquet
      curator select sample-scores.parquet --out selection/
      curator generate prompts.jsonl --strategies WINNER --out candidates.jsonl
    """
    from curator.generation.generate import GenerateConfig, generate_file

    device = device_from(kw)
    teacher = _spec(backend, model, base_url, extra_body, api_key_env, concurrency, timeout, retries, batch_size, "teacher")
    target = _spec(target_backend, target_model, target_base_url, target_extra_body, api_key_env, concurrency, timeout, retries, batch_size, "target")
    config = GenerateConfig(strategies=strategies, teacher=teacher, target=target, per_strategy=per_strategy, temperature=temperature, top_p=top_p, max_new_tokens=max_new_tokens, seed=seed, verify=verify, on_mismatch=on_mismatch, device=device)
    r = generate_file(prompts, out, config, progress=progress(ctx))
    if per_strategy is not None and per_strategy > r.prompts:
        click.echo(f"note: --per-strategy {per_strategy} is more than the {r.prompts} prompts: used all of them", err=True)
    click.echo(f"generated {r.written} candidate rows for {r.selected} of {r.prompts} prompts into {r.out} in {r.seconds:.1f}s")
    for name, c in r.strategies.items():
        extra = [f"{n} {label}" for n, label in ((c.present, "already there"), (c.empty, "empty (not written)"), (c.dropped, "dropped by --verify"), (c.flagged, "flagged by --verify"), (c.truncated, "cut at --max-new-tokens")) if n or (label == "dropped by --verify" and verify == "answer" and on_mismatch == "drop")]
        click.echo(f"  {name}: {c.written} written" + (f"; {', '.join(extra)}" if extra else ""))
    for role, s in r.requests.items():
        if s["backend"] == "openai":
            rate = s["completed"] / s["seconds"] if s["seconds"] else 0.0
            click.echo(f"{role} {s['model']}: {s['completed']} requests in {s['seconds']:.1f}s ({rate:.2f}/s), {s['retries']} retries ({s['rate_limited']} rate-limited, {s['server_errors']} server errors, {s['connection_errors']} connection errors)")
        else:
            rate = s["generated"] / s["seconds"] if s["seconds"] else 0.0
            click.echo(f"{role} {s['model']} (local): {s['generated']} answers in {s['seconds']:.1f}s ({rate:.2f}/s)")
    click.echo(f"run record: {r.sidecar}")
