"""The SQLite search engine's ``simple_query_string`` (search_text.py) against brute force over a random corpus.

Every expected answer comes from this file's own evaluator: predicates built by hand per query (or from
a random tree that is also rendered to the query), over the words of each field, written for clarity.
"""

from __future__ import annotations

import functools
import itertools
import random
import re
from typing import Callable, Dict, List, Optional, Tuple

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from curator.integrations.argilla.server import search_text

VOCAB = ["apple", "apricot", "berry", "cherry", "date", "elder"]
Doc = dict
Pred = Callable[[Doc, Optional[str]], bool]


def _corpus() -> List[Doc]:
    rng = random.Random(7)
    docs = []
    for i in range(200):
        fields: dict = {
            "a": " ".join(rng.choice(VOCAB) for _ in range(rng.randint(1, 5))),
            "b": ", ".join(rng.choice(VOCAB).upper() for _ in range(rng.randint(0, 3))),
        }
        if rng.random() < 0.4:  # a chat-like field: a list of messages, each its own value
            fields["chat"] = [{"role": "user", "content": " ".join(rng.sample(VOCAB, 2))} for _ in range(2)]
        docs.append({"id": f"d{i:03d}", "fields": fields})
    return docs


DOCS = _corpus()
FIELDS = [None, "a", "chat"]


# ------------------------------------------------------------------------------------- brute force
def _values(doc: Doc, field: Optional[str]) -> List[Tuple[str, List[str]]]:
    """(field path, words) for each value searched: whole record, or only the named field."""
    out = []
    for name, value in doc["fields"].items():
        if field is not None and name != field:
            continue
        if isinstance(value, list):
            for message in value:
                out.append((name + ".role", re.findall(r"\w+", message["role"].lower())))
                out.append((name + ".content", re.findall(r"\w+", message["content"].lower())))
        else:
            out.append((name, re.findall(r"\w+", value.lower())))
    return out


def _field_words(doc: Doc, field: Optional[str]) -> List[set]:
    by_path: Dict[str, set] = {}
    for path, words in _values(doc, field):
        by_path.setdefault(path, set()).update(words)
    return list(by_path.values())


@functools.lru_cache(maxsize=None)
def _levenshtein(a: str, b: str) -> int:
    if not a or not b:
        return len(a) + len(b)
    return min(
        _levenshtein(a[1:], b) + 1, _levenshtein(a, b[1:]) + 1, _levenshtein(a[1:], b[1:]) + (a[0] != b[0])
    )


def W(*words: str) -> Pred:
    """All the words in one field."""
    return lambda d, f: any(set(words) <= ws for ws in _field_words(d, f))


def P(*words: str, slop: int = 0) -> Pred:
    """The words in one value, at distinct positions p_k with max(p_k - k) - min(p_k - k) <= slop."""

    def ok(tokens: List[str]) -> bool:
        spots = [[p for p, t in enumerate(tokens) if t == w] for w in words]
        for ps in itertools.product(*spots):
            shifted = [p - k for k, p in enumerate(ps)]
            if len(set(ps)) == len(ps) and max(shifted) - min(shifted) <= slop:
                return True
        return False

    return lambda d, f: any(ok(tokens) for _, tokens in _values(d, f))


def Pre(prefix: str) -> Pred:
    return lambda d, f: any(t.startswith(prefix) for _, tokens in _values(d, f) for t in tokens)


def Fz(text: str, edits: int) -> Pred:
    return lambda d, f: any(_levenshtein(text, t) <= edits for _, tokens in _values(d, f) for t in tokens)


def Not(x: Pred) -> Pred:
    return lambda d, f: not x(d, f)


def And(*xs: Pred) -> Pred:
    return lambda d, f: all(x(d, f) for x in xs)


def Or(*xs: Pred) -> Pred:
    return lambda d, f: any(x(d, f) for x in xs)


ALL: Pred = lambda d, f: True  # noqa: E731
NONE: Pred = lambda d, f: False  # noqa: E731


def _check(query: str, expected: Pred, field: Optional[str] = None) -> Dict[str, float]:
    scores = search_text.TextMatcher(query, field).score_all(DOCS)
    want = {d["id"] for d in DOCS if expected(d, field)}
    assert set(scores) == want, (query, field, sorted(set(scores) ^ want)[:5])
    assert all(s > 0 for s in scores.values()), query
    return scores


