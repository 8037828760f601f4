"""The listener's tally, without a server: one entry per (record, annotator), replaced, withdrawn, stamped, summed."""

from __future__ import annotations

from collections import Counter
from datetime import datetime

import pytest

from curator.integrations.argilla.tally import Tally, adjusted_scores, counted_votes, rerank, response_votes, slot_strategies, stamp_of, top_slot

META = {  # a record as push writes its metadata: 3 candidate slots, a 4th slot empty
    "candidate_id_1": "g-direct", "strategy_1": "direct", "score_1": 0.5,
    "candidate_id_2": "g-cot", "strategy_2": "cot", "score_2": 0.2,
    "candidate_id_3": "g-clarify", "strategy_3": "clarify", "score_3": None,
    "candidate_id_4": None, "strategy_4": None,
}


def ranked(*slots: str, best: str | None = None) -> dict:
    """Response values as the API holds them: the ranking with explicit ranks, and the best-strategy label."""
    values = {"ranking": {"value": [{"value": s, "rank": k + 1} for k, s in enumerate(slots)]}}
    if best:
        values["best_strategy"] = {"value": best}
    return values


def test_a_vote_is_the_top_candidates_strategy_and_the_best_strategy_label():
    slots = slot_strategies(META)
    assert list(slots) == ["candidate_1", "candidate_2", "candidate_3"]
    assert response_votes(ranked("candidate_2", "candidate_1", "candidate_3", best="cot"), slots) == ("cot", "cot")
    assert response_votes(ranked("candidate_3", "candidate_1", best="direct"), slots) == ("clarify", "direct")
    assert response_votes(ranked("candidate_4", "candidate_1", "candidate_2"), slots) == ("direct",)  # the empty slot is skipped, as pull does
    tie = {"ranking": {"value": [{"value": "candidate_3", "rank": 1}, {"value": "candidate_2", "rank": 1}]}}
    assert response_votes(tie, slots) == ("cot",)  # a tie for first goes to the earliest slot, as pull orders it
    assert response_votes(None, slots) == ()


def test_only_submitted_responses_count():
    slots = slot_strategies(META)
    assert counted_votes("submitted", ranked("candidate_2", best="cot"), slots) == ("cot", "cot")
    assert counted_votes("draft", ranked("candidate_1", best="direct"), slots) is None
    assert counted_votes("discarded", None, slots) is None


def at(second: int, deletion: bool = False) -> tuple:
    return stamp_of(f"2026-12-07T10:00:{second:02d}", deletion)


def test_each_record_and_annotator_counts_once():
    t = Tally()
    assert t.apply("r1", "ana", ("cot", "cot"), at(1)) == "changed"
    assert t.apply("r1", "bo", ("direct", "cot"), at(2)) == "changed"
    assert t.votes == Counter({"cot": 3, "direct": 1})
    # a redelivered event applies the same entry again: nothing changes
    assert t.apply("r1", "ana", ("cot", "cot"), at(1)) == "same"
    assert t.votes == Counter({"cot": 3, "direct": 1})
    # an edited response replaces that annotator's votes, it does not add to them
    assert t.apply("r1", "ana", ("direct", "direct"), at(3)) == "changed"
    assert t.votes == Counter({"direct": 3, "cot": 1})
    # the first event, redelivered after the edit, is older than the entry: ignored
    assert t.apply("r1", "ana", ("cot", "cot"), at(1)) == "stale"
    assert t.votes == Counter({"direct": 3, "cot": 1})
    # the same annotator on another record is another entry
    t.apply("r2", "ana", ("clarify",), at(4))
    assert t.as_dict() == {"clarify": 1, "cot": 1, "direct": 3}
    assert t.is_submitted("r1") and t.is_submitted("r2") and t.submitted_records() == 2
    # discarded (a status change) and deleted withdraw; so does a response put back to draft
    assert t.apply("r1", "bo", None, at(5)) == "changed"
    assert t.get("r1", "bo") is None
    assert t.withdraw("r2", "ana", at(6, deletion=True)) == "changed"
    assert t.withdraw("r2", "ana", at(6, deletion=True)) == "same"  # a redelivered delete
    assert t.apply("r2", "ana", ("clarify",), at(4)) == "stale"  # the create, redelivered after the delete
    assert t.apply("r2", "ana", ("clarify",), at(6)) == "stale"  # at the same moment, the deletion wins
    assert not t.is_submitted("r2") and t.submitted_records() == 1
    assert t.as_dict() == {"direct": 2}  # strategies at 0 leave the tally
    assert t.entries() == {("r1", "ana"): ("direct", "direct")}
    assert t.users("r1") == {"ana", "bo"}
    # a new response after the deletion counts again
    assert t.apply("r2", "ana", ("cot",), at(7)) == "changed" and t.as_dict() == {"cot": 1, "direct": 2}
    assert t.drop_record("r1") is True and t.as_dict() == {"cot": 1} and t.entries() == {("r2", "ana"): ("cot",)}


def test_events_without_stamps_apply_in_the_order_they_come():
    t = Tally()
    assert t.apply("r1", "ana", ("cot",)) == "changed"
    assert t.apply("r1", "ana", ("cot",)) == "same"
    assert t.withdraw("r1", "ana") == "changed" and t.as_dict() == {}


