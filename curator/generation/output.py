"""The output of ``curator generate``: candidate rows in JSONL, and the sidecar that records the run.

- Rows are appended one per finished (prompt, strategy) pair and flushed at once; an fsync
  follows at most every ``FSYNC_SECONDS`` and at the end. A kill leaves at worst a torn last line,
  which the next run cuts off before it appends.
- The sidecar ``<out stem>.generate.json`` (replaced atomically) holds the settings that define
  the rows, each strategy's templates and hash, the generators, the pairs skipped (empty answers,
  answers that failed ``--verify``) and one entry per run with its counts.
- A rerun reads both and generates only the pairs that are missing. Settings that would make
  the new rows unlike the old ones are refused, naming the setting.
- One writer at a time: ``<out>.lock`` (the store's flock-based writer lock).
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

from curator.errors import InputError
from curator.io.atomic import write_json_atomic
from curator.store.lock import StoreLock

FORMAT_VERSION = 1
FSYNC_SECONDS = 0.5
# settings that define the rows, and the option that sets each
SETTING_OPTIONS = {"seed": "--seed", "temperature": "--temperature", "top_p": "--top-p", "max_new_tokens": "--max-new-tokens", "verify": "--verify", "on_mismatch": "--on-mismatch"}


def sidecar_path(out: Path) -> Path:
    return out.with_name(out.stem + ".generate.json")


def _fmt(v: Any) -> str:
    return json.dumps(v) if not isinstance(v, str) else repr(v)


def compare(old: dict[str, Any], new: dict[str, Any], out: Path) -> None:
    """Refuse a run whose settings differ from those that made ``out``'s rows, naming the first difference."""
    fix = f"use the same setting to continue it, or write to another --out (or delete {out.name} and {sidecar_path(out).name})"
    for key, option in SETTING_OPTIONS.items():
        a, b = old["settings"].get(key), new["settings"].get(key)
        if a != b:
            raise InputError(f"{out}: its rows were generated with {option} {_fmt(a)}, and this run asks for {_fmt(b)}: {fix}")
    for role, gen in new["generators"].items():
        was = old["generators"].get(role)
        if was is None:
            continue
        for key in ("backend", "model", "extra_body"):
            if was.get(key) != gen.get(key):
                option = {"teacher": {"backend": "--backend", "model": "--model", "extra_body": "--extra-body"}, "target": {"backend": "--target-backend", "model": "--target-model", "extra_body": "--target-extra-body"}}[role][key]
                raise InputError(f"{out}: its {role} rows were generated with {option} {_fmt(was.get(key))}, and this run asks for {_fmt(gen.get(key))}: {fix}")
    for name, s in new["strategies"].items():
        was = old["strategies"].get(name)
        if was is not None and was["template_hash"] != s["template_hash"]:
            raise InputError(f"{out}: strategy {name!r} was generated from other templates (hash {was['template_hash']}, now {s['template_hash']}, from {s['source']}): {fix}")


class Output:
    """The candidates file and its sidecar, held by one writer."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.sidecar = sidecar_path(self.path)
        self.record: dict[str, Any] = {}
        self._fh: Any = None
        self._synced = 0.0
        self._lock = StoreLock(self.path.parent, lock_file=f".{self.path.name}.lock", what="generate output")

    def open(self, record: dict[str, Any]) -> set[tuple[str, str]]:
        """Take the lock, check ``record``'s settings against the existing run, repair a torn last
        line, and return the (group, strategy) pairs already done (written or skipped). Nothing
        new is written until ``begin``."""
        if self.path.suffix != ".jsonl":
            raise InputError(f"--out {self.path}: generate writes JSON Lines (rows are appended as they finish): use a .jsonl name")
        if self.path.is_dir():
            raise InputError(f"--out {self.path} is a directory: give a file name, e.g. {self.path / 'candidates.jsonl'}")
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock.acquire()
        try:
            return self._open(record)
        except BaseException:
            self._lock.release()
            raise

    def _open(self, record: dict[str, Any]) -> set[tuple[str, str]]:
        old: dict[str, Any] | None = None
        if self.sidecar.exists():
            try:
                old = json.loads(self.sidecar.read_text(encoding="utf-8"))
            except ValueError:
                raise InputError(f"{self.sidecar}: not readable JSON: restore it, or delete it together with {self.path.name} to start over") from None
            if not isinstance(old, dict) or old.get("format_version") != FORMAT_VERSION:
                raise InputError(f"{self.sidecar}: not a curator generate record of format {FORMAT_VERSION}: write to another --out")
            compare(old, record, self.path)
        elif self.path.exists() and self.path.stat().st_size > 0:
            raise InputError(f"{self.path} exists and was not written by curator generate (there is no {self.sidecar.name}): write to another --out, or move the file away")
        done = self._repair_and_read()
        if old is not None:
            record["strategies"] = {**old["strategies"], **record["strategies"]}
            record["generators"] = {**old["generators"], **record["generators"]}
            record["skipped"] = old.get("skipped", [])
            record["runs"] = old.get("runs", [])
            done |= {(s["group"], s["strategy"]) for s in record["skipped"]}
        self.record = record
        return done

    def begin(self) -> None:
        """Record the settings, then open the rows for appending (the settings are on disk first)."""
        self.save()
        self._fh = self.path.open("a", encoding="utf-8")

    def _repair_and_read(self) -> set[tuple[str, str]]:
        if not self.path.exists():
            return set()
        raw = self.path.read_bytes()
        cut = len(raw)
        if raw and not raw.endswith(b"\n"):
            last = raw[raw.rfind(b"\n") + 1 :]
            try:
                json.loads(last)
                fixed = raw + b"\n"  # a whole last row, only its newline was lost
            except ValueError:
                cut = raw.rfind(b"\n") + 1
                fixed = raw[:cut]
            with self.path.open("r+b") as fh:
                fh.truncate(cut)
                if len(fixed) > cut:
                    fh.seek(cut)
                    fh.write(fixed[cut:])
                fh.flush()
                os.fsync(fh.fileno())
            raw = fixed
        done: set[tuple[str, str]] = set()
        for n, line in enumerate(raw.decode("utf-8").splitlines(), 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
                done.add((row["group"], row["strategy"]))
            except (ValueError, KeyError, TypeError):
                raise InputError(f"{self.path}:{n}: not a candidate row written by curator generate: fix or delete the line, then rerun") from None
        return done

    def append(self, row: dict[str, Any]) -> None:
        self._fh.write(json.dumps(row, ensure_ascii=False) + "\n")
        self._fh.flush()
        now = time.monotonic()
        if now - self._synced >= FSYNC_SECONDS:
            os.fsync(self._fh.fileno())
            self._synced = now

    def skip(self, group: str, strategy: str, reason: str) -> None:
        self.record["skipped"].append({"group": group, "strategy": strategy, "reason": reason})

    def save(self) -> None:
        write_json_atomic(self.sidecar, self.record)

    def close(self) -> None:
        """Make the rows durable, save the record (when ``begin`` ran), release the lock. A run that
        leaves no row and no skipped pair removes both files: nothing was made, so nothing binds a
        rerun to its settings (a wrong --model refused by the server can simply be fixed)."""
        try:
            if self._fh is not None:
                self._fh.flush()
                os.fsync(self._fh.fileno())
                self._fh.close()
                self._fh = None
                if self.path.stat().st_size == 0 and not self.record["skipped"]:
                    self.path.unlink()
                    self.sidecar.unlink(missing_ok=True)
                else:
                    self.save()
        finally:
            self._lock.release()
