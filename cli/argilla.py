"""`curator argilla ...` (serve, push, pull, listen) and `curator export`."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from curator.cli.render import progress

DEFAULT_DATA_DIR = Path("argilla-data")
CONVENTION_MAPS = {
    "distilabel": "instruction -> prompt, each of generations -> a candidate, its generation_models entry -> strategy",
    "argilla-ranking": "instruction -> prompt, response1, response2, ... -> candidates, the column name -> strategy",
}

api_options = [
    click.option("--api-url", envvar="ARGILLA_API_URL", default=None, help="Argilla server URL (env ARGILLA_API_URL; default: the server `curator argilla serve` runs for --data-dir)."),
    click.option("--api-key", envvar="ARGILLA_API_KEY", default=None, help="API key (env ARGILLA_API_KEY). Never printed."),
    click.option("--data-dir", type=click.Path(path_type=Path), default=DEFAULT_DATA_DIR, show_default=True, help="Local server folder used when no --api-url is given."),
    click.option("--workspace", default="curator", show_default=True, help="Argilla workspace (push creates it when missing)."),
]


def with_api(f):  # type: ignore[no-untyped-def]
    for opt in reversed(api_options):
        f = opt(f)
    return f


retry_options = [
    click.option("--retries", type=click.IntRange(min=1), default=5, show_default=True, envvar="CURATOR_ARGILLA_RETRIES",
                 help="Attempts per request when the server is unreachable, times out or answers 5xx (env CURATOR_ARGILLA_RETRIES)."),
    click.option("--retry-delay", type=click.FloatRange(min=0), default=0.5, show_default=True, envvar="CURATOR_ARGILLA_RETRY_DELAY",
                 help="Seconds before the first retry, doubled after each (capped at 8 s) (env CURATOR_ARGILLA_RETRY_DELAY)."),
]


def with_retries(f):  # type: ignore[no-untyped-def]
    for opt in reversed(retry_options):
        f = opt(f)
    return f


def retry_policy(retries: int, retry_delay: float) -> Any:
    from curator.integrations.argilla.client import RetryPolicy

    return RetryPolicy(attempts=retries, base_delay=retry_delay, max_delay=max(8.0, retry_delay))


def client_from(api_url: str | None, api_key: str | None, data_dir: Path) -> Any:
    """A connected SDK client: explicit URL/key, else the local server curator runs for data_dir."""
    from curator.integrations.argilla.client import connect

    if api_url is None:
        from curator.integrations.argilla.server import status

        st = status(data_dir)
        if st.info is not None:
            api_url = st.info.url
            api_key = api_key or st.info.api_key
    return connect(api_url=api_url, api_key=api_key)


@click.group("argilla")
def argilla_group() -> None:
    """Annotate in Argilla: a local server, push candidates, pull rankings, listen for submissions."""


@argilla_group.command()
@click.option("--data-dir", type=click.Path(path_type=Path), default=DEFAULT_DATA_DIR, show_default=True, help="Where the server keeps its database, search index and logs.")
@click.option("--port", type=int, default=None, help="HTTP port (default: a free one).")
@click.option("--database", type=click.Choice(["sqlite", "postgresql"]), default=None, help="sqlite: one person (the default for a new --data-dir); postgresql: a local PostgreSQL in DATA_DIR/postgres, for a team. Default: what --data-dir already holds.")
@click.option("--database-url", default=None, metavar="URL", help="An existing PostgreSQL (postgresql://USER:PASSWORD@HOST:PORT/DB) instead of a local database; needed at each start. Never printed with its password.")
@click.option("--stop", "stop_", is_flag=True, help="Stop the processes started for --data-dir (PostgreSQL included), by pid.")
@click.option("--status", "status_", is_flag=True, help="Show whether the server for --data-dir runs.")
def serve(data_dir: Path, port: int | None, database: str | None, database_url: str | None, stop_: bool, status_: bool) -> None:
    """Start a local argilla-server 2.8.0 (SQLite or PostgreSQL, Redis, curator's search engine) in the background.

    The server runs in its own virtualenv (created on first use). Data survives restarts.
    """
    from curator.integrations.argilla.server import serve as start, status, stop

    if stop_:
        stopped = stop(data_dir)
        click.echo(f"stopped {', '.join(f'{r} (pid {p})' for r, p in stopped.items())}" if stopped else f"no server was running for {data_dir}")
        return
    if status_:
        st = status(data_dir)
        state = "running" if st.running else ("answering" if st.answering else "not running")
        click.echo(f"{data_dir}: {state}" + (f" at {st.info.url}" if st.info else ""))
        return
    info = start(data_dir, port=port, database=database, database_url=database_url, progress=lambda msg: click.echo(msg, err=True))
    click.echo(f"Argilla is up at {info.url}")
    click.echo(f"log in as {info.username} / {info.password}; API key for the SDK and curator: {info.api_key}")
    click.echo(f"database: {info.database_shown}")
    click.echo(f"data: {info.data_dir}; stop with: curator argilla serve --stop --data-dir {data_dir}")


@argilla_group.command()
@click.argument("candidates", type=click.Path(path_type=Path))
@click.option("--dataset", required=True, help="Argilla dataset name.")
@click.option("--scores", type=click.Path(path_type=Path), default=None, help="Scores table from `curator align` (alignment suggestions).")
@click.option("--influence", "influence_file", type=click.Path(path_type=Path), default=None, help="Influence table from `curator influence`.")
@click.option("--store", type=click.Path(path_type=Path), default=None, help="The candidates' gradient store (record vectors for 'find similar').")
@click.option("--w-alignment", type=float, default=1.0, show_default=True, help="Weight of alignment in the suggested ranking.")
@click.option("--w-influence", type=float, default=1.0, show_default=True, help="Weight of influence in the suggested ranking.")
@click.option("--vector-dim", type=int, default=256, show_default=True, help="Record vector size (a seeded projection of the gradient direction).")
@click.option("--batch-size", type=int, default=50, show_default=True, help="Records per request.")
@click.option("--annotators", type=int, default=None, help="Submitted responses each record needs before it leaves the queues (Argilla's task distribution; new datasets default to 1).")
@click.option("--questions", type=click.Choice(["auto", "ranking", "rating", "both"]), default="auto", show_default=True, help="auto: a ranking for prompts with 2-50 candidates, a 1-5 rating and keep/drop per candidate for prompts with one.")
@click.option("--keep-threshold", type=float, default=0.0, show_default=True, help="The combined score (z-scores) at or above which the keep/drop suggestion is keep.")
@with_api
@with_retries
@click.pass_context
def push(ctx: click.Context, candidates: Path, dataset: str, scores: Path | None, influence_file: Path | None, store: Path | None, w_alignment: float, w_influence: float, vector_dim: int, batch_size: int, annotators: int | None, questions: str, keep_threshold: float, api_url: str | None, api_key: str | None, data_dir: Path, workspace: str, retries: int, retry_delay: float) -> None:
    """Push CANDIDATES to Argilla: one record per prompt, with curator's scores as suggestions. Re-pushing updates in place.

    CANDIDATES may also use distilabel's columns (instruction, generations, generation_models) or
    Argilla's ranking template (instruction, response1, response2, ...); the mapping used is printed.

    Prompts with 2 to 50 candidates get a ranking question; prompts with one get a 1-5 rating and a
    keep/drop label (--questions overrides the choice)."""
    import pandas as pd

    from curator.io.conventions import load_any
    from curator.integrations.argilla.push import check_target, push as run_push
    from curator.curation.ranking import RankingWeights, rank_candidates
    from curator.store.store import GradientStore
    from curator.io.tables import read_table

    check_target(dataset, workspace)  # before reading files or reaching the server
    cands, convention = load_any(candidates)
    if convention != "curator":
        click.echo(f"read {candidates} as {convention} rows: {len(cands)} candidates in {len({c.group for c in cands})} prompts ({CONVENTION_MAPS[convention]})")
    from curator.integrations.argilla.schema import spec_for

    spec_for(cands, questions=questions, keep_threshold=keep_threshold)  # questions that fit, checked before the server is reached
    weights = RankingWeights(alignment=w_alignment, influence=w_influence)
    ranking = None
    if scores is not None or influence_file is not None:
        base = read_table(scores) if scores is not None else pd.DataFrame({"id": [c.id for c in cands], "strategy": [c.strategy for c in cands], "task": [c.task for c in cands], "group": [c.group for c in cands]})
        ranking = rank_candidates(base, read_table(influence_file) if influence_file is not None else None, weights)
    gstore = GradientStore.open(store) if store is not None else None
    client = client_from(api_url, api_key, data_dir)
    r = run_push(cands, ranking, dataset, workspace=workspace, store=gstore, client=client, batch_size=batch_size, progress=progress(ctx), vector_dim=vector_dim, weights=weights, annotators=annotators, retry=retry_policy(retries, retry_delay), questions=questions, keep_threshold=keep_threshold)
    click.echo(f"pushed {r.total} records to {r.workspace}/{r.dataset} ({r.created} new, {r.updated} updated){' — dataset created' if r.dataset_created else ''}; questions: {r.questions}")
    click.echo(f"annotate at {r.url}")


@argilla_group.command()
@click.option("--dataset", required=True, help="Argilla dataset name.")
@click.option("--out", required=True, type=click.Path(path_type=Path), help="Pulled file: .jsonl or .parquet.")
@click.option("--method", type=click.Choice(["borda", "mean_rank"]), default="borda", show_default=True, help="How annotators' rankings are aggregated.")
@click.option("--page-size", type=click.IntRange(1, 1000), default=1000, show_default=True, help="Records per request.")
@with_api
@with_retries
@click.pass_context
def pull(ctx: click.Context, dataset: str, out: Path, method: str, page_size: int, api_url: str | None, api_key: str | None, data_dir: Path, workspace: str, retries: int, retry_delay: float) -> None:
    """Pull submitted answers (every annotator's rankings, ratings and keep/drop labels), aggregated
    per record, with an agreement and anchoring report beside the file (<name>.report.md).

    Safe while annotators are still working: every record comes back once, either with an
    annotator's complete response or counted as pending (no submitted response yet).
    """
    from curator.integrations.argilla.pull import pull as run_pull

    client = client_from(api_url, api_key, data_dir)
    r = run_pull(dataset, workspace=workspace, client=client, out=out, method=method, progress=progress(ctx), retry=retry_policy(retries, retry_delay), page_size=page_size)
    pending = f"{r.pending} pending" + (" (no submitted response yet: pull again later for them)" if r.pending else "")
    click.echo(f"pulled {r.records} records into {r.out}: {r.submitted} submitted ({r.responses} responses), {r.discarded} discarded, {pending}")
    if r.strategy_votes:
        click.echo("best-strategy votes: " + ", ".join(f"{s} {n}" for s, n in sorted(r.strategy_votes.items(), key=lambda x: -x[1])))
    a = r.agreement
    if a and a["records"]:
        def num(x: float | None) -> str:
            return "n/a" if x is None else f"{x:.3f}"

        alpha = ", ".join(f"{k} {num(v)}" for k, v in a["alpha"].items() if v is not None) or "n/a (fewer than two annotators per item)"
        click.echo(f"agreement: Kendall's W mean {num(a['kendalls_w']['mean'])} over {a['kendalls_w']['n']} records; Krippendorff's alpha: {alpha}")
        anc = a["anchoring"]
        if anc and anc["overall"]["n"]:
            click.echo(f"anchoring: {anc['overall']['verdict']}")
        click.echo(f"report: {r.report}")


@argilla_group.command()
@click.option("--dataset", required=True, help="Argilla dataset name.")
@click.option("--neighbours", "k", type=int, default=5, show_default=True, help="Nearest pending records (by gradient vector) re-ranked after each submission.")
@click.option("--weight", type=float, default=1.0, show_default=True, help="How strongly the strategy tally moves a candidate (added to its z-scored curator score).")
@click.option("--host", default="127.0.0.1", show_default=True, help="Address the listener binds to.")
@click.option("--port", type=int, default=8000, show_default=True, help="Port the listener binds to.")
@click.option("--public-url", default=None, help="URL the Argilla server posts events to (default: http://HOST:PORT; 127.0.0.1 when HOST is 0.0.0.0).")
@click.option("--log", "log_file", type=click.Path(path_type=Path), default=None, help="JSONL log of every change (default: listen-<dataset>.log.jsonl).")
@click.option("--workers", type=int, default=4, show_default=True, help="Re-ranking writes sent to the server at once.")
@with_api
@with_retries
def listen(dataset: str, k: int, weight: float, host: str, port: int, public_url: str | None, log_file: Path | None, workers: int, api_url: str | None, api_key: str | None, data_dir: Path, workspace: str, retries: int, retry_delay: float) -> None:
    """Listen for submitted rankings; update the strategy tally and re-rank similar pending records.

    The tally counts each annotator's submitted response to a record once (edits replace it,
    deletes and discards withdraw it) and is rebuilt from the server at every start."""
    from curator.integrations.argilla.listen import Listener, default_log_path
    from curator.integrations.argilla.webhook import serve_listener

    policy = retry_policy(retries, retry_delay)
    client = client_from(api_url, api_key, data_dir)
    listener = Listener(client, dataset, workspace=workspace, k=k, weight=weight, log_path=log_file or default_log_path(dataset), retry=policy, workers=workers)
    r = listener.rebuilt
    votes = ", ".join(f"{s} {n}" for s, n in sorted(r["tally"].items(), key=lambda x: (-x[1], x[0]))) or "no votes yet"
    click.echo(f"tally rebuilt from the server: {r['submitted_responses']} submitted responses in {r['records']} records; votes: {votes}")
    click.echo(f"listening for submissions on {dataset} at http://{host}:{port} (Ctrl-C to stop); changes are logged to {listener.log_path}")
    serve_listener(listener, host=host, port=port, public_url=public_url)


@click.command("export")
@click.argument("pulled", type=click.Path(path_type=Path))
@click.option("--format", "fmt", type=click.Choice(["sft", "dpo", "kto", "argilla"]), required=True, help="SFT rows, DPO pairs, KTO rows (prompt, completion, label), or the Argilla dataset itself (a folder rg.Dataset.from_disk restores).")
@click.option("--out", required=True, type=click.Path(path_type=Path), help=".jsonl, .parquet, or a folder (datasets.save_to_disk; always a folder for argilla).")
@click.option("--min-annotators", type=int, default=1, show_default=True, help="Drop records with fewer annotators.")
@click.option("--min-agreement", type=float, default=None, help="Drop records whose Kendall's W is lower (or unknown).")
@click.option("--strategy", "strategies", multiple=True, help="Keep only these strategies' candidates (repeatable).")
@click.option("--order", type=click.Choice(["auto", "ranking", "rating"]), default="auto", show_default=True, help="Order of a record's candidates for SFT top and DPO: the annotators' ranking, or their mean ratings; auto: the ranking where there is one.")
@click.option("--sft-from", type=click.Choice(["top", "kept", "rated"]), default="top", show_default=True, help="SFT completions: the best candidate, every candidate labelled keep, or every one rated >= --min-rating.")
@click.option("--pairs", type=click.Choice(["top-vs-each", "top-vs-bottom", "all-pairs"]), default="top-vs-each", show_default=True, help="DPO pairs: the best against each other candidate, against the last, or every ordered pair.")
@click.option("--min-margin", type=float, default=0.0, show_default=True, help="DPO: keep a pair only when it is more than this apart (rank positions, or mean rating points).")
@click.option("--kto-from", type=click.Choice(["auto", "labels", "ratings"]), default="auto", show_default=True, help="KTO labels: the majority keep/drop, or ratings (>= --min-rating desirable, <= --max-rating undesirable); auto: labels where there are any.")
@click.option("--min-rating", type=float, default=4.0, show_default=True, help="A mean rating at or above this is good (SFT rated, KTO).")
@click.option("--max-rating", type=float, default=2.0, show_default=True, help="A mean rating at or below this is bad (KTO).")
@click.option("--conversational", is_flag=True, help="Message lists instead of strings (automatic when a prompt is a chat).")
@click.option("--min-annotator-agreement", type=float, default=None, help="Leave out annotators whose mean Kendall tau with the aggregated ranking is below this, and re-aggregate.")
@click.option("--push-to-hub", "hub_repo", default=None, metavar="REPO", help="Also push the exported set with its card to this Hugging Face Hub dataset repo (needs a reachable hub and HF_TOKEN).")
@with_api
def export_cmd(pulled: Path, fmt: str, out: Path, min_annotators: int, min_agreement: float | None, strategies: tuple[str, ...], order: str, sft_from: str, pairs: str, min_margin: float, kto_from: str, min_rating: float, max_rating: float, conversational: bool, min_annotator_agreement: float | None, hub_repo: str | None, api_url: str | None, api_key: str | None, data_dir: Path, workspace: str) -> None:
    """Export a pulled file as a curated SFT, DPO or KTO training set (TRL formats), with a provenance
    card; or, with --format argilla, the Argilla dataset itself, as a folder rg.Dataset.from_disk restores."""
    from curator.curation.export import export, push_to_hub

    if fmt == "argilla":
        from curator.integrations.argilla.archive import export_argilla

        if hub_repo:
            raise click.UsageError("--push-to-hub goes with --format sft, dpo or kto (the SDK's Dataset.to_hub pushes an Argilla dataset)")
        path = export_argilla(pulled, out, client_from(api_url, api_key, data_dir))
        click.echo(f"wrote the Argilla dataset of {pulled} to {path} (restore it with rg.Dataset.from_disk); card: {path / 'README.md'}")
        return

    r = export(pulled, fmt, out, min_annotators=min_annotators, min_agreement=min_agreement, strategies=list(strategies) or None, dpo_pairs=pairs,
               order=order, sft_from=sft_from, min_margin=min_margin, kto_from=kto_from, min_rating=min_rating, max_rating=max_rating, conversational=conversational,
               min_annotator_agreement=min_annotator_agreement)
    if r.left_out:
        click.echo(f"left out {len(r.left_out)} annotator(s) below --min-annotator-agreement {min_annotator_agreement:g}: {', '.join(r.left_out)}")
    dropped = ", ".join(f"{n} by {rule}" for rule, n in r.filtered.items() if n)
    click.echo(f"wrote {r.rows} {fmt.upper()} rows from {r.kept} of {r.records} records to {r.out}" + (f" (dropped {dropped})" if dropped else ""))
    if hub_repo:
        url = push_to_hub(r, hub_repo)
        click.echo(f"pushed to the Hub: {url}")
    click.echo(f"dataset card: {r.card}")
