"""The Argilla web UI, in Debian's chromium (headless), shows what `curator argilla push` sent.

The test pushes the demo set to the session's real argilla-server, signs in through the UI's own
sign-in form as the default user, opens the dataset's annotation page and waits until a pushed
prompt's text is rendered; it then checks the questions, curator's pre-filled ranking suggestion,
"find similar" and the record's score metadata. Screenshots go to the test's tmp folder; with
``CURATOR_UPDATE_SCREENSHOTS=1`` they also replace the annotator guide's pictures in ``docs/images/``.

Chromium is driven over the Chrome DevTools protocol with a minimal RFC 6455 websocket client
built on the standard library (no browser-automation dependency). Chromium must be installed
(``make``/``.ci/run`` install Debian's ``chromium``); the test fails, and never skips, without it.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import re
import shutil
import signal
import socket
import struct
import subprocess
import time
import uuid
import warnings
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import httpx
import pytest

from curator.integrations.argilla.push import push
from tests.integrations.test_roundtrip import demo_set  # noqa: F401  (fixture)

DOCS_IMAGE = Path(__file__).resolve().parents[2] / "docs" / "images" / "annotation.png"
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking",
                  "--disable-component-update", "--disable-sync", "--hide-scrollbars", "--mute-audio"]  # fmt: skip
VIEWPORT = (1440, 1000)
MAX_IMAGE_BYTES = 500_000


# --------------------------------------------------------------------------- a minimal CDP client


class WebSocket:
    """Just enough of a websocket client (RFC 6455) for the DevTools protocol: text frames, masked sends."""

    def __init__(self, url: str, timeout: float = 30.0) -> None:
        u = urlparse(url)
        self.sock = socket.create_connection((u.hostname, u.port or 80), timeout=timeout)
        key = base64.b64encode(os.urandom(16)).decode()
        self.sock.sendall((f"GET {u.path} HTTP/1.1\r\nHost: {u.hostname}:{u.port}\r\nUpgrade: websocket\r\n"
                           f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n").encode())  # fmt: skip
        head = b""
        while b"\r\n\r\n" not in head:
            chunk = self.sock.recv(4096)
            if not chunk:
                raise ConnectionError("the DevTools endpoint closed the connection during the handshake")
            head += chunk
        head, self.buf = head.split(b"\r\n\r\n", 1)
        accept = base64.b64encode(hashlib.sha1((key + "258EAFA5-E914-47DA-95CA-C5AB0DC85B11").encode()).digest()).decode()
        if b" 101 " not in head.split(b"\r\n", 1)[0] or accept.encode() not in head:
            raise ConnectionError(f"websocket handshake refused: {head[:200]!r}")

    def _read(self, n: int) -> bytes:
        while len(self.buf) < n:
            chunk = self.sock.recv(1 << 20)
            if not chunk:
                raise ConnectionError("the DevTools connection closed")
            self.buf += chunk
        out, self.buf = self.buf[:n], self.buf[n:]
        return out

    def send(self, text: str) -> None:
        data, mask = text.encode(), os.urandom(4)
        n = len(data)
        head = bytes([0x81]) + (bytes([0x80 | n]) if n < 126 else bytes([0x80 | 126]) + struct.pack(">H", n) if n < 65536 else bytes([0x80 | 127]) + struct.pack(">Q", n))
        self.sock.sendall(head + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(data)))

    def recv(self) -> str:
        parts: list[bytes] = []
        while True:
            b0, b1 = self._read(2)
            n = b1 & 0x7F
            if n == 126:
                n = struct.unpack(">H", self._read(2))[0]
            elif n == 127:
                n = struct.unpack(">Q", self._read(8))[0]
            mask = self._read(4) if b1 & 0x80 else b""
            payload = self._read(n)
            if mask:
                payload = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
            opcode = b0 & 0x0F
            if opcode == 0x8:
                raise ConnectionError("the DevTools connection closed")
            if opcode == 0x9:  # ping: answer, keep reading
                continue
            if opcode in (0x0, 0x1, 0x2):
                parts.append(payload)
                if b0 & 0x80:
                    return b"".join(parts).decode()

    def close(self) -> None:
        self.sock.close()


class Page:
    """One chromium tab over CDP: ``call`` a method, ``js`` to evaluate an expression, ``wait_for`` a condition."""

    def __init__(self, ws_url: str) -> None:
        self.ws, self.next_id = WebSocket(ws_url), 0

    def call(self, method: str, **params: Any) -> dict[str, Any]:
        self.next_id += 1
        self.ws.send(json.dumps({"id": self.next_id, "method": method, "params": params}))
        while True:
            msg = json.loads(self.ws.recv())
            if msg.get("id") == self.next_id:
                if "error" in msg:
                    raise RuntimeError(f"CDP {method} failed: {msg['error']}")
                return msg["result"]

    def js(self, expression: str) -> Any:
        res = self.call("Runtime.evaluate", expression=expression, returnByValue=True, awaitPromise=True)
        if "exceptionDetails" in res:
            raise RuntimeError(f"page script failed: {res['exceptionDetails'].get('text')} {res['exceptionDetails'].get('exception', {}).get('description', '')}")
        return res["result"].get("value")

    def wait_for(self, expression: str, what: str, timeout: float = 30.0) -> Any:
        deadline = time.monotonic() + timeout
        while True:
            try:
                value = self.js(expression)
            except RuntimeError:  # the document is being replaced (navigation): try again
                value = None
            if value:
                return value
            if time.monotonic() > deadline:
                text = self.js("document.body ? document.body.innerText.slice(0, 600) : ''")  # for the failure message
                raise AssertionError(f"timed out after {timeout:g} s waiting for {what} at {self.js('location.href')}; the page shows: {text!r}")
            time.sleep(0.25)

    def close(self) -> None:
        self.ws.close()


def chromium_path() -> str:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        path = shutil.which(name)
        if path:
            return path
    pytest.fail("chromium is not installed: the browser test needs Debian's chromium (apt-get install chromium; "
                "`make test` and .ci/run install it)", pytrace=False)  # fmt: skip


def launch_chromium(profile: Path, timeout: float = 30.0) -> tuple[subprocess.Popen, str]:
    """Start headless chromium with a fresh profile; return it and its first page's DevTools websocket URL."""
    exe = chromium_path()
    with open(profile.parent / "chromium.log", "wb") as log_file:
        proc = subprocess.Popen(
            [exe, *CHROMIUM_FLAGS, f"--user-data-dir={profile}", "--remote-debugging-port=0",
             f"--window-size={VIEWPORT[0]},{VIEWPORT[1]}", "about:blank"],
            stdout=subprocess.DEVNULL, stderr=log_file, stdin=subprocess.DEVNULL,
            start_new_session=True,  # its own process group: the teardown ends its renderers too
        )  # fmt: skip
    port_file, deadline = profile / "DevToolsActivePort", time.monotonic() + timeout
    while not (port_file.exists() and port_file.read_text().strip()):
        if proc.poll() is not None or time.monotonic() > deadline:
            stop_chromium(proc)
            log = (profile.parent / "chromium.log").read_text(errors="replace")[-1500:]
            raise AssertionError(f"chromium did not open its DevTools port (exit {proc.poll()}): {log}")
        time.sleep(0.1)
    port = int(port_file.read_text().split()[0])
    while True:
        pages = [t for t in httpx.get(f"http://127.0.0.1:{port}/json/list", timeout=5).json() if t.get("type") == "page"]
        if pages:
            return proc, pages[0]["webSocketDebuggerUrl"]
        if time.monotonic() > deadline:
            stop_chromium(proc)
            raise AssertionError("chromium opened no page")
        time.sleep(0.1)


