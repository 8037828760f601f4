"""`curator generate` throughput: the openai backend against a real `transformers serve`, and the
local backend next to `curator align`'s sampling, measured in one run on the same prompts.

Prints, for the bundled SmolLM2 (the demo's prompts, the `teacher` strategy, greedy):
  (b) the baseline: the openai backend at --concurrency 1 against `transformers serve`;
  (a) the same at --concurrency N, against the default server (one request at a time) and against
      `transformers serve --continuous-batching`; requests/s, answer tokens/s and a/b for each;
  (l) the local backend (`--batch-size 32`, its default): rows/s and tokens/s;
  (s) `curator align`'s sampling (`sample_outputs`, k samples per prompt): samples/s, tokens/s and
      l/s (the local backend is that loop with one sample per request).
  (c) the client alone: the openai backend against a stand-in server that answers every request
      after a fixed delay (no model), at --concurrency 1 and N: requests/s and the ratio, which
      shows how many requests the client keeps in flight (N at best). This stand-in measures the
      client, never generation.
Answer tokens are counted with the model's tokenizer on the returned text, so every path is
measured in the same unit. Ratios, not absolute times, are the result.

    python benchmarks/generate.py [--prompts 16] [--max-new-tokens 64] [--concurrency 4] [--k 4]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from curator.demo import demo_data_dir  # noqa: E402
from curator.generation.generate import GenerateConfig, GeneratorSpec, generate_file  # noqa: E402
from curator.generation.remote import RemoteConfig  # noqa: E402
from curator.model.models import load_model, smollm2_folder  # noqa: E402
from curator.model.sampling import SamplingConfig, sample_outputs  # noqa: E402
from tests.serving import start_serve, stop_serve  # noqa: E402


def tokens(tok, texts: list[str]) -> int:  # type: ignore[no-untyped-def]
    return sum(len(tok(t, add_special_tokens=False)["input_ids"]) for t in texts)


def run_generate(prompts: Path, out: Path, spec: GeneratorSpec, max_new_tokens: int, loaded=None) -> tuple[float, list[str]]:  # type: ignore[no-untyped-def]
    config = GenerateConfig(strategies=("teacher",), teacher=spec, target=spec, temperature=0.0, max_new_tokens=max_new_tokens)
    start = time.perf_counter()
    generate_file(prompts, out, config, loaded=loaded)
    seconds = time.perf_counter() - start
    return seconds, [json.loads(x)["response"] for x in out.read_text().splitlines()]


class _Delayed(BaseHTTPRequestHandler):
    """Answers every chat request with a fixed text after DELAY seconds (the client-only stand-in)."""

    protocol_version = "HTTP/1.1"
    DELAY = 0.05

    def log_message(self, *a) -> None:  # type: ignore[no-untyped-def]
        pass

    def _send(self, body: bytes) -> None:  # one write: no delayed-ACK stall between headers and body
        head = f"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n".encode()
        self.wfile.write(head + body)

    def do_GET(self) -> None:  # noqa: N802
        self._send(b'{"object": "list", "data": []}')

    def do_POST(self) -> None:  # noqa: N802
        self.rfile.read(int(self.headers.get("Content-Length") or 0))
        time.sleep(self.DELAY)
        self._send(b'{"choices": [{"index": 0, "finish_reason": "stop", "message": {"role": "assistant", "content": "The answer is 4."}}]}')


def client_only(work: Path, n_requests: int, concurrency: int) -> None:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Delayed)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{server.server_port}/v1"
    prompts = work / "client-prompts.jsonl"
    prompts.write_text("".join(json.dumps({"prompt": f"What is {i} + {i}?"}) + "\n" for i in range(n_requests)))
    rates = {}
    for conc in (1, concurrency):
        spec = GeneratorSpec("openai", "stand-in", RemoteConfig(url, "stand-in", concurrency=conc))
        seconds, _ = run_generate(prompts, work / f"client-{conc}.jsonl", spec, 16)
        rates[conc] = n_requests / seconds
    server.shutdown()
    print(f"client alone, {n_requests} requests to a stand-in answering after {_Delayed.DELAY * 1000:.0f} ms: c=1 {rates[1]:.1f} req/s, c={concurrency} {rates[concurrency]:.1f} req/s ({rates[concurrency] / rates[1]:.2f}x; at best {concurrency}x)")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--prompts", type=int, default=16)
    ap.add_argument("--max-new-tokens", type=int, default=64)
    ap.add_argument("--concurrency", type=int, default=4)
    ap.add_argument("--k", type=int, default=4, help="samples per prompt on the align path")
    ap.add_argument("--client-requests", type=int, default=400, help="requests of the client-only measure")
    ap.add_argument("--client-concurrency", type=int, default=8)
    ap.add_argument("--client-only", action="store_true", help="measure only the client against the stand-in")
    args = ap.parse_args()

    work = Path(tempfile.mkdtemp(prefix="curator-bench-generate-"))
    client_only(work, args.client_requests, args.client_concurrency)
    if args.client_only:
        return
    rows = [json.loads(x) for x in (demo_data_dir() / "prompts.jsonl").read_text().splitlines()][: args.prompts]
    prompts = work / "prompts.jsonl"
    prompts.write_text("".join(json.dumps(r) + "\n" for r in rows))
    folder = smollm2_folder()
    loaded = load_model("smollm2-135m")
    tok = loaded.tokenizer
    n = len(rows)
    print(f"{n} prompts, strategy teacher, greedy, up to {args.max_new_tokens} new tokens; model {folder.name}")

    results: dict[str, tuple[float, int]] = {}  # name -> (seconds, answer tokens)
    for mode, extra in (("default", []), ("continuous-batching", ["--continuous-batching"])):
        proc, url = start_serve(folder, work / f"serve-{mode}.log", extra=extra)
        try:
            for conc in ((1, args.concurrency) if mode == "default" else (args.concurrency,)):
                spec = GeneratorSpec("openai", str(folder), RemoteConfig(url, str(folder), concurrency=conc))
                run_generate(prompts, work / f"warm-{mode}-{conc}.jsonl", GeneratorSpec("openai", str(folder), RemoteConfig(url, str(folder), concurrency=1)), 4)  # warm-up
                seconds, texts = run_generate(prompts, work / f"{mode}-{conc}.jsonl", spec, args.max_new_tokens)
                results[f"openai {mode} c={conc}"] = (seconds, tokens(tok, texts))
        finally:
            stop_serve(proc)

    sample_outputs(loaded, {"w": rows[0]["prompt"]}, SamplingConfig(k=1, max_new_tokens=2))  # warm-up
    seconds, texts = run_generate(prompts, work / "local.jsonl", GeneratorSpec("local", "smollm2-135m"), args.max_new_tokens, loaded=loaded)
    results["local batch=32"] = (seconds, tokens(tok, texts))
    cfg = SamplingConfig(k=args.k, max_new_tokens=args.max_new_tokens, batch_size=8, temperature=0.7)
    start = time.perf_counter()
    samples = sample_outputs(loaded, {r["id"]: r["prompt"] for r in rows}, cfg)
    results[f"align sampling k={args.k}"] = (time.perf_counter() - start, tokens(tok, [s for v in samples.values() for s in v]))

    base_s, base_t = results["openai default c=1"]
    print(f"{'path':34} {'rows/s':>8} {'tokens/s':>9} {'a/b rows':>9} {'a/b tokens':>11}")
    for name, (s, t) in results.items():
        units = n * (args.k if name.startswith("align") else 1)
        print(f"{name:34} {units / s:8.2f} {t / s:9.1f} {(units / s) / (n / base_s):9.2f} {(t / s) / (base_t / base_s):11.2f}")
    l_s, l_t = results["local batch=32"]
    a_s, a_t = results[f"align sampling k={args.k}"]
    print(f"local backend vs align sampling: rows/s {n / l_s:.2f} vs samples/s {n * args.k / a_s:.2f} ({(n / l_s) / (n * args.k / a_s):.2f}x); tokens/s {l_t / l_s:.1f} vs {a_t / a_s:.1f} ({(l_t / l_s) / (a_t / a_s):.2f}x)")


if __name__ == "__main__":
    main()
