"""The `curator` command."""

from __future__ import annotations

from pathlib import Path

import click

from curator import __version__
from curator.cli.render import CuratorGroup, device_from, device_options, render_side_by_side, lora_from, lora_options, model_option, progress, say_library_warnings
from curator.config import GradientConfig, IndexConfig, ProjectionConfig
from curator.alignment.metrics import ALL_METRICS
from curator.errors import InputError


@click.group(cls=CuratorGroup, context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(__version__, prog_name="curator")
@click.option("--quiet", "-q", is_flag=True, help="No progress bars.")
def cli(quiet: bool) -> None:
    """Pick the candidate responses and generation strategies that belong in a fine-tuning set.

    Influence: per-example LoRA gradients of the target model, randomly projected into a FAISS
    store; a candidate's influence on an eval task is its mean cosine to that task's eval items.

    Alignment: k outputs sampled from the target model per prompt; a candidate's alignment is
    its mean similarity to them, and the best-aligned strategy is the recommended one.

    \b
    Typical run:
      curator generate prompts.jsonl --strategies direct,cot --out candidates.jsonl
      curator index candidates.jsonl --out train_store
      curator index eval.jsonl --out eval_store
      curator influence --train train_store --eval eval_store --out influence.parquet
      curator study --train train_store --eval eval_store --out study/
      curator align candidates.jsonl --out scores.parquet
      curator select scores.parquet --out selection/
      curator rank scores.parquet --influence influence.parquet --out ranking.csv

    Commands that run a model take --device (auto, cpu, cuda, cuda:N, mps; or set
    CURATOR_DEVICE) and --dtype (auto, fp32, bf16, fp16).
    """
    say_library_warnings()


@cli.command()
@click.argument("data", type=click.Path(path_type=Path))
@click.option("--out", required=True, type=click.Path(path_type=Path), help="Store directory (created, or resumed if it exists).")
@click.option("--as", "role", type=click.Choice(["auto", "candidates", "eval"]), default="auto", show_default=True, help="Row kind; auto = candidates when every row has a strategy.")
@model_option
@click.option("--kind", type=click.Choice(["sgd", "adam"]), default="sgd", show_default=True, help="Raw gradient, or LESS's Adam-preconditioned form (needs --checkpoint).")
@click.option("--checkpoint", type=click.Path(path_type=Path), default=None, help="A checkpoint-N folder from `curator warmup`.")
@click.option("--dim", type=int, default=8192, show_default=True, help="Projection dimension.")
@click.option("--seed", type=int, default=0, show_default=True, help="Projection seed.")
@click.option("--projection", "projection_kind", type=click.Choice(["sparse", "rademacher"]), default="sparse", show_default=True, help="Sparse JL (fast) or the dense Rademacher matrix (slow on large adapters).")
@click.option("--nonzeros", type=int, default=4, show_default=True, help="Nonzeros per gradient coordinate of the sparse projection.")
@click.option("--max-length", type=int, default=512, show_default=True, help="Truncate longer sequences, keeping response tokens first.")
@click.option("--batch-size", type=int, default=32, show_default=True, help="Rows per committed batch.")
@click.option("--tokens-per-batch", type=int, default=None, help="Tokens per batched backward (default 1024): packed without padding on Llama, Mistral and Qwen2/3 models, else length-bucketed and padded.")
@click.option("--gradient-checkpointing", is_flag=True, help="Recompute each decoder layer in the backward instead of keeping its activations: long sequences fit (same gradients, ~30% slower).")
@click.option("--search", default=None, metavar="TYPE[:K=V,...]", help="Index for --top-k searches: flat (exact; a new store's default), ivf, ivfpq or hnsw, e.g. ivf:nlist=1024,nprobe=32. Omitted: keep the store's. A new type rebuilds the index.")
@click.option("--nproc", type=int, default=1, show_default=True, help="Ranks on this node, started through torchrun's launcher (gloo on the CPU, nccl on CUDA; one GPU per rank). For several nodes, run under torchrun instead (docs/scale.md).")
@lora_options
@device_options
@click.pass_context
def index(ctx: click.Context, data: Path, out: Path, role: str, model: str, kind: str, checkpoint: Path | None, dim: int, seed: int, max_length: int, batch_size: int, tokens_per_batch: int | None, gradient_checkpointing: bool, nproc: int, **kw: object) -> None:
    """Featurise DATA (candidates or eval rows) into a gradient store at --out.

    Reruns resume: rows already in the store are skipped. Under torchrun (or with --nproc N)
    each rank featurises its share of the rows into the same store.
    """
    if nproc != 1:
        _launch_ranks(nproc, out)
        return
    from curator.influence.indexing import index_file

    gradient = GradientConfig(kind=kind, max_length=max_length, checkpoint=str(checkpoint) if checkpoint else None, tokens_per_batch=tokens_per_batch, gradient_checkpointing=gradient_checkpointing)
    device = device_from(kw)
    config = IndexConfig(model=model, lora=lora_from(kw), projection=ProjectionConfig(dim=dim, seed=seed, kind=str(kw.pop("projection_kind")), nonzeros=int(kw.pop("nonzeros"))), gradient=gradient, batch_size=batch_size, device=device)
    search = kw.pop("search")
    if search is not None:
        from dataclasses import replace

        config = replace(config, search=str(search))
    r = index_file(data, out, config, role=role, progress=progress(ctx))
    if r.rank != 0:  # rank 0 reports the job
        return
    ranks = f" on {r.world} ranks" if r.world > 1 else ""
    click.echo(f"indexed {r.rows_total} {r.role} rows into {r.store} ({r.rows_added} new, {r.rows_skipped} already there) in {r.seconds:.1f}s{ranks}")
    if r.truncated:
        click.echo(f"{r.truncated} row(s) truncated to --max-length {max_length} (response tokens kept first)")
    idx = r.index or {}
    if idx.get("fallback"):
        click.echo(f"search {idx['requested']}: {idx['fallback']}")
    elif idx.get("type") in ("ivf", "ivfpq", "hnsw"):
        params = ",".join(f"{k}={v}" for k, v in idx["params"].items())
        click.echo(f"search index: {idx['faiss']} ({params}), {idx['bytes_per_example']:.0f} bytes per example")


def _launch_ranks(nproc: int, out: Path) -> None:
    """Run this same `curator index` command as NPROC ranks of a one-node torchrun job."""
    import sys

    from curator.distributed.group import launched
    from curator.distributed.launch import launch_local
    from curator.store.ranks import rank_failure

    if nproc < 1:
        raise InputError(f"--nproc {nproc} is invalid: use an integer >= 1")
    if launched():
        raise InputError("--nproc starts ranks itself: leave it out when running under torchrun")
    args, skip = [], False
    for a in sys.argv[1:]:
        if skip:
            skip = False
        elif a == "--nproc":
            skip = True
        elif not a.startswith("--nproc="):
            args.append(a)
    code = launch_local(nproc, args, describe=lambda rank: rank_failure(out, rank))
    if code:
        sys.exit(code)


store_options = [
    click.option("--train", "train", multiple=True, required=True, type=click.Path(path_type=Path), help="Candidate store; repeat once per checkpoint."),
    click.option("--eval", "evals", multiple=True, required=True, type=click.Path(path_type=Path), help="Eval store; repeat once per checkpoint."),
]


def with_stores(f):  # type: ignore[no-untyped-def]
    for opt in reversed(store_options):
        f = opt(f)
    return f


@cli.command()
@with_stores
@click.option("--out", required=True, type=click.Path(path_type=Path), help="Output table: .parquet, .csv or .jsonl.")
@click.option("--top-k", type=int, default=None, help="Also write the K most influential candidates per eval item.")
@click.option("--top-k-out", type=click.Path(path_type=Path), default=None, help="Where to write --top-k rows (default: OUT with .topk before the suffix).")
def influence(train: tuple[Path, ...], evals: tuple[Path, ...], out: Path, top_k: int | None, top_k_out: Path | None) -> None:
    """Score every candidate's influence on each eval task (mean cosine, via FAISS)."""
    from curator.influence import scoring as inf
    from curator.io.tables import check_table_path, write_table

    check_table_path(out)
    if top_k is not None and top_k < 1:
        raise InputError(f"--top-k {top_k} is invalid: use an integer >= 1")
    if top_k_out is not None:
        check_table_path(top_k_out)
    space = inf.open_space(train, evals)
    table = inf.influence_scores(space)
    write_table(table, out)
    tasks = [c for c in table.columns if c.startswith(inf.INFLUENCE_PREFIX)]
    click.echo(f"wrote influence of {len(table)} candidates on {len(tasks)} eval task(s) to {out}")
    if top_k is not None:
        target = top_k_out or out.with_name(f"{out.stem}.topk{out.suffix}")
        write_table(inf.top_k(space, top_k), target)
        click.echo(f"wrote the top {top_k} candidates per eval item to {target}")


@cli.command()
@with_stores
@click.option("--out", required=True, type=click.Path(path_type=Path), help="Report directory.")
@click.option("--baseline", default=None, help="Baseline strategy (default: direct, when present).")
@click.option("--n-boot", type=int, default=2000, show_default=True, help="Bootstrap resamples over probes.")
@click.option("--seed", type=int, default=0, show_default=True, help="Bootstrap seed.")
def study(train: tuple[Path, ...], evals: tuple[Path, ...], out: Path, baseline: str | None, n_boot: int, seed: int) -> None:
    """The swift study: each strategy's relative influence against a baseline, in-task and cross-task."""
    from curator.influence import scoring as inf
    from curator.influence.study import run_study, write_report
    from curator.io.tables import write_table

    table = inf.influence_scores(inf.open_space(train, evals))
    result = run_study(table, baseline=baseline, n_boot=n_boot, seed=seed)
    paths = write_report(result, out)
    write_table(table, out / "influence.parquet")
    for line in result["verdicts"].values():
        click.echo(line)
    click.echo(f"report: {paths['markdown']}")


@cli.command()
@click.argument("data", type=click.Path(path_type=Path))
@click.option("--out", required=True, type=click.Path(path_type=Path), help="Folder for checkpoint-N subfolders.")
@model_option
@click.option("--fraction", type=float, default=0.05, show_default=True, help="Fraction of DATA to train on (at least 8 rows).")
@click.option("--epochs", type=int, default=4, show_default=True, help="Epochs; one checkpoint per epoch.")
@click.option("--lr", type=float, default=2e-5, show_default=True, help="Peak learning rate (linear warm-up and decay).")
@click.option("--batch-size", type=int, default=8, show_default=True, help="Examples per optimizer step.")
@click.option("--max-length", type=int, default=512, show_default=True, help="Truncate longer sequences, keeping response tokens first.")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of the subset and the data order.")
@click.option("--gradient-checkpointing", is_flag=True, help="Recompute each decoder layer in the backward instead of keeping its activations: long sequences fit.")
@lora_options
@device_options
@click.pass_context
def warmup(ctx: click.Context, data: Path, out: Path, model: str, fraction: float, epochs: int, lr: float, batch_size: int, max_length: int, seed: int, gradient_checkpointing: bool, **kw: object) -> None:
    """Train LoRA briefly and save checkpoints with Adam state (for --kind adam and multi-checkpoint influence)."""
    from curator.gradients.warmup import WarmupConfig, warmup as run_warmup

    config = WarmupConfig(fraction=fraction, epochs=epochs, lr=lr, batch_size=batch_size, max_length=max_length, seed=seed, gradient_checkpointing=gradient_checkpointing)
    device = device_from(kw)
    saved = run_warmup(data, out, model=model, lora=lora_from(kw), config=config, progress=progress(ctx), device=device)
    for p in saved:
        click.echo(f"saved {p}")


@cli.command()
@click.argument("data", type=click.Path(path_type=Path))
@click.option("--out", required=True, type=click.Path(path_type=Path), help="Scores table: .parquet, .csv or .jsonl. Samples are cached beside it as <name>.samples.jsonl.")
@model_option
@click.option("--samples", "k", type=int, default=4, show_default=True, help="Outputs sampled from the target model per prompt group.")
@click.option("--metrics", default=",".join(ALL_METRICS), show_default=True, help="Comma-separated metrics: embedding, hidden, rouge-l, token-f1, answer, perplexity, sappl.")
@click.option("--temperature", type=float, default=0.7, show_default=True, help="Sampling temperature (0 = greedy).")
@click.option("--top-p", type=float, default=0.9, show_default=True, help="Nucleus sampling threshold.")
@click.option("--max-new-tokens", type=int, default=128, show_default=True, help="Longest sampled output, in tokens.")
@click.option("--seed", type=int, default=0, show_default=True, help="Sampling seed.")
@click.option("--sample-batch-size", type=int, default=8, show_default=True, help="Prompts per generation batch.")
@click.option("--max-length", type=int, default=512, show_default=True, help="Truncate longer sequences when scoring, keeping response tokens first.")
@click.option("--n-demos", type=int, default=2, show_default=True, help="In-context examples of the model's own answers for self-aligned perplexity (sappl).")
@device_options
@click.pass_context
def align(ctx: click.Context, data: Path, out: Path, model: str, k: int, metrics: str, temperature: float, top_p: float, max_new_tokens: int, seed: int, sample_batch_size: int, max_length: int, n_demos: int, **kw: object) -> None:
    """Score each candidate in DATA by how closely it matches outputs sampled from the target model."""
    from curator.alignment.align import AlignConfig, align_file
    from curator.alignment.metrics import parse_metrics
    from curator.model.sampling import SamplingConfig

    sampling = SamplingConfig(k=k, temperature=temperature, top_p=top_p, max_new_tokens=max_new_tokens, seed=seed, batch_size=sample_batch_size)
    config = AlignConfig(model=model, metrics=tuple(parse_metrics(metrics)), sampling=sampling, max_length=max_length, n_demos=n_demos, device=device_from(kw))
    r = align_file(data, out, config, progress=progress(ctx))
    if r.rank != 0:  # rank 0 reports the job
        return
    n_groups = r.table["group"].nunique()
    click.echo(f"scored {len(r.table)} candidates in {n_groups} prompt groups ({', '.join(config.metrics)}) into {r.out}")
    click.echo(f"samples: {r.sampling.generated} groups generated, {r.sampling.cached} reused from {r.samples_file}")
    if r.empty_samples:
        click.echo(f"{r.empty_samples} empty sample(s) were excluded from scoring; {len(r.groups_without_samples)} group(s) had no usable sample (their alignment scores are empty)")


@cli.command()
@click.argument("scores", type=click.Path(path_type=Path))
@click.option("--out", required=True, type=click.Path(path_type=Path), help="Report directory.")
@click.option("--primary", default="alignment", show_default=True, help="The metric that decides the recommended strategy.")
@click.option("--n-boot", type=int, default=2000, show_default=True, help="Bootstrap resamples over prompt groups.")
@click.option("--seed", type=int, default=0, show_default=True, help="Bootstrap seed.")
def select(scores: Path, out: Path, primary: str, n_boot: int, seed: int) -> None:
    """Pick the strategy whose candidates fit the target model best, from an `align` scores table."""
    from curator.alignment.selection import select_strategy, write_selection_report
    from curator.io.tables import read_table

    result = select_strategy(read_table(scores), n_boot=n_boot, seed=seed, primary=primary)
    paths = write_selection_report(result, out)
    for note in result.get("notes", []):
        click.echo(f"note: {note}")
    rec = result.get("recommendation") or {}
    if result.get("recommended"):
        click.echo(f"recommended strategy: {result['recommended']} (by {rec.get('metric')}; {rec.get('confidence', '')})")
    for note in result.get("disagreements", []):
        click.echo(f"metrics disagree: {note}")
    click.echo(f"report: {paths['markdown']} (plot: {paths['plot']})")


@cli.command()
@click.argument("scores", type=click.Path(path_type=Path))
@click.option("--out", required=True, type=click.Path(path_type=Path), help="Ranking table: .parquet, .csv or .jsonl.")
@click.option("--influence", "influence_file", type=click.Path(path_type=Path), default=None, help="An influence table from `curator influence`.")
@click.option("--w-alignment", type=float, default=1.0, show_default=True, help="Weight of the alignment z-score.")
@click.option("--w-influence", type=float, default=1.0, show_default=True, help="Weight of the influence z-score.")
@click.option("--influence-column", default="influence_max", show_default=True, help="Influence column to use: influence_max, influence_mean or influence:<task>.")
def rank(scores: Path, out: Path, influence_file: Path | None, w_alignment: float, w_influence: float, influence_column: str) -> None:
    """Rank each prompt's candidates for annotators, from alignment and (optionally) influence, with explanations."""
    from curator.curation.ranking import RankingWeights, rank_candidates
    from curator.io.tables import check_table_path, read_table, write_table

    check_table_path(out)
    weights = RankingWeights(alignment=w_alignment, influence=w_influence, influence_column=influence_column)
    table = rank_candidates(read_table(scores), read_table(influence_file) if influence_file else None, weights)
    write_table(table, out)
    click.echo(f"ranked {len(table)} candidates in {table['group'].nunique()} prompt groups into {out}")


@cli.command()
@click.option("--out", type=click.Path(path_type=Path), default=Path("demo-output"), show_default=True, help="Output folder.")
@model_option
@click.option("--dim", type=int, default=8192, show_default=True, help="Projection dimension.")
@click.option("--tasks", type=int, default=None, help="Use only the first N subjects (default: all 8).")
@click.option("--probes", type=int, default=None, help="Use only the first N probe questions per subject (default: all 3).")
@click.option("--samples", "k", type=int, default=4, show_default=True, help="Outputs sampled from the target model per prompt (alignment).")
@click.option("--max-new-tokens", type=int, default=128, show_default=True, help="Longest sampled output, in tokens.")
@click.option("--no-align", is_flag=True, help="Skip the alignment signal (align + select + rank, and the generate sample).")
@click.option("--per-strategy", type=int, default=4, show_default=True, help="Prompts in the generate sample step: each of direct, cot, clarify, evaluate, reference and own-words on N prompts, then align + select on them (0 skips it).")
@click.option("--argilla", "with_argilla", is_flag=True, help="Then serve a local Argilla (data in OUT/argilla-data) and push the ranked candidates for annotators.")
@device_options
@click.pass_context
def demo(ctx: click.Context, out: Path, model: str, dim: int, tasks: int | None, probes: int | None, k: int, max_new_tokens: int, no_align: bool, per_strategy: int, with_argilla: bool, **kw: object) -> None:
    """Run both signals on the bundled MMLU demo data, offline, and show them side by side.

    Alignment: align + select. Generation: a small sample per strategy from the same model as
    teacher and target, aligned and selected. Influence: index + influence + study. Then a
    ranking per prompt.
    """
    from curator.demo import run_demo
    from curator.model.sampling import SamplingConfig

    r = run_demo(out, model=model, dim=dim, tasks=tasks, probes=probes, align=not no_align, sampling=SamplingConfig(k=k, max_new_tokens=max_new_tokens), progress=progress(ctx), device=device_from(kw), per_strategy=per_strategy)
    click.echo(f"indexed {r.train.rows_total} candidates and {r.eval.rows_total} eval items; {r.train.truncated + r.eval.truncated} truncated")
    if r.side_by_side:
        click.echo(render_side_by_side(r.side_by_side))
    if r.aligned is not None and r.aligned.empty_samples:
        click.echo(f"{r.aligned.empty_samples} empty sample(s) excluded from alignment; {len(r.aligned.groups_without_samples)} group(s) had none usable")
    if r.selection is not None:
        click.echo(f"alignment recommends: {r.summary['recommended']} (report: {r.selection_report['markdown']})")  # type: ignore[index]
    if r.generated is not None:
        g = r.generated
        n = sum(c.written + c.present for c in g.strategies.values())
        click.echo(f"generate sample: {n} candidates, {g.selected} prompts x {len(g.strategies)} strategies ({', '.join(g.strategies)}): {g.out}")
        click.echo(f"alignment on the sample recommends: {r.sample_selection['recommended']} (report: {r.sample_report['markdown']})")  # type: ignore[index]
    click.echo(f"swift study against the '{r.summary['baseline']}' baseline:")
    for line in r.verdicts.values():
        click.echo(f"  {line}")
    click.echo(f"influence: {r.influence}")
    click.echo(f"top-3 per eval item: {r.top_k}")
    click.echo(f"report: {r.report['markdown']} (plot: {r.report['heatmap']})")
    if r.ranking is not None:
        click.echo(f"ranking for annotators: {r.ranking}")
    if with_argilla:
        from curator.integrations.argilla.demo import push_demo

        a = push_demo(r, out / "argilla-data", say=lambda msg: click.echo(msg, err=True), progress=progress(ctx))
        click.echo(f"pushed {a.push.total} records to {a.push.workspace}/{a.push.dataset}; annotate at {a.push.url}")
        click.echo(f"log in as {a.server.username} / {a.server.password}; API key: {a.server.api_key}")
        click.echo(f"then: curator argilla pull --dataset {a.push.dataset} --data-dir {out / 'argilla-data'} --out pulled.jsonl; stop the server with: curator argilla serve --stop --data-dir {out / 'argilla-data'}")


@cli.command()
@click.argument("candidates", required=False, type=click.Path(path_type=Path))
@click.argument("eval_data", metavar="[EVAL]", required=False, type=click.Path(path_type=Path))
@click.option("--out", required=True, type=click.Path(path_type=Path), help="Output folder (created, or resumed if it holds a validate run, or with --suite a validate --suite run).")
@click.option("--suite", type=click.Path(path_type=Path), default=None, help="A folder of task families, each a folder with candidates.jsonl and eval.jsonl: validate each into OUT/<family>/ with one budget, then write OUT/suite.md, suite.json and suite.png. Takes no CANDIDATES or EVAL.")
@model_option
@click.option("--strategies", multiple=True, help="Strategies to fine-tune, comma-separated or repeated (default: all in CANDIDATES).")
@click.option("--steps", type=int, default=32, show_default=True, help="Optimizer steps per strategy and seed.")
@click.option("--lr", type=float, default=5e-4, show_default=True, help="Peak AdamW learning rate (linear warm-up over 10% of the steps, then decay).")
@click.option("--batch-size", type=int, default=4, show_default=True, help="Examples per optimizer step.")
@click.option("--examples", type=int, default=None, help="Training examples per strategy, a seeded sample (default: the smallest strategy's count).")
@click.option("--seeds", "n_seeds", type=int, default=1, show_default=True, help="Runs per strategy, with seeds --seed, --seed+1, ...; the report gives mean ± std.")
@click.option("--seed", type=int, default=0, show_default=True, help="The first seed (data sample, data order, LoRA initialisation).")
@click.option("--max-length", type=int, default=512, show_default=True, help="Truncate longer sequences, keeping response tokens first.")
@click.option("--measure", type=click.Choice(["loss", "accuracy"]), default="loss", show_default=True, help="The measured gain that ranks strategies: eval loss, or generation accuracy.")
@click.option("--no-accuracy", is_flag=True, help="Measure eval loss only (no generation).")
@click.option("--max-new-tokens", type=int, default=128, show_default=True, help="Longest generated eval answer, and longest sampled output for alignment.")
@click.option("--predictions", multiple=True, type=click.Path(path_type=Path), help="A study or selection report.json, a folder holding one, or a `curator demo --out` folder; repeatable.")
@click.option("--no-predict", is_flag=True, help="Do not compute the predictions --predictions lacks.")
@click.option("--samples", "k", type=int, default=4, show_default=True, help="Outputs sampled per prompt for the alignment predictors.")
@click.option("--dim", type=int, default=8192, show_default=True, help="Projection dimension for the influence predictors.")
@click.option("--lora-r", type=int, default=8, show_default=True, help="LoRA rank of the fine-tuned adapters.")
@click.option("--lora-alpha", type=int, default=16, show_default=True, help="LoRA alpha.")
@click.option("--lora-targets", default="q_proj,k_proj,v_proj,o_proj", show_default=True, help="Comma-separated module names that get LoRA.")
@device_options
@click.pass_context
def validate(ctx: click.Context, candidates: Path | None, eval_data: Path | None, out: Path, suite: Path | None, model: str, strategies: tuple[str, ...], steps: int, lr: float, batch_size: int, examples: int | None, n_seeds: int, seed: int, max_length: int, measure: str, no_accuracy: bool, max_new_tokens: int, predictions: tuple[Path, ...], no_predict: bool, k: int, dim: int, lora_r: int, lora_alpha: int, lora_targets: str, **kw: object) -> None:
    """Fine-tune on each strategy's candidates, measure on EVAL, and check curator's predicted rankings.

    Each strategy gets the same budget (examples, steps, lr, batch size, seed). The measured gain
    over the base model ranks the strategies; each predictor (influence, alignment metrics,
    perplexity, sappl) gets Spearman's rho and a top-1 check. Reruns skip finished runs.

    With --suite DIR, every family folder in DIR (holding candidates.jsonl and eval.jsonl) is
    validated with the same options into OUT/<family>/, and OUT/suite.md sets the families side by
    side: each predictor's Spearman and top-1 per family, its mean over families, and a sign test
    of alignment against perplexity.
    """
    from curator.config import LoraSettings
    from curator.validation.finetune import EvalConfig, FinetuneConfig
    from curator.validation.run import ValidateConfig, run_validate
    from curator.validation.predictors import PredictConfig

    if suite is not None and (candidates is not None or eval_data is not None):
        raise InputError(f"--suite {suite} takes no CANDIDATES or EVAL: each family folder holds its own candidates.jsonl and eval.jsonl; drop the file arguments, or drop --suite")
    if suite is None and (candidates is None or eval_data is None):
        raise InputError("give CANDIDATES and EVAL (curator validate candidates.jsonl eval.jsonl --out DIR), or --suite DIR for a folder of task families")
    if n_seeds < 1:
        raise InputError(f"--seeds {n_seeds} is invalid: use an integer >= 1 (the number of runs per strategy)")
    names = tuple(s.strip() for part in strategies for s in part.split(",") if s.strip()) or None
    if strategies and not names:
        raise InputError("--strategies is empty: name at least one strategy, or leave it out to use all")
    lora = LoraSettings(r=lora_r, alpha=lora_alpha, target_modules=tuple(t.strip() for t in lora_targets.split(",") if t.strip()))
    config = ValidateConfig(
        model=model,
        strategies=names,
        seeds=tuple(range(seed, seed + n_seeds)),
        train=FinetuneConfig(steps=steps, lr=lr, batch_size=batch_size, examples=examples, max_length=max_length, lora=lora),
        evaluation=EvalConfig(accuracy=not no_accuracy, max_new_tokens=max_new_tokens, max_length=max_length),
        measure=measure,
        predictions=tuple(str(p) for p in predictions),
        predict=not no_predict,
        prediction=PredictConfig(samples=k, max_new_tokens=max_new_tokens, dim=dim, max_length=max_length),
        device=device_from(kw),
    )
    if suite is not None:
        from curator.cli.suite import echo_suite
        from curator.validation.suite import run_suite

        echo_suite(run_suite(suite, out, config, progress=progress(ctx)))
        return
    r = run_validate(candidates, eval_data, out, config, progress=progress(ctx))
    rep = r.report
    click.echo(f"trained {len(r.trained)} run(s), reused {len(r.reused)} finished run(s) in {out / 'runs'}")
    base = rep["base"]
    click.echo(f"base model: eval loss {base['loss']:.4f}" + ("" if base["accuracy"] is None else f", accuracy {base['accuracy']:.3f}"))
    for s in rep["measured_ranking"]:
        m = rep["measured"][s]
        g = m[f"{measure}_gain"]
        click.echo(f"  {s}: {measure} gain {g['mean']:+.4f}" + ("" if g["std"] is None else f" ± {g['std']:.4f}") + f" over {m['n_seeds']} seed(s)")
    click.echo(f"measured ranking ({measure} gain): {' > '.join(rep['measured_ranking'])}")
    for name, p in rep["predictors"].items():
        a = p["against"].get(measure)
        if not a:
            continue
        rho = "n/a" if a["spearman"] is None else f"{a['spearman']:+.2f}"
        t = a["top1"]
        hit = "n/a" if t["hit"] is None else ("hit" if t["hit"] else "miss")
        click.echo(f"  {name}: Spearman {rho}, top-1 {'/'.join(t['predicted']) or 'n/a'} ({hit})")
    if not rep["predictors"]:
        click.echo("no predictions to compare: pass --predictions, or drop --no-predict")
    for note in rep["measured_notes"]:
        click.echo(f"note: {note}")
    if rep["best_adapter"]:
        click.echo(f"best adapter: {out / rep['best_adapter']}")
    click.echo(f"report: {r.paths['markdown']} (plot: {r.paths['plot']})")


from curator.cli.argilla import argilla_group, export_cmd  # noqa: E402  (registered after the core commands)
from curator.cli.generate import generate  # noqa: E402

cli.add_command(generate)
cli.add_command(argilla_group)
cli.add_command(export_cmd)


def main() -> None:
    cli(prog_name="curator")


if __name__ == "__main__":
    main()
