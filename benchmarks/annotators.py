"""A team on the local server (issue 17): N annotators through the UI's endpoints, `curator argilla listen` running.

For each database (SQLite, then PostgreSQL), on a fresh `serve(...)` in its own data directory under
/tmp (mode 0755, so that the ``postgres`` user can enter it under root), stopped and removed at the end:

1. push R synthetic prompts with 3 candidates each (curator's push, with a ranking table so suggestions
   exist, random record vectors so the listener re-ranks neighbours, one submission per record);
2. start a real `curator argilla listen --dataset NAME --data-dir DIR` process;
3. N annotator threads (own user, own HTTP client) each loop: fetch a page of their pending queue
   (``POST /api/v1/me/datasets/{id}/records/search``), take a record, submit a random ranking and a best
   strategy (``POST /api/v1/records/{id}/responses``), and for --update-share of them change the ranking
   (``PUT /api/v1/responses/{id}``); until the queue is empty or --seconds-limit. A failed submit is not
   retried (the annotator moves on);
4. tail the listener's JSONL log while it runs: the lag from each acknowledged write to its counted line
   (the tally), and to the flush that wrote the re-rankings it queued; the backlog of each when the
   load ends, and how long it takes to drain (up to 60 s);
5. pull (``pull`` into a temp file) and check: every 2xx write is there with its last acknowledged ranking,
   nothing is saved behind a 5xx, and the listener's last tally equals a recount of the pulled file.

Prints per database: submissions/s, submit and queue-fetch p50/p95, 5xx per endpoint, saved behind a 5xx,
listen lag and backlog, tally == recount, wall time, beside the issue's targets; then PostgreSQL/SQLite
ratios. No pass/fail thresholds.

    python benchmarks/annotators.py [--annotators 20] [--records 1000] [--database sqlite|postgresql|both]
                                    [--update-share 0.1] [--seconds-limit N] [--neighbours 5]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import uuid
import warnings
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from curator.curation.ranking import rank_candidates  # noqa: E402
from curator.integrations.argilla.push import push  # noqa: E402
from curator.integrations.argilla.server import serve, stop  # noqa: E402
from curator.io.data import Candidate  # noqa: E402
from tests.integrations.listening import free_port, recount  # noqa: E402

WS = "curator"
STRATEGIES = ("direct", "cot", "clarify")
SLOTS = ("candidate_1", "candidate_2", "candidate_3")
PAGE = 10  # records per queue fetch, as a page of the UI
DRAIN_S = 60.0
QUEUE = {"filters": {"and": [{"type": "terms", "scope": {"entity": "response", "property": "status"}, "values": ["pending"]},
                             {"type": "terms", "scope": {"entity": "record", "property": "status"}, "values": ["pending"]}]}}


@dataclasses.dataclass
class Write:
    """One submit or update as the client saw it (monotonic time of the answer)."""

    kind: str  # submit | update
    user: str
    record: str  # server UUID
    ranking: list[str]
    status: int  # 0: no answer (timeout, connection dropped)
    at: float
    response_id: str | None = None


@dataclasses.dataclass
class RandomStore:
    """What push reads of a gradient store (ids, vectors, dim, manifest): random vectors, one per candidate."""

    ids_: list[str]
    dim: int = 32
    path: str = "random-store"
    manifest: dict = dataclasses.field(default_factory=lambda: {"role": "candidates"})

    def ids(self) -> list[str]:
        return self.ids_

    def vectors(self) -> np.ndarray:
        return np.random.default_rng(0).standard_normal((len(self.ids_), self.dim)).astype(np.float32)


def synthetic(n: int, seed: int = 0) -> tuple[list[Candidate], pd.DataFrame]:
    rng = np.random.default_rng(seed)
    items = rng.integers(10**6, size=n)
    cands = [Candidate(id=f"p{i:05d}-{s}", prompt=f"Synthetic prompt {i}: explain item {items[i]} briefly.",
                       response=f"A {s} answer to prompt {i}.", strategy=s, task="bench", group=f"p{i:05d}")
             for i in range(n) for s in STRATEGIES]  # fmt: skip
    scores = pd.DataFrame({"id": [c.id for c in cands], "strategy": [c.strategy for c in cands], "group": [c.group for c in cands],
                           "task": [c.task for c in cands], "alignment": rng.random(len(cands))})  # fmt: skip
    return cands, rank_candidates(scores)


def make_annotator(url: str, owner_key: str, ws_id: str, name: str) -> tuple[str, str]:
    owner = {"X-Argilla-Api-Key": owner_key}
    r = httpx.post(f"{url}/api/v1/users", json={"username": name, "first_name": name, "password": "annotator-pw-1", "role": "annotator"}, headers=owner, timeout=60)
    r.raise_for_status()
    user = r.json()
    httpx.post(f"{url}/api/v1/workspaces/{ws_id}/users", json={"user_id": user["id"]}, headers=owner, timeout=60).raise_for_status()
    return user["id"], user["api_key"]


class LogTail(threading.Thread):
    """Reads the listener's JSONL log as it grows. ``seen``: when each counted event's line appeared,
    with its ``seq`` and whether it queued re-rankings; ``flushes``: when each flush line appeared and
    its ``through`` (every re-ranking queued by an event with seq <= through is written)."""

    def __init__(self, path: Path) -> None:
        super().__init__(daemon=True)
        self.path, self.seen, self.failures, self.tally = path, {}, 0, None  # type: ignore[var-annotated]
        self.flushes: list[tuple[float, int]] = []
        self.delays: list[float] = []  # the server's event time to the listener's count (the delivery's share of the lag)
        self.halt = threading.Event()

    def reranked_at(self, key: tuple[str, str, str]) -> float | None:
        """When the re-rankings that event queued were written (its count time when it queued none)."""
        at, seq, queued = self.seen[key]
        if not queued:
            return at
        return next((t for t, through in list(self.flushes) if through >= seq), None)

    def run(self) -> None:
        pos, buf = 0, b""
        while not self.halt.is_set():
            if self.path.exists():
                with self.path.open("rb") as fh:
                    fh.seek(pos)
                    chunk = fh.read()
                pos += len(chunk)
                buf += chunk
                now = time.monotonic()
                *lines, buf = buf.split(b"\n")
                for line in lines:
                    entry = json.loads(line)
                    if "error" in entry:
                        self.failures += 1
                    event = entry.get("event", "")
                    if event == "flush" and "error" not in entry:
                        self.flushes.append((now, entry["through"]))
                    if "tally" in entry and "neighbour" not in entry and event != "flush":  # flush lines carry the tally as the flush began
                        self.tally = entry["tally"]
                    if event.startswith("response.") and "seq" in entry:
                        if entry.get("delay_s") is not None:
                            self.delays.append(entry["delay_s"])
                        self.seen.setdefault((event, entry["record"], entry["user_id"]), (now, entry["seq"], bool(entry["queued"])))
            self.halt.wait(0.05)


def seen_key(w: Write) -> tuple[str, str, str]:
    return ("response.created" if w.kind == "submit" else "response.updated", w.record, w.user)


def annotate(url: str, key: str, user: str, ds_id: str, deadline: float, barrier: threading.Barrier, share: float, seed: int,
             calls: list[tuple[str, int, float]], writes: list[Write], external: dict[str, str]) -> None:  # fmt: skip
    rng = np.random.default_rng(seed)
    skip: set[str] = set()

    def call(endpoint: str, method: str, path: str, **kw: Any) -> httpx.Response | None:
        t0 = time.monotonic()
        try:
            r = http.request(method, path, **kw)
        except httpx.TransportError:
            r = None
        calls.append((endpoint, r.status_code if r is not None else 0, time.monotonic() - t0))
        return r

    def body(ranking: list[str]) -> dict[str, Any]:
        values = {"ranking": {"value": [{"value": s, "rank": k + 1} for k, s in enumerate(ranking)]}, "best_strategy": {"value": str(rng.choice(STRATEGIES))}}
        return {"status": "submitted", "values": values}

    with httpx.Client(base_url=url, headers={"X-Argilla-Api-Key": key}, timeout=120) as http:
        barrier.wait()
        while time.monotonic() < deadline:
            r = call("queue", "POST", f"/api/v1/me/datasets/{ds_id}/records/search",
                     params={"include": ["responses", "suggestions"], "offset": 0, "limit": min(PAGE + len(skip), 1000)}, json=QUEUE)  # fmt: skip
            if r is None or r.status_code != 200:
                time.sleep(0.2)
                continue
            page = r.json()
            fresh = [it["record"] for it in page["items"] if it["record"]["id"] not in skip]
            if not fresh:
                break  # the queue is empty (or holds only records this annotator failed on)
            rec = fresh[int(rng.integers(len(fresh)))]
            rid = rec["id"]
            external[rid] = str(rec.get("external_id") or rid)
            ranking = list(rng.permutation(SLOTS))
            r = call("submit", "POST", f"/api/v1/records/{rid}/responses", json=body(ranking))
            code = r.status_code if r is not None else 0
            resp_id = r.json().get("id") if r is not None and code == 201 else None
            writes.append(Write("submit", user, rid, ranking, code, time.monotonic(), resp_id))
            if resp_id is None:
                skip.add(rid)  # not retried: the annotator moves on
                continue
            if rng.random() < share:
                changed = ranking[1:] + ranking[:1]
                r = call("update", "PUT", f"/api/v1/responses/{resp_id}", json=body(changed))
                writes.append(Write("update", user, rid, changed, r.status_code if r is not None else 0, time.monotonic(), resp_id))


def pct(xs: list[float], q: float) -> float:
    return float(np.percentile(xs, q)) if xs else float("nan")


def run_one(database: str, args: argparse.Namespace) -> dict[str, Any]:
    import argilla as rg

    began = time.monotonic()
    base = Path(tempfile.mkdtemp(prefix=f"curator-bench-{database}-", dir="/tmp"))
    base.chmod(0o755)
    data_dir, log, name = base / "argilla-data", base / "listen.log.jsonl", f"bench-{uuid.uuid4().hex[:6]}"
    listener: subprocess.Popen | None = None
    try:
        info = serve(data_dir, database=database)
        print(f"[{database}] server up at {info.url} in {time.monotonic() - began:.1f} s ({info.database_shown})", flush=True)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            client = rg.Argilla(api_url=info.url, api_key=info.api_key)
            cands, ranking = synthetic(args.records)
            t0 = time.monotonic()
            push(cands, ranking, name, WS, store=RandomStore([c.id for c in cands]), client=client, batch_size=100, annotators=1)
            ds_id = str(client.datasets(name=name, workspace=WS).id)
        print(f"[{database}] pushed {args.records} records in {time.monotonic() - t0:.1f} s", flush=True)
        owner = {"X-Argilla-Api-Key": info.api_key}
        ws_id = next(w["id"] for w in httpx.get(f"{info.url}/api/v1/me/workspaces", headers=owner).json()["items"] if w["name"] == WS)
        team = [make_annotator(info.url, info.api_key, ws_id, f"a{i}-{name}") for i in range(args.annotators)]

        port = free_port()
        env = {k: v for k, v in os.environ.items() if not k.startswith("ARGILLA_")} | {"PYTHONUNBUFFERED": "1"}
        cmd = [sys.executable, "-m", "curator.cli.main", "argilla", "listen", "--dataset", name, "--data-dir", str(data_dir),
               "--port", str(port), "--log", str(log), "--neighbours", str(args.neighbours)]  # fmt: skip
        with (base / "listen.out").open("a") as out:
            listener = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, cwd=base, env=env)
        deadline = time.monotonic() + 120
        while True:
            if listener.poll() is not None:
                raise RuntimeError(f"listen exited with {listener.returncode}: {(base / 'listen.out').read_text()[-2000:]}")
            try:
                if httpx.get(f"http://127.0.0.1:{port}/docs", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError("listen did not serve within 120 s")
            time.sleep(0.2)
        tail = LogTail(log)
        tail.start()

        calls: list[tuple[str, int, float]] = []
        writes: list[Write] = []
        external: dict[str, str] = {}
        barrier = threading.Barrier(args.annotators + 1)
        stop_at = time.monotonic() + (args.seconds_limit or 1e9)
        threads = [threading.Thread(target=annotate, args=(info.url, key, uid, ds_id, stop_at, barrier, args.update_share, i, calls, writes, external))
                   for i, (uid, key) in enumerate(team)]  # fmt: skip
        for t in threads:
            t.start()
        barrier.wait()
        load0 = time.monotonic()
        for t in threads:
            t.join()
        load_end = time.monotonic()
        load_s = load_end - load0
        print(f"[{database}] load done: {len(writes)} writes in {load_s:.1f} s", flush=True)

        acked = [w for w in writes if 200 <= w.status < 300]
        counted_at = lambda w: tail.seen[seen_key(w)][0] if seen_key(w) in tail.seen else None  # noqa: E731
        reranked_at = lambda w: tail.reranked_at(seen_key(w)) if seen_key(w) in tail.seen else None  # noqa: E731
        backlog_end = sum(1 for w in acked if (counted_at(w) or float("inf")) > load_end)
        rerank_backlog_end = sum(1 for w in acked if (reranked_at(w) or float("inf")) > load_end)
        while time.monotonic() < load_end + DRAIN_S and any(reranked_at(w) is None for w in acked):
            time.sleep(0.1)
        missing = [w for w in acked if counted_at(w) is None]
        unranked = [w for w in acked if reranked_at(w) is None]
        drained_s = max([reranked_at(w) for w in acked if reranked_at(w) is not None] + [load_end]) - load_end
        time.sleep(0.3)  # the tally line of the last event
        lags = [counted_at(w) - w.at for w in acked if counted_at(w) is not None]
        rerank_lags = [reranked_at(w) - w.at for w in acked if reranked_at(w) is not None]

        pulled_file = base / "pulled.jsonl"
        votes = recount(client, name, WS, pulled_file)
        held: dict[tuple[str, str], list[str]] = {}
        for line in pulled_file.read_text().splitlines():
            row = json.loads(line)
            for a in row["annotations"]:
                held[(a["user_id"], row["record_id"])] = [x["slot"] for x in a["ranking"]]
        tail.halt.set()
        tail.join()

        last_ok: dict[tuple[str, str], list[str]] = {}
        failed: defaultdict[tuple[str, str], list[list[str]]] = defaultdict(list)
        for w in sorted(writes, key=lambda w: w.at):
            k = (w.user, external.get(w.record, w.record))
            if 200 <= w.status < 300:
                last_ok[k] = w.ranking
            elif w.status >= 500 or w.status == 0:
                failed[k].append(w.ranking)
        lost = [k for k, rk in last_ok.items() if held.get(k) != rk and held.get(k) not in failed.get(k, [])]
        behind = [k for k, rks in failed.items() if k in held and held[k] in rks and held[k] != last_ok.get(k)]
        fives = Counter(e for e, s, _ in calls if s >= 500)
        dropped = Counter(e for e, s, _ in calls if s == 0)
        other = Counter(f"{e} {s}" for e, s, _ in calls if 300 <= s < 500)
        lat = {e: [d for ee, s, d in calls if ee == e and 200 <= s < 300] for e in ("queue", "submit", "update")}
        tally = {k: v for k, v in (tail.tally or {}).items() if v}
        counted = {k: v for k, v in votes.items() if v}
        left = sum(1 for line in pulled_file.read_text().splitlines() if json.loads(line)["status"] == "pending")
        return {"database": database, "load_s": load_s, "subs": sum(1 for w in acked if w.kind == "submit"),
                "updates": sum(1 for w in acked if w.kind == "update"), "left": left,
                "subs_per_s": sum(1 for w in acked if w.kind == "submit") / load_s if load_s else float("nan"),
                "submit": lat["submit"], "queue": lat["queue"], "update": lat["update"], "fives": fives, "dropped": dropped, "other": other,
                "lost": lost, "behind": behind, "lags": lags, "rerank_lags": rerank_lags, "backlog_end": backlog_end, "rerank_backlog_end": rerank_backlog_end,
                "missing": len(missing), "unranked": len(unranked), "drained_s": drained_s, "flushes": len(tail.flushes), "delays": tail.delays,
                "listen_failures": tail.failures, "tally": tally, "recount": counted, "wall_s": 0.0}  # fmt: skip
    finally:
        if listener is not None and listener.poll() is None:
            listener.terminate()
            try:
                listener.wait(timeout=15)
            except subprocess.TimeoutExpired:
                listener.kill()
                listener.wait()
        stop(data_dir)
        if not args.keep:
            shutil.rmtree(base, ignore_errors=True)
        else:
            print(f"[{database}] kept {base}")
        print(f"[{database}] stopped; {time.monotonic() - began:.1f} s in all", flush=True)


def report(r: dict[str, Any], wall_s: float) -> None:
    ms = lambda xs, q: f"{1000 * pct(xs, q):.0f} ms"  # noqa: E731
    lag = lambda key, q: f"{pct(r[key], q):.2f} s"  # noqa: E731
    print(f"\n== {r['database']}: {r['subs']} submissions and {r['updates']} updates acknowledged in {r['load_s']:.1f} s "
          f"({r['left']} records still pending at the pull)")  # fmt: skip
    rows = [
        ("submissions/s", f"{r['subs_per_s']:.2f}", ""),
        ("submit latency p50 / p95", f"{ms(r['submit'], 50)} / {ms(r['submit'], 95)}", ""),
        ("queue-fetch latency p50 / p95", f"{ms(r['queue'], 50)} / {ms(r['queue'], 95)}", ""),
        ("update latency p50 / p95", f"{ms(r['update'], 50)} / {ms(r['update'], 95)}", ""),
        ("5xx queue / submit / update", " / ".join(str(r["fives"][e]) for e in ("queue", "submit", "update")), "target 0"),
        ("no answer (timeout) q / s / u", " / ".join(str(r["dropped"][e]) for e in ("queue", "submit", "update")), "target 0"),
        ("other non-2xx", ", ".join(f"{k}: {v}" for k, v in sorted(r["other"].items())) or "none", ""),
        ("saved behind a 5xx", str(len(r["behind"])), "target 0"),
        ("2xx writes lost (not pulled as acked)", str(len(r["lost"])), "target 0"),
        ("listen lag, counted p50 / p95", f"{lag('lags', 50)} / {lag('lags', 95)}", "target p95 < 10 s"),
        ("  of which the server's delivery", f"{lag('delays', 50)} / {lag('delays', 95)}", "event time to the listener's count"),
        ("listen lag, re-ranked p50 / p95", f"{lag('rerank_lags', 50)} / {lag('rerank_lags', 95)}", "target p95 < 10 s"),
        ("listen backlog at load end", f"{r['backlog_end']} counted, {r['rerank_backlog_end']} re-ranked", ""),
        ("  drained", f"in {r['drained_s']:.1f} s; {r['missing']} never counted, {r['unranked']} never re-ranked", f"waits up to {DRAIN_S:.0f} s"),
        ("listener flushes", str(r["flushes"]), ""),
        ("listener errors logged", str(r["listen_failures"]), "failed deliveries are redelivered; failed writes stay queued"),
        ("tally == recount", f"{r['tally'] == r['recount']}" + (" (before the backlog drained)" if r["missing"] else ""), "target True"),
        ("  tally / recount", f"{dict(sorted(r['tally'].items()))} / {dict(sorted(r['recount'].items()))}", ""),
        ("wall time", f"{wall_s:.1f} s", ""),
    ]  # fmt: skip
    for k, v, t in rows:
        print(f"  {k:<38} {v:<44} {t}")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--annotators", type=int, default=20)
    p.add_argument("--records", type=int, default=1000)
    p.add_argument("--database", choices=["sqlite", "postgresql", "both"], default="both")
    p.add_argument("--update-share", type=float, default=0.1, help="share of submissions changed afterwards (PUT)")
    p.add_argument("--seconds-limit", type=float, default=None, help="stop the annotators after this long (default: when the queues are empty)")
    p.add_argument("--neighbours", type=int, default=5, help="the listener's --neighbours (re-ranked per submission)")
    p.add_argument("--keep", action="store_true", help="keep the temp data dirs (logs) instead of removing them")
    args = p.parse_args()
    results = []
    for db in (["sqlite", "postgresql"] if args.database == "both" else [args.database]):
        t0 = time.monotonic()
        r = run_one(db, args)
        r["wall_s"] = time.monotonic() - t0
        results.append(r)
    for r in results:
        report(r, r["wall_s"])
    if len(results) == 2:
        ratios(*results)


def ratios(s: dict[str, Any], g: dict[str, Any]) -> None:
    print("\n== PostgreSQL / SQLite (the baseline)")
    print(f"  submissions/s      {g['subs_per_s'] / s['subs_per_s']:.2f}x")
    print(f"  submit p95         {pct(g['submit'], 95) / pct(s['submit'], 95):.2f}x")
    print(f"  queue-fetch p95    {pct(g['queue'], 95) / pct(s['queue'], 95):.2f}x")


if __name__ == "__main__":
    main()