def test_after_a_rebuild_an_event_about_a_response_the_read_did_not_see_is_stale():
    """The tally rebuilt at 10:00:30: a response deleted before then is not in it, and its create
    event, redelivered now, must not count; a response created after the read must."""
    t = Tally(floor=datetime(2026, 12, 7, 10, 0, 30))
    assert t.apply("r1", "ana", ("cot",), at(10), from_server=True) == "changed"  # what the read held
    assert t.apply("r2", "bo", ("cot",), at(20)) == "stale"  # deleted before the read
    assert t.apply("r3", "cy", ("direct",), at(40)) == "changed"  # new since
    assert t.apply("r1", "ana", ("cot",), at(10)) == "same"  # the event of what the read held
    assert t.as_dict() == {"cot": 1, "direct": 1}


def test_stamps_read_the_servers_times():
    assert stamp_of("2026-12-07T10:00:01.5") == (datetime(2026, 12, 7, 10, 0, 1, 500000), 0)
    assert stamp_of("2026-12-07T10:00:01.500000Z", deletion=True) == (datetime(2026, 12, 7, 10, 0, 1, 500000), 1)  # an event's timestamp
    assert stamp_of(None) is None and stamp_of("not a time") is None


def test_the_tally_is_the_sum_over_record_annotator_entries():
    t = Tally()
    states = {("r1", "ana"): ("cot", "cot"), ("r1", "bo"): ("direct",), ("r2", "ana"): ("cot", "direct")}
    for _ in range(2):  # every event delivered twice
        for (rid, user), votes in states.items():
            t.apply(rid, user, votes)
    assert t.votes == Counter(v for votes in states.values() for v in votes) == Counter({"cot": 3, "direct": 2})


def test_tally_preference_is_share_minus_uniform():
    t = Tally()
    assert t.preference(["a", "b"]) == {"a": 0.0, "b": 0.0}
    t.apply("r1", "u1", ("a", "a"))
    t.apply("r2", "u1", ("b",))
    t.apply("r3", "u2", ("a",))
    assert t.votes == Counter({"a": 3, "b": 1})
    assert t.preference(["a", "b", "c"]) == pytest.approx({"a": 0.75 - 1 / 3, "b": 0.25 - 1 / 3, "c": -1 / 3})


def test_rerank_moves_preferred_strategy_up():
    slots = {"candidate_1": {"strategy": "direct", "score": 0.5}, "candidate_2": {"strategy": "cot", "score": 0.2}, "candidate_3": {"strategy": "clarify", "score": None}}
    assert rerank(slots, {"direct": 0.0, "cot": 0.0, "clarify": 0.0}, 1.0) == ["candidate_1", "candidate_2", "candidate_3"]
    pref = {"direct": -0.25, "cot": 0.5, "clarify": -0.25}
    assert rerank(slots, pref, 1.0) == ["candidate_2", "candidate_1", "candidate_3"]  # 0.7 > 0.25 > -0.25
    assert rerank(slots, pref, 0.0) == ["candidate_1", "candidate_2", "candidate_3"]  # weight 0: unchanged
    assert adjusted_scores(slots, pref, 1.0) == pytest.approx({"candidate_1": 0.25, "candidate_2": 0.7, "candidate_3": -0.25})


def test_top_slot_reads_ranks():
    assert top_slot([{"value": "candidate_2", "rank": 2}, {"value": "candidate_3", "rank": 1}]) == "candidate_3"
    assert top_slot(["candidate_4", "candidate_1"]) == "candidate_4"
    assert top_slot(["candidate_4", "candidate_1"], ["candidate_1", "candidate_2"]) == "candidate_1"
    assert top_slot(None) is None


def test_listener_options_are_checked_before_any_request() -> None:
    from curator.errors import InputError
    from curator.integrations.argilla.listen import Listener

    with pytest.raises(InputError, match=r"--neighbours 0 is invalid: use an integer >= 1"):
        Listener(client=None, dataset="x", k=0)
    with pytest.raises(InputError, match=r"--workers 0 is invalid: use an integer >= 1 \(re-ranking writes in flight\)"):
        Listener(client=None, dataset="x", workers=0)


def test_the_log_tells_which_rerankings_a_killed_run_never_wrote(tmp_path) -> None:
    import json

    from curator.integrations.argilla.listen_log import append_log, unflushed

    log = tmp_path / "listen.jsonl"
    assert unflushed(log) == []  # no log yet
    append_log(log, {"event": "start", "seq": 0, "queued": ["old"]}, {"event": "flush", "through": 0})
    append_log(log, {"event": "response.created", "seq": 1, "queued": ["a", "b"]}, {"event": "flush", "through": 1})
    append_log(log, {"event": "response.created", "seq": 2, "queued": ["b", "c"]})
    assert unflushed(log) == ["b", "c"]
    with log.open("a") as fh:
        fh.write('{"event": "response.upd')  # torn by a kill
    append_log(log, {"event": "start", "seq": 0, "queued": ["b", "c"]})  # the next run: it ends the torn line first
    lines = log.read_text().splitlines()
    assert lines[-2] == '{"event": "response.upd' and json.loads(lines[-1])["queued"] == ["b", "c"]
    assert unflushed(log) == ["b", "c"]  # the new run re-queued them and has not flushed yet
    append_log(log, {"event": "flush", "through": 0})
    assert unflushed(log) == []
