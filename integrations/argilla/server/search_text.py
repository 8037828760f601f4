"""Elasticsearch's ``simple_query_string`` for curator's search engine: parse, match and score text queries.

argilla-server's Elasticsearch engine sends a record search's text as ``simple_query_string`` with
``default_operator: AND`` over ``fields.*`` (whole-record search) or over one field's path (field-scoped
search). This module reads the same syntax the way Lucene's ``SimpleQueryParser`` does (the parser is
a port of its state machine, so odd inputs behave as in Elasticsearch):

* ``a b`` and ``a + b``: both; ``a | b``: either; ``-a``: not ``a`` (``--a`` is ``a``; ``-a`` alone
  matches every record without ``a``); ``"a b"``: the words adjacent and in order in one field value;
  ``"a b"~N``: within N moves; ``pre*``: a word starting with ``pre``; ``word~N``: a word within N
  edits (N at most 2; ``word~`` is 2); ``( )``: grouping; ``\\``: escapes the next character; a query
  of only ``*``: every record.
* No precedence between ``+``, ``|`` and whitespace: operators apply left to right, each one to the
  result so far and the next operand, so ``a | b c`` is ``(a | b) c`` and ``a b | c`` is
  ``(a b) | c``. ``-`` binds tightest, to the operand right after it (a word, phrase or group).
* Lenient, never raising: an unclosed ``(`` or ``"`` is ignored (the text after it is read as plain
  operands), a stray ``)`` is ignored, an operator with nothing on its left is ignored, and of two
  operators in a row the first wins. A query with no operand at all (``""``, ``"()"``, ``"!!"``)
  matches nothing, as in Elasticsearch.

Words are the lower-cased ``\\w+`` tokens of the searched fields (standing in for the standard
analyser). As with Elasticsearch over several fields, the words of one operand (``foo-bar`` is
``foo`` and ``bar``) must be in the same field, a phrase in one value of a field, while different
operands may match different fields. Scores: BM25 without length normalisation (k1 = 1) for words
and phrases, with document frequencies over the candidate documents; 1.0 for a prefix, for a negated
operand and for ``*``; AND and OR add up the scores of their matching operands. Fuzzy terms expand to
every word within the distance (Elasticsearch expands to at most 10). Pure Python, so curator's own
tests import it; ``search_query.py`` re-exports :class:`TextMatcher` for the engine.
"""

from __future__ import annotations

import math
import re
from collections import Counter
from typing import Any, Dict, List, Optional, Set, Tuple

WORD = re.compile(r"\w+", re.UNICODE)
_SPACE = " \t\n\r"
_ENDS_TOKEN = set('"|+()' + _SPACE)
_JAVA_TRIM = "".join(chr(c) for c in range(33))  # what java.lang.String.trim() strips
_MAX_EDITS = 2  # Lucene's LevenshteinAutomata.MAXIMUM_SUPPORTED_DISTANCE

# A parsed query is a tuple tree:
#   ("term", words)          the analysed words of one operand, all in one field
#   ("phrase", words, slop)  the words in order in one field value, within ``slop`` moves
#   ("prefix", text)         a word starting with ``text``
#   ("fuzzy", text, edits)   a word within ``edits`` Levenshtein edits of ``text``
#   ("all",)                 every document
#   ("not", node)            every document that ``node`` does not match
#   ("and", [nodes]) / ("or", [nodes])
Node = Tuple[Any, ...]


def analyze(text: str) -> List[str]:
    return WORD.findall(text.lower())


class _State:
    __slots__ = ("top", "op", "prev", "nots")

    def __init__(self) -> None:
        self.top: Optional[Node] = None
        self.op: Optional[str] = None  # the operator set for the next operand
        self.prev: Optional[str] = None  # the operator of the node on top
        self.nots = 0


def parse(query: str) -> Optional[Node]:
    """The query's tree, or None when it has no operand (then it matches nothing)."""
    if query.strip(_JAVA_TRIM) == "*":
        return ("all",)
    return _parse(query, 0, len(query))


def _parse(data: str, i: int, end: int) -> Optional[Node]:
    st = _State()
    while i < end:
        c = data[i]
        if c == "(":
            i = _subquery(data, i, end, st)
        elif c == ")":  # stray: ignored
            i += 1
        elif c == '"':
            i = _phrase(data, i, end, st)
        elif c in "+|":
            if st.op is None and st.top is not None:
                st.op = "and" if c == "+" else "or"
            i += 1
        elif c == "-":
            st.nots += 1
            i += 1
            continue  # keep counting: "--a" is "a"
        elif c in _SPACE:
            i += 1
        else:
            i = _token(data, i, end, st)
        st.nots = 0  # a "-" applies only to what follows it immediately
    return st.top


