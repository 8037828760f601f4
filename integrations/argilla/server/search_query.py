"""Evaluate the server's search filters and sorts over stored record documents (text queries: ``search_text.py``).

Runs inside the argilla-server virtualenv only (imported by ``search_engine.py``). Documents have the
shape of the Elasticsearch engine's documents (``fields``, ``metadata``, ``suggestions``, ``responses``,
``status``, ...), so filter scopes resolve to the same dotted field paths the Elasticsearch engine uses.
The semantics follow that engine, with one deliberate fix: a user's progress counts only that user's
responses (Elasticsearch counted every response of the records the user answered).
"""

from __future__ import annotations

import functools
import hashlib
from typing import Any, Callable, Dict, Iterable, List, Optional, Union

from argilla_server.enums import ResponseStatusFilter, SortOrder
from argilla_server.search_engine.base import (
    AndFilter,
    Filter,
    MetadataFilterScope,
    Order,
    RangeFilter,
    RecordFilterScope,
    ResponseFilterScope,
    SuggestionFilterScope,
    TermsFilter,
)
from argilla_server.search_engine.commons import (
    es_field_for_metadata_property,
    es_field_for_record_property,
    es_field_for_suggestion_property,
)

try:  # a sibling module: a package import in tests, a top-level one under launcher.py
    from .search_text import TextMatcher
except ImportError:
    from search_text import TextMatcher  # type: ignore[no-redef]

__all__ = ["TextMatcher", "lookup", "matches", "scope_field", "sort_docs", "term_of", "user_random"]

_MISSING = object()
_PENDING = ResponseStatusFilter.pending.value


def lookup(doc: Dict[str, Any], path: str) -> List[Any]:
    """All leaf values at a dotted path (lists flattened), as Elasticsearch sees a multi-valued field."""
    node: Any = doc
    for part in path.split("."):
        if not isinstance(node, dict) or part not in node:
            return []
        node = node[part]
    return _leaves(node)


def _leaves(node: Any) -> List[Any]:
    if node is None:
        return []
    if isinstance(node, list):
        return [leaf for item in node for leaf in _leaves(item)]
    return [node]


def term_of(value: Any) -> str:
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def _in_range(value: Any, ge: Any, le: Any) -> bool:
    try:
        if isinstance(value, str) or isinstance(ge, str) or isinstance(le, str):
            value, ge, le = str(value), None if ge is None else str(ge), None if le is None else str(le)
        elif isinstance(value, bool) or not isinstance(value, (int, float)):
            return False
        return (ge is None or value >= ge) and (le is None or value <= le)
    except TypeError:
        return False


def _value_matches(values: Iterable[Any], flt: Union[TermsFilter, RangeFilter]) -> bool:
    if isinstance(flt, TermsFilter):
        wanted = {term_of(v) for v in flt.values}
        return any(term_of(v) in wanted for v in values)
    if isinstance(flt, RangeFilter):
        return any(_in_range(v, flt.ge, flt.le) for v in values)
    raise ValueError(f"Cannot process filter {flt}")


def scope_field(scope: Any) -> str:
    """The document path for a non-response scope (the Elasticsearch engine's naming)."""
    if isinstance(scope, MetadataFilterScope):
        return es_field_for_metadata_property(scope.metadata_property)
    if isinstance(scope, SuggestionFilterScope):
        return es_field_for_suggestion_property(question=scope.question, property=scope.property)
    if isinstance(scope, RecordFilterScope):
        return es_field_for_record_property(scope.property)
    raise ValueError(f"Cannot process request for search scope {scope}")


def _user_responses(doc: Dict[str, Any], user: Any) -> List[Dict[str, Any]]:
    responses = doc.get("responses") or []
    if user is None:
        return responses
    return [r for r in responses if r.get("user_id") == str(user.id)]


def _matches_response(doc: Dict[str, Any], flt: Union[TermsFilter, RangeFilter]) -> bool:
    scope: ResponseFilterScope = flt.scope
    responses = _user_responses(doc, scope.user)
    if scope.question:
        return any(_value_matches(_leaves(r.get(scope.question)), flt) for r in responses)
    if scope.property == "status" and isinstance(flt, TermsFilter):
        statuses = {str(v) for v in flt.values}
        # "pending" for a user means: that user has no response at all on the record
        if _PENDING in statuses and not responses:
            return True
        return any(r.get("status") in statuses for r in responses)
    raise ValueError(f"Cannot process filter scope {scope}")


def matches(doc: Dict[str, Any], flt: Optional[Filter]) -> bool:
    """True when the document passes the (possibly nested) filter."""
    if flt is None:
        return True
    if isinstance(flt, AndFilter):
        return all(matches(doc, f) for f in flt.filters)
    if isinstance(flt.scope, ResponseFilterScope):
        return _matches_response(doc, flt)
    return _value_matches(lookup(doc, scope_field(flt.scope)), flt)


# ----------------------------------------------------------------------------------------- sorting
def _sort_value(doc: Dict[str, Any], order: Order) -> Any:
    scope = order.scope
    if isinstance(scope, ResponseFilterScope):
        key = scope.question or scope.property
        values = [v for r in _user_responses(doc, scope.user) for v in _leaves(r.get(key))]
        numeric = [v for v in values if isinstance(v, (int, float)) and not isinstance(v, bool)]
        if numeric and len(numeric) == len(values):
            return sum(numeric) / len(numeric)  # Elasticsearch's nested sort mode "avg"
    else:
        values = lookup(doc, scope_field(scope))
    if not values:
        return _MISSING
    try:  # multi-valued fields sort by their min (asc) or max (desc), as in Elasticsearch
        return min(values) if order.order == SortOrder.asc else max(values)
    except TypeError:
        return min(map(str, values)) if order.order == SortOrder.asc else max(map(str, values))


def _compare(a: Any, b: Any) -> int:
    if isinstance(a, (int, float)) and isinstance(b, (int, float)):
        return (a > b) - (a < b)
    a, b = str(a), str(b)
    return (a > b) - (a < b)


def sort_docs(docs: List[Dict[str, Any]], orders: List[Order]) -> List[Dict[str, Any]]:
    """Stable multi-key sort; missing values go last in both directions (Elasticsearch's default)."""
    keyed = [(doc, [_sort_value(doc, o) for o in orders]) for doc in docs]

    def cmp(x: Any, y: Any) -> int:
        for i, order in enumerate(orders):
            a, b = x[1][i], y[1][i]
            if a is _MISSING or b is _MISSING:
                c = (a is _MISSING) - (b is _MISSING)
            else:
                c = _compare(a, b) * (-1 if order.order == SortOrder.desc else 1)
            if c:
                return c
        return 0

    return [doc for doc, _ in sorted(keyed, key=functools.cmp_to_key(cmp))]


def user_random(user_id: Any) -> Callable[[str], float]:
    """A per-user deterministic number in [0, 1) per record, standing in for Elasticsearch's seeded ``random_score``."""
    seed = str(user_id).encode()
    return lambda record_id: int(hashlib.sha256(seed + b":" + record_id.encode()).hexdigest()[:13], 16) / 16**13
