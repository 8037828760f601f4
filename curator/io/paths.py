"""Output paths that data cannot steer: names made from data stay one file name inside the chosen folder.

A file name that comes from data (a dataset, strategy, task or record name) could hold ``/``,
``..``, an absolute path, a NUL byte or a control character. ``safe_name`` turns any text into one
harmless path component; ``inside`` joins a name to a folder and refuses a result that would
resolve outside it (a ``..`` part, an absolute part, or a symlink pointing away).
"""

from __future__ import annotations

import hashlib
import re
import unicodedata
from pathlib import Path

from curator.errors import InputError

_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")
MAX_NAME = 100


def safe_name(text: str, max_length: int = MAX_NAME) -> str:
    """``text`` as one file-name component: ASCII letters, digits, ``.``, ``_`` and ``-`` only.

    Safe text is returned unchanged. Anything else is replaced (runs of other characters become
    ``-``; leading dots and dashes go, so the name is never hidden, ``.`` or ``..``), and a short
    hash of the original text is appended, so two different names never map to the same file.
    """
    if max_length < 16:
        raise ValueError("max_length must be at least 16")
    text = str(text)
    cleaned = _UNSAFE.sub("-", unicodedata.normalize("NFKC", text)).lstrip(".-")
    if text and cleaned == text and len(text) <= max_length:
        return text
    digest = hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()[:10]
    head = cleaned[: max_length - len(digest) - 1].rstrip(".-")
    return f"{head}-{digest}" if head else f"x-{digest}"


def inside(folder: str | Path, *parts: str) -> Path:
    """``folder / parts``, refused unless it resolves inside ``folder`` (symlinks followed)."""
    base = Path(folder)
    target = base.joinpath(*parts)
    root, resolved = base.resolve(), target.resolve()
    if resolved != root and root not in resolved.parents:
        raise InputError(f"{target}: resolves to {resolved}, outside the output folder {base}: name the output with a plain file name")
    return target