def _add(st: _State, branch: Optional[Node]) -> None:
    if branch is None:
        return
    if st.nots % 2:
        branch = ("not", branch)
    if st.top is None:
        st.top = branch
    else:
        op = st.op or "and"  # default_operator: AND
        if st.prev != op:  # a new operator: what came before becomes one operand
            st.top = (op, [st.top])
        st.top[1].append(branch)
        st.prev = op
    st.op = None


def _subquery(data: str, i: int, end: int, st: _State) -> int:
    start = j = i + 1
    depth, escaped = 1, False
    while j < end:
        if not escaped:
            if data[j] == "\\":
                escaped = True
                j += 1
                continue
            if data[j] == "(":
                depth += 1
            elif data[j] == ")":
                depth -= 1
                if depth == 0:
                    break
        escaped = False
        j += 1
    if j == end:  # never closed: the "(" is ignored
        return start
    if j == start:  # "()": drops the operator meant for it
        st.op = None
        return j + 1
    _add(st, _parse(data, start, j))
    return j + 1


def _phrase(data: str, i: int, end: int, st: _State) -> int:
    start = j = i + 1
    buf: List[str] = []
    escaped = has_slop = False
    while j < end:
        if not escaped:
            if data[j] == "\\":
                escaped = True
                j += 1
                continue
            if data[j] == '"':
                if j + 1 < end and data[j + 1] == "~":
                    j += 1
                    has_slop = j + 1 < end
                break
        escaped = False
        buf.append(data[j])
        j += 1
    if j == end:  # never closed: the '"' is ignored
        return start
    if j == start:  # '""': drops the operator meant for it
        st.op = None
        return j + 1
    slop = 0
    if has_slop:
        j, slop = _fuzziness(data, j, end)
    words = analyze("".join(buf))
    _add(st, None if not words else ("term", tuple(words)) if len(words) == 1 else ("phrase", tuple(words), slop))
    return j + 1  # past the closing quote, or (as Lucene does) past the character ending the slop


def _token(data: str, i: int, end: int, st: _State) -> int:
    buf: List[str] = []
    escaped = prefix = fuzzy = False
    while i < end:
        if not escaped:
            c = data[i]
            if c == "\\":
                escaped, prefix = True, False
                i += 1
                continue
            if c in _ENDS_TOKEN:
                break
            if buf and c == "~":
                fuzzy = True
                break
            prefix = bool(buf) and c == "*"
        escaped = False
        buf.append(data[i])
        i += 1
    if buf:
        text = "".join(buf)
        edits = 0
        if fuzzy:
            i, edits = _fuzziness(data, i, end)
            edits = min(edits, _MAX_EDITS)
        if edits:
            branch: Optional[Node] = ("fuzzy", text.lower(), edits)
        elif prefix and not fuzzy:
            branch = ("prefix", text[:-1].lower())
        else:
            words = analyze(text)
            branch = ("term", tuple(words)) if words else None
        _add(st, branch)
    return i


def _fuzziness(data: str, i: int, end: int) -> Tuple[int, int]:
    """Read ``~N`` at ``data[i]``: (index of what ends it, N); ``~`` alone is 2, junk is 0."""
    digits: List[str] = []
    while i < end:
        i += 1
        if i < end:
            if data[i] in _ENDS_TOKEN:
                break
            digits.append(data[i])
    text = "".join(digits)
    if not text:
        return i, 2
    if not re.fullmatch(r"[+-]?\d+", text) or not -(2**31) <= int(text) < 2**31:
        return i, 0  # Integer.parseInt failed
    return i, max(int(text), 0)


# ------------------------------------------------------------------------------------------ matching
def field_values(doc: Dict[str, Any], field: Optional[str]) -> Dict[str, List[str]]:
    """The searched text of a document, by field path (a chat field's ``content`` and ``role`` apart)."""
    fields = doc.get("fields") or {}
    out: Dict[str, List[str]] = {}
    _collect(fields.get(field) if field else fields, field or "", out)
    return out


def _collect(node: Any, path: str, out: Dict[str, List[str]]) -> None:
    if isinstance(node, dict):
        for key, value in node.items():
            _collect(value, f"{path}.{key}" if path else str(key), out)
    elif isinstance(node, list):
        for value in node:
            _collect(value, path, out)
    elif node is not None:
        out.setdefault(path, []).append(str(node))