# ------------------------------------------------------------------------------------------- cases
CASES = [
    # words: whitespace and + are AND, | is OR; case-insensitive; a word's parts must share a field
    ("apple", W("apple")),
    ("APPLE berry", And(W("apple"), W("berry"))),
    ("apple + berry", And(W("apple"), W("berry"))),
    ("apple+berry", And(W("apple"), W("berry"))),
    ("apple | berry", Or(W("apple"), W("berry"))),
    ("apple|berry|date", Or(W("apple"), W("berry"), W("date"))),
    ("apple,berry", W("apple", "berry")),
    ("apple-berry", W("apple", "berry")),
    # NOT: binds to the next operand only; pure negations match every document without it
    ("-apple", Not(W("apple"))),
    ("berry -apple", And(W("berry"), Not(W("apple")))),
    ("-apple -berry", And(Not(W("apple")), Not(W("berry")))),
    ("-apple | -berry", Or(Not(W("apple")), Not(W("berry")))),
    ("--apple", W("apple")),
    ("- apple", W("apple")),  # a "-" followed by a space negates nothing
    ("-apple*", Not(Pre("apple"))),
    # phrases: adjacent and in order within one value; ~N allows N moves; one word is a word
    ('"apple berry"', P("apple", "berry")),
    ('"berry apple"', P("berry", "apple")),
    ('"apple apple"', P("apple", "apple")),
    ('"apple berry cherry"', P("apple", "berry", "cherry")),
    ('"APPLE"', W("apple")),
    ('"apple berry"~1', P("apple", "berry", slop=1)),
    ('"apple berry"~2', P("apple", "berry", slop=2)),
    ('"apple apple"~3', P("apple", "apple", slop=3)),
    ('"apple berry"~', P("apple", "berry")),  # "~" with nothing after it: no slop
    ('"apple berry"~ date', And(P("apple", "berry", slop=2), W("date"))),  # "~" alone: 2
    ('"apple berry"~1|date', And(P("apple", "berry", slop=1), W("date"))),  # Lucene skips what ends the slop
    ('-"apple berry" date', And(Not(P("apple", "berry")), W("date"))),
    ('"apple berry" | "berry apple"', Or(P("apple", "berry"), P("berry", "apple"))),
    # prefixes and fuzzy words
    ("ap*", Pre("ap")),
    ("APR*", Pre("apr")),
    ("ap* -apple", And(Pre("ap"), Not(W("apple")))),
    ("chery~1", Fz("chery", 1)),
    ("bery~", Fz("bery", 2)),
    ("dote~5", Fz("dote", 2)),  # at most 2 edits
    ("date~0", W("date")),
    # parentheses, nesting, negated groups
    ("(apple | berry) date", And(Or(W("apple"), W("berry")), W("date"))),
    ("apple | (berry date)", Or(W("apple"), And(W("berry"), W("date")))),
    ("-(apple | berry)", Not(Or(W("apple"), W("berry")))),
    ("-(apple berry) | date", Or(Not(And(W("apple"), W("berry"))), W("date"))),
    (
        "((apple | (berry -cherry)) date) | elder",
        Or(And(Or(W("apple"), And(W("berry"), Not(W("cherry")))), W("date")), W("elder")),
    ),
    (
        '(ap* | "berry cherry") -(date | elder)',
        And(Or(Pre("ap"), P("berry", "cherry")), Not(Or(W("date"), W("elder")))),
    ),
    # no precedence: left to right, as Lucene's SimpleQueryParser
    ("apple | berry date", And(Or(W("apple"), W("berry")), W("date"))),
    ("apple berry | date", Or(And(W("apple"), W("berry")), W("date"))),
    ("apple -berry | date", Or(And(W("apple"), Not(W("berry"))), W("date"))),
    ("apple | berry + date | elder", Or(And(Or(W("apple"), W("berry")), W("date")), W("elder"))),
    ("apple + | berry", And(W("apple"), W("berry"))),  # of two operators in a row the first wins
    ("| apple", W("apple")),  # nothing on the left: ignored
    # lenient: unclosed quotes and parentheses are ignored, stray ones too; nothing left matches nothing
    ('"apple berry', And(W("apple"), W("berry"))),
    ('apple "berry', And(W("apple"), W("berry"))),
    ("(apple | berry", Or(W("apple"), W("berry"))),
    ("apple | berry)", Or(W("apple"), W("berry"))),
    (")(apple", W("apple")),
    ("((apple)", W("apple")),
    ("apple | () berry", And(W("apple"), W("berry"))),  # "()" drops the operator meant for it
    ("apple\\|berry", W("apple", "berry")),  # escaped: part of the word
    ("", NONE),
    ("   ", NONE),
    ("()", NONE),
    ('""', NONE),
    ("!! ,,", NONE),
    ("-", NONE),
    ("*", ALL),
    (" * ", ALL),
    ("user", W("user")),  # a chat message's role is searchable too, as in Elasticsearch
]


@pytest.mark.parametrize("field", FIELDS, ids=str)
@pytest.mark.parametrize("query,expected", CASES, ids=[q or "<empty>" for q, _ in CASES])
def test_syntax(query: str, expected: Pred, field: Optional[str]):
    _check(query, expected, field)


def test_the_corpus_exercises_each_case():
    """Each case keeps some documents and drops others somewhere, so the cases can fail."""
    for query, expected in CASES:
        hits = {(d["id"], f) for d in DOCS for f in FIELDS if expected(d, f)}
        if expected not in (ALL, NONE):
            assert 0 < len(hits) < len(DOCS) * len(FIELDS), query


