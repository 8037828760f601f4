"""Model specs: tiny-random, local folders, offline hub ids, fingerprints."""

from __future__ import annotations

import pytest

from curator.errors import ModelError
from curator.model.models import load_model


def test_tiny_random_is_seeded_and_has_chat_template():
    a, b = load_model("tiny-random"), load_model("tiny-random")
    assert a.fingerprint == b.fingerprint and len(a.fingerprint) == 32
    assert a.tokenizer.chat_template
    assert a.model.config.num_hidden_layers == 2 and a.model.config.hidden_size == 64


def test_local_folder_round_trip_keeps_fingerprint(tmp_path):
    a = load_model("tiny-random")
    a.model.save_pretrained(tmp_path / "m")
    a.tokenizer.save_pretrained(tmp_path / "m")
    b = load_model(str(tmp_path / "m"))
    assert b.fingerprint == a.fingerprint
    assert b.tokenizer("hello")["input_ids"] == a.tokenizer("hello")["input_ids"]


def test_fingerprint_changes_with_weights(tmp_path):
    import torch

    a = load_model("tiny-random")
    before = a.fingerprint
    from curator.model.models import fingerprint

    with torch.no_grad():
        next(a.model.parameters()).view(-1)[0] += 1e-3
    assert fingerprint(a.model, a.tokenizer) != before


def test_fingerprint_covers_the_chat_template():
    from curator.model.models import fingerprint

    a = load_model("tiny-random")
    assert fingerprint(a.model, a.tokenizer) == a.fingerprint
    a.tokenizer.chat_template = "{{ messages[0]['content'] }}"
    assert fingerprint(a.model, a.tokenizer) != a.fingerprint


def test_missing_folder_and_offline_hub_id(tmp_path, monkeypatch):
    with pytest.raises(ModelError, match="does not exist"):
        load_model(str(tmp_path / "nope"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(ModelError, match="no config.json"):
        load_model(str(tmp_path / "empty"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ModelError, match="offline"):
        load_model("someone/some-model-that-is-not-cached")