class _Doc:
    __slots__ = ("values", "fields", "bag")

    def __init__(self, texts: Dict[str, List[str]]):
        self.values = [analyze(v) for vs in texts.values() for v in vs]  # one token list per value
        self.fields = [{t for v in vs for t in analyze(v)} for vs in texts.values()]  # words per field
        self.bag = Counter(t for tokens in self.values for t in tokens)


def _in_order(tokens: List[str], words: Tuple[str, ...], slop: int) -> bool:
    """Lucene's phrase match: positions p_k of words[k], all distinct, with max(p_k - k) - min(p_k - k) <= slop."""
    where: Dict[str, List[int]] = {w: [] for w in words}
    for p, t in enumerate(tokens):
        if t in where:
            where[t].append(p)
    if not all(where.values()):
        return False
    for s in sorted({p - k for k, w in enumerate(words) for p in where[w]}):  # s: the smallest p_k - k
        used: Set[int] = set()
        for k, w in enumerate(words):  # earliest free position in the window (optimal for repeated words)
            p = next((p for p in where[w] if s + k <= p <= s + k + slop and p not in used), None)
            if p is None:
                break
            used.add(p)
        else:
            return True
    return False


def edit_distance(a: str, b: str, limit: int) -> int:
    """Levenshtein distance (no transpositions, as ``fuzzy_transpositions: false``), capped at limit + 1."""
    if abs(len(a) - len(b)) > limit:
        return limit + 1
    row = list(range(len(b) + 1))
    for i, ca in enumerate(a, 1):
        prev, row[0] = row[0], i
        for j, cb in enumerate(b, 1):
            prev, row[j] = row[j], min(row[j] + 1, row[j - 1] + 1, prev + (ca != cb))
        if min(row) > limit:
            return limit + 1
    return row[-1]


class TextMatcher:
    """A ``simple_query_string`` query (default operator AND) over a record's fields or one field."""

    def __init__(self, query: Any, field: Optional[str] = None):
        if not isinstance(query, str):  # argilla-server's TextQuery, or anything with ``q`` and ``field``
            query, field = query.q, query.field
        self.field = field
        self.tree = parse(query or "")

    def score_all(self, docs: List[Dict[str, Any]]) -> Dict[str, float]:
        """Scores of the matching documents, by record id."""
        if self.tree is None:
            return {}
        if self.tree == ("all",):
            return {doc["id"]: 1.0 for doc in docs}
        prepared = {doc["id"]: _Doc(field_values(doc, self.field)) for doc in docs}
        self._df: Counter = Counter(t for d in prepared.values() for t in d.bag)
        self._n = len(docs)
        self._near: Dict[Tuple[str, str, int], bool] = {}
        scores = {rid: self._score(self.tree, d) for rid, d in prepared.items()}
        return {rid: s for rid, s in scores.items() if s is not None}

    def _weight(self, word: str, d: _Doc) -> float:
        df, tf = self._df[word], d.bag[word]
        return math.log(1 + (self._n - df + 0.5) / (df + 0.5)) * tf / (tf + 1.0)

    def _score(self, node: Node, d: _Doc) -> Optional[float]:
        kind = node[0]
        if kind == "term":
            hit = any(all(w in f for w in node[1]) for f in d.fields)
            return sum(self._weight(w, d) for w in node[1]) if hit else None
        if kind == "phrase":
            hit = any(_in_order(tokens, node[1], node[2]) for tokens in d.values)
            return sum(self._weight(w, d) for w in node[1]) if hit else None
        if kind == "prefix":
            return 1.0 if any(t.startswith(node[1]) for t in d.bag) else None
        if kind == "fuzzy":
            near = [t for t in d.bag if self._is_near(node[1], t, node[2])]
            return max(self._weight(t, d) for t in near) if near else None
        if kind == "all":
            return 1.0
        if kind == "not":
            return 1.0 if self._score(node[1], d) is None else None
        parts = [self._score(child, d) for child in node[1]]
        if kind == "and" and any(p is None for p in parts):
            return None
        hits = [p for p in parts if p is not None]
        return sum(hits) if hits else None

    def _is_near(self, text: str, word: str, edits: int) -> bool:
        key = (text, word, edits)
        if key not in self._near:
            self._near[key] = edit_distance(text, word, edits) <= edits
        return self._near[key]