def stop_chromium(proc: subprocess.Popen) -> None:
    """End the chromium this test started, then anything left in its process group."""
    proc.terminate()
    try:
        proc.wait(10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


def plain_snippet(prompt: Any, words: int = 6) -> str | None:
    """The first words of a prompt's text up to any markdown/LaTeX markup (which the UI renders)."""
    text = prompt if isinstance(prompt, str) else " ".join(m.get("content", "") for m in prompt)
    head = re.split(r"[$\\*_`#\[\]<>|]", text, maxsplit=1)[0]
    tokens = head.split()
    return " ".join(tokens[:words]) if len(tokens) >= 3 else None


# --------------------------------------------------------------------------- the test


@pytest.fixture
def browser(tmp_path: Path):
    """A headless chromium tab with a fresh profile, closed (by its pid) at the end."""
    proc, ws_url = launch_chromium(tmp_path / "profile")
    try:
        page = Page(ws_url)
    except BaseException:
        stop_chromium(proc)
        raise
    try:
        page.call("Page.enable")
        page.call("Runtime.enable")
        page.call("Emulation.setDeviceMetricsOverride", width=VIEWPORT[0], height=VIEWPORT[1], deviceScaleFactor=1, mobile=False)
        yield page
    finally:
        page.close()
        stop_chromium(proc)


def sign_in(page: Page, url: str, username: str, password: str) -> None:
    """Sign in through the UI's own form (POST /api/v1/token; the UI keeps the token in localStorage)."""
    page.call("Page.navigate", url=f"{url}/sign-in")
    page.wait_for("!!document.querySelector('input[name=Username]') && !!document.querySelector('input[name=Password]')", "the sign-in form")
    for name, value in (("Username", username), ("Password", password)):
        page.js(f"document.querySelector('input[name={name}]').focus()")
        page.call("Input.insertText", text=value)  # typed, so the form's own input handlers run
    page.wait_for("!document.querySelector('button[type=submit]').disabled", "the sign-in button to be enabled")
    page.js("document.querySelector('button[type=submit]').click()")
    page.wait_for("!location.pathname.startsWith('/sign-in')", "the sign-in to finish")


SETTLED = "document.getAnimations().every(a => a.playState !== 'running' || a.effect.getComputedTiming().endTime === Infinity)"


def screenshot(page: Page, path: Path) -> bytes:
    """A PNG of the viewport, once the page's transitions have finished."""
    page.wait_for(SETTLED, "the page's transitions to finish", timeout=10)
    time.sleep(0.2)
    data = base64.b64decode(page.call("Page.captureScreenshot", format="png")["data"])
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return data


def ranking_with_influence(demo: dict[str, Any], tmp: Path) -> Any:
    """The demo set's ranking, with real influence from the tiny model (so every score metadata is filled)."""
    from curator.config import GradientConfig, IndexConfig, ProjectionConfig
    from curator.io.data import load_candidates, load_eval
    from curator.demo import demo_data_dir, subset
    from curator.influence.indexing import Featurizer, index_rows
    from curator.influence.scoring import influence_scores, open_space
    from curator.curation.ranking import rank_candidates

    d = demo_data_dir()
    _, evals = subset(load_candidates(d / "candidates.jsonl"), load_eval(d / "eval.jsonl"), 2, 3)
    cfg = IndexConfig(model="tiny-random", projection=ProjectionConfig(dim=64), gradient=GradientConfig(max_length=96), batch_size=8)  # as demo_set's store
    index_rows(Featurizer(cfg), evals, tmp / "eval_store", "eval")
    influence = influence_scores(open_space([demo["store"].path], [tmp / "eval_store"]))
    return rank_candidates(demo["ranking"][["id", "strategy", "group", "task", "alignment"]], influence)


@pytest.mark.argilla
def test_annotation_page_shows_pushed_records(demo_set: dict[str, Any], argilla_server: Any, argilla_client: Any, browser: Page, tmp_path: Path) -> None:
    from curator.integrations.argilla.mapping import AGENT, plan_records, spec_for

    started = time.monotonic()
    cands, store = demo_set["candidates"], demo_set["store"]
    ranking = ranking_with_influence(demo_set, tmp_path)
    name, ws = f"browser-{uuid.uuid4().hex[:8]}", "curator"
    push(cands, ranking, name, ws, store=store, client=argilla_client)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        dataset_id = str(argilla_client.datasets(name=name, workspace=ws).id)
    plans = {p["metadata"]["group"]: p for p in plan_records(cands, spec_for(cands, 256, store.dim), ranking)}
    snippets = {s: g for g, p in plans.items() if (s := plain_snippet(p["fields"]["prompt"]))}
    assert snippets, "no demo prompt has plain text to look for"

    # sign in through the form, open the dataset's annotation page, wait for a pushed prompt
    sign_in(browser, argilla_server.url, argilla_server.username, argilla_server.password)
    browser.call("Page.navigate", url=f"{argilla_server.url}/dataset/{dataset_id}/annotation-mode")
    shown = browser.wait_for(
        f"(() => {{ const t = document.body && document.body.innerText; return t && {json.dumps(list(snippets))}.find(s => t.includes(s)); }})()",
        "a pushed prompt's text on the annotation page",
    )
    plan = plans[snippets[shown]]
    suggested = plan["suggestions"][0]["value"]

    # the questions, curator's suggestion (agent, scores) and "find similar" (the gradient vector)
    browser.wait_for("document.querySelectorAll('.draggable__suggestion__score').length > 0", "the ranking suggestion's scores")
    text = browser.js("document.body.innerText")
    for want in (name, "Rank the candidates, best first", "Best strategy for this prompt", "Comment (optional)", AGENT, "Find similar"):
        assert want in text, f"{want!r} is not on the annotation page"
    for i in range(1, len(suggested) + 1):
        assert f"Candidate {i}" in text
    assert plan["fields"]["candidate_1"].split(".")[0] in text, "candidate 1's text is not shown"
    slots = browser.js("""Array.from(document.querySelectorAll('.draggable__slots-container .draggable__slot'))
        .map(s => Array.from(s.querySelectorAll('[id^=candidate_]')).map(e => e.id).filter(id => /^candidate_[0-9]+$/.test(id)))""")
    image = screenshot(browser, tmp_path / "annotation.png")

    # the record's metadata: the scores annotators filter and sort on
    browser.js("document.querySelector('[aria-label=\"Expand Record Dropdown for Extra Information\"]').click()")
    browser.wait_for("Array.from(document.querySelectorAll('.record-menu__content button')).some(b => b.innerText.includes('View metadata'))", "the record menu")
    browser.js("Array.from(document.querySelectorAll('.record-menu__content button')).find(b => b.innerText.includes('View metadata')).click()")
    meta_text = browser.wait_for("document.body.innerText.includes('score_1') && document.body.innerText", "the record's metadata")
    for key in ("alignment_1", "influence_1", "score_1", "strategy_1", "predicted_best_strategy", "task"):
        assert key in meta_text, f"metadata {key} is not shown"
    browser.js("""(() => { const row = Array.from(document.querySelectorAll('.table-info__row')).find(r => r.innerText.includes('strategy_1'));
        const box = row && row.closest('.table-info__content');  // scroll the panel to slot 1's scores
        if (box) box.scrollTop += row.getBoundingClientRect().top - box.getBoundingClientRect().top; })()""")
    meta_image = screenshot(browser, tmp_path / "metadata.png")
    assert image[:8] == b"\x89PNG\r\n\x1a\n" and len(image) < MAX_IMAGE_BYTES, len(image)
    assert len(meta_image) < MAX_IMAGE_BYTES, len(meta_image)

    # the suggested ranking is pre-filled in the rank slots, in curator's order
    assert [x for slot in slots for x in slot] == suggested, (
        f"the rank slots hold {slots}, curator suggested {suggested}: the ranking suggestion is not pre-filled "
        "(argilla-server keeps a ranking suggestion sent without explicit ranks, as the SDK's records.log sends it, "
        "as unranked; send [{'value': slot, 'rank': k}, ...])"
    )
    if os.environ.get("CURATOR_UPDATE_SCREENSHOTS"):  # refresh the annotator guide's pictures
        DOCS_IMAGE.parent.mkdir(parents=True, exist_ok=True)
        DOCS_IMAGE.write_bytes(image)
        DOCS_IMAGE.with_name("metadata.png").write_bytes(meta_image)


@pytest.mark.argilla
def test_rating_form_for_one_candidate_per_prompt(argilla_server: Any, argilla_client: Any, browser: Page, tmp_path: Path) -> None:
    """A plain SFT set (one candidate per prompt): the UI shows the 1-5 rating and keep/drop with
    curator's suggestions pre-filled; an annotator changes them and submits through the UI, and
    `pull` reads the answer back."""
    from curator.integrations.argilla.mapping import suggested_rating
    from curator.integrations.argilla.pull import pull
    from curator.io.data import Candidate
    from tests.integrations.test_questions import ranking_table

    scores = {"g0": 1.0, "g1": -1.0}
    cands = [Candidate(f"c{i}", f"Question {i}: name a colour.", f"Answer {i}: blue.", "direct", "colours", f"g{i}") for i in range(2)]
    name = f"rating-{uuid.uuid4().hex[:8]}"
    push(cands, ranking_table(cands, list(scores.values())), name, "curator", client=argilla_client)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        dataset_id = str(argilla_client.datasets(name=name, workspace="curator").id)
    sign_in(browser, argilla_server.url, argilla_server.username, argilla_server.password)
    browser.call("Page.navigate", url=f"{argilla_server.url}/dataset/{dataset_id}/annotation-mode")
    shown = browser.wait_for("(() => { const t = document.body && document.body.innerText; const m = t && t.match(/Question ([0-9]): name a colour/); return m && m[1]; })()", "a pushed prompt")
    group = f"g{shown}"
    text = browser.wait_for("document.body.innerText.includes('Keep the candidate in the training set?') && document.body.innerText", "the rating questions")
    assert "Rate the candidate (1 = unusable, 5 = exemplary)" in text and "Rank the candidates" not in text
    want = suggested_rating(scores[group])
    assert browser.js(f"document.querySelector('label[for=rating_1_{want}]').classList.contains('label-active')"), "the suggested rating is not pre-filled"
    keep = "keep" if scores[group] >= 0 else "drop"
    assert browser.js(f"document.querySelector('#keep_1_{keep}').checked"), "the suggested keep/drop is not pre-filled"
    screenshot(browser, tmp_path / "rating.png")
    # the annotator disagrees: rating 4 and keep, then submits through the form
    other = 4 if want != 4 else 3
    browser.js(f"document.querySelector('label[for=rating_1_{other}]').click()")
    # keep/drop are checkboxes: clicking an already checked one (a keep suggestion) would clear it
    browser.js("document.querySelector('#keep_1_keep').checked || document.querySelector('label[for=keep_1_keep]').click()")
    browser.wait_for(f"document.querySelector('label[for=rating_1_{other}]').classList.contains('label-active') && document.querySelector('#keep_1_keep').checked", "the new answers")
    browser.js("document.querySelector('button.button--submit').click()")
    res = None
    deadline = time.monotonic() + 90  # the UI posts asynchronously; a loaded machine may take a while
    while time.monotonic() < deadline:
        res = pull(name, client=argilla_client, out=tmp_path / "pulled.jsonl")
        if res.submitted:
            break
        time.sleep(0.5)
    assert res is not None and res.submitted == 1, "the submission through the UI did not reach the server"
    row = next(r for r in map(json.loads, res.out.read_text().splitlines()) if r["group"] == group)
    assert [(a["ratings"], a["labels"]) for a in row["annotations"]] == [([{"candidate_id": f"c{shown}", "slot": "candidate_1", "rating": other}], [{"candidate_id": f"c{shown}", "slot": "candidate_1", "label": "keep"}])]
    if os.environ.get("CURATOR_UPDATE_SCREENSHOTS"):
        DOCS_IMAGE.with_name("rating.png").write_bytes((tmp_path / "rating.png").read_bytes())