def test_scores():
    assert set(_check("*", ALL).values()) == {1.0}
    assert set(_check("-apple", Not(W("apple"))).values()) == {1.0}  # a negation scores as match_all
    assert set(_check("ap*", Pre("ap")).values()) == {1.0}  # prefixes are constant-score
    elder, apple = (search_text.TextMatcher(w).score_all(DOCS) for w in ("elder", "apple"))
    either = _check("elder | apple", Or(W("elder"), W("apple")))
    both = _check("elder apple", And(W("elder"), W("apple")))
    for rid, score in either.items():  # AND and OR add up the scores of the operands that match
        assert score == pytest.approx(elder.get(rid, 0.0) + apple.get(rid, 0.0))
    for rid, score in both.items():
        assert score == pytest.approx(elder[rid] + apple[rid])
    # a rarer word weighs more
    corpus = [{"id": "x", "fields": {"a": "rare common"}}]
    corpus += [{"id": f"c{i}", "fields": {"a": "common"}} for i in range(9)]
    matcher = search_text.TextMatcher
    assert matcher("rare").score_all(corpus)["x"] > matcher("common").score_all(corpus)["x"]


def test_text_query_objects():
    class TextQuery:  # argilla-server's TextQuery has q and field
        q, field = "apple", "a"

    assert search_text.TextMatcher(TextQuery()).score_all(DOCS) == search_text.TextMatcher("apple", "a").score_all(DOCS)


def test_phrases_stay_in_one_value_and_words_in_one_field():
    docs = [
        {"id": "1", "fields": {"a": "x apple", "b": "berry y"}},
        {"id": "2", "fields": {"chat": [{"role": "user", "content": "x apple"}, {"role": "user", "content": "berry"}]}},
        {"id": "3", "fields": {"a": "apple berry"}},
    ]
    assert set(search_text.TextMatcher('"apple berry"').score_all(docs)) == {"3"}
    assert set(search_text.TextMatcher("apple-berry").score_all(docs)) == {"2", "3"}  # chat.content holds both
    assert set(search_text.TextMatcher("apple berry").score_all(docs)) == {"1", "2", "3"}


# ---------------------------------------------------------------------------------- random queries
OPS = [" ", " + ", "+", " | ", "|"]
_atoms = st.one_of(
    st.sampled_from(VOCAB).map(lambda w: (w.upper() if len(w) % 2 else w, W(w))),
    st.tuples(st.sampled_from(VOCAB), st.sampled_from(VOCAB), st.integers(0, 3)).map(
        lambda t: (f'"{t[0]} {t[1]}"' + (f"~{t[2]}" if t[2] else ""), P(t[0], t[1], slop=t[2]))
    ),
    st.sampled_from(VOCAB).flatmap(lambda w: st.integers(1, 3).map(lambda n: (w[:n] + "*", Pre(w[:n])))),
    st.tuples(st.sampled_from(VOCAB), st.integers(1, 2)).map(lambda t: (f"{t[0][1:]}~{t[1]}", Fz(t[0][1:], t[1]))),
)


def _compose(children):
    def build(parts):
        kind, sep, items = parts
        if kind == "not":
            return f"-({items[0][0]})", Not(items[0][1])
        query = sep.join(f"({q})" for q, _ in items)
        return query, (Or if sep.strip() == "|" else And)(*(p for _, p in items))

    return st.one_of(
        st.tuples(st.just("not"), st.just(""), st.lists(children, min_size=1, max_size=1)),
        st.tuples(st.just("op"), st.sampled_from(OPS), st.lists(children, min_size=2, max_size=3)),
    ).map(build)


_trees = st.recursive(_atoms, _compose, max_leaves=6)
_slow = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@_slow
@given(tree=_trees, field=st.sampled_from(FIELDS))
def test_random_parenthesised_trees(tree, field):
    query, expected = tree
    _check(query, expected, field)


@_slow
@given(
    first=_atoms,
    rest=st.lists(st.tuples(st.sampled_from(OPS), st.booleans(), _atoms), max_size=4),
    field=st.sampled_from(FIELDS),
)
def test_random_chains_apply_left_to_right(first, rest, field):
    query, expected = first
    for op, negated, (q, p) in rest:
        if op == "|" and re.search(r'"~\d$', query):
            op = " | "  # Lucene skips the character right after a phrase's slop: '"a b"~1|c' is '"a b"~1 c'
        query += op + ("-" if negated else "") + q
        p = Not(p) if negated else p
        expected = Or(expected, p) if op.strip() == "|" else And(expected, p)
    _check(query, expected, field)


@settings(max_examples=300, deadline=None)
@given(st.lists(st.sampled_from(list('()"|+-*~\\ \t') + ["apple", "ber", "x", "2"]), max_size=30).map("".join))
def test_any_input_is_accepted(query):
    scores = search_text.TextMatcher(query).score_all(DOCS[:40])
    assert set(scores) <= {d["id"] for d in DOCS[:40]} and all(s > 0 for s in scores.values())
