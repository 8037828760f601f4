"""Gradient store: round-trip, resume after interruption, refusal of mismatches and corruption."""

from __future__ import annotations

import json

import numpy as np
import pytest

from curator.config import GradientConfig, IndexConfig, ProjectionConfig
from curator.errors import MismatchError, StoreError
from curator.influence.indexing import Featurizer, index_file, index_rows
from curator.io.data import load_rows
from curator.model.models import load_model
from curator.store.store import GradientStore


def identity(dim: int = 8, fp: str = "abc", seed: int = 0) -> dict:
    return {
        "role": "candidates",
        "model": {"spec": "x", "fingerprint": fp},
        "lora": {"r": 8},
        "projection": {"dim": dim, "seed": seed},
        "gradient": {"kind": "sgd", "max_length": 64, "checkpoint": None, "lr_weight": 1.0},
    }


def rows(n: int, start: int = 0) -> list[dict]:
    return [{"id": f"r{i}", "strategy": "s", "task": "t", "group": f"g{i}", "n_prompt_tokens": i, "n_response_tokens": 1, "truncated": False} for i in range(start, start + n)]


def unit(n: int, d: int, seed: int) -> np.ndarray:
    x = np.random.default_rng(seed).normal(size=(n, d)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def test_round_trip(tmp_path):
    s = GradientStore.create_or_resume(tmp_path / "s", identity())
    a, b = unit(3, 8, 0), unit(2, 8, 1)
    s.append(rows(3), a)
    s.append(rows(2, 3), b)
    s.finalize()
    t = GradientStore.open(tmp_path / "s")
    assert t.n_rows == 5 and t.manifest["complete"]
    assert t.ids() == [f"r{i}" for i in range(5)]
    assert list(t.rows()["n_prompt_tokens"]) == [0, 1, 2, 3, 4]
    vecs = t.vectors()
    np.testing.assert_array_equal(vecs, np.vstack([a, b]).astype(np.float16).astype(np.float32))
    index = t.index()
    assert index.ntotal == 5
    scores, ids = index.search(vecs[3:4], 1)
    assert ids[0, 0] == 3 and abs(scores[0, 0] - float(vecs[3] @ vecs[3])) < 1e-5


@pytest.mark.parametrize("field,change", [("projection", {"dim": 16}), ("projection", {"seed": 1}), ("model.fingerprint", {"fp": "zzz"})])
def test_resume_with_other_settings_is_refused(tmp_path, field, change):
    s = GradientStore.create_or_resume(tmp_path / "s", identity())
    s.append(rows(1), unit(1, 8, 0))
    s.close()
    other = identity(**change)
    with pytest.raises(MismatchError) as err:
        GradientStore.create_or_resume(tmp_path / "s", other)
    msg = str(err.value)
    assert field in msg and str(tmp_path / "s") in msg
    old, new = (json.dumps(identity()["projection"], sort_keys=True), json.dumps(other["projection"], sort_keys=True)) if field == "projection" else ("abc", "zzz")
    assert old in msg and new in msg


def test_corrupt_part_is_detected(tmp_path):
    s = GradientStore.create_or_resume(tmp_path / "s", identity())
    s.append(rows(2), unit(2, 8, 0))
    part = tmp_path / "s" / "parts" / "part-00000.npy"
    part.write_bytes(part.read_bytes()[:-7])
    with pytest.raises(StoreError, match="part-00000.npy: checksum does not match"):
        GradientStore.open(tmp_path / "s").vectors()


def test_newer_format_is_refused(tmp_path):
    s = GradientStore.create_or_resume(tmp_path / "s", identity())
    s.manifest["format_version"] = 99
    s._write_manifest()
    with pytest.raises(StoreError, match="format version 99 .*upgrade curator"):
        GradientStore.open(tmp_path / "s")


def test_not_a_store(tmp_path):
    (tmp_path / "junk").mkdir()
    (tmp_path / "junk" / "file.txt").write_text("x")
    with pytest.raises(StoreError, match="not a gradient store"):
        GradientStore.open(tmp_path / "junk")
    with pytest.raises(StoreError, match="exists and is not a gradient store"):
        GradientStore.create_or_resume(tmp_path / "junk", identity())


class Crash(Exception):
    pass


def test_index_resumes_after_interruption_bit_identically(tmp_path, small_data):
    cands, _ = small_data
    config = IndexConfig(model="tiny-random", projection=ProjectionConfig(dim=64), gradient=GradientConfig(max_length=128), batch_size=2)
    clean = index_file(cands, tmp_path / "clean", config)
    assert clean.rows_added == 6

    calls = {"n": 0}

    def crash_after_first_batch(stage: str, done: int, total: int) -> None:
        calls["n"] += 1
        if done >= 2:
            raise Crash()

    _, data = load_rows(cands)
    with pytest.raises(Crash):
        index_rows(Featurizer(config), data, tmp_path / "resumed", "candidates", progress=crash_after_first_batch)
    half = GradientStore.open(tmp_path / "resumed")
    assert half.n_rows == 2 and not half.manifest["complete"]
    again = index_file(cands, tmp_path / "resumed", config)
    assert (again.rows_added, again.rows_skipped) == (4, 2)
    a, b = GradientStore.open(tmp_path / "clean"), GradientStore.open(tmp_path / "resumed")
    assert a.ids() == b.ids()
    np.testing.assert_array_equal(a.vectors(), b.vectors())
    # a third run adds nothing
    assert index_file(cands, tmp_path / "resumed", config).rows_added == 0


def test_store_records_model_fingerprint_and_config(tmp_path, small_data):
    cands, _ = small_data
    config = IndexConfig(model="tiny-random", projection=ProjectionConfig(dim=32, seed=5), batch_size=4)
    index_file(cands, tmp_path / "s", config)
    m = GradientStore.open(tmp_path / "s").manifest
    assert m["model"]["fingerprint"] == load_model("tiny-random").fingerprint
    assert m["projection"]["dim"] == 32 and m["projection"]["seed"] == 5
    assert m["lora"]["r"] == 8 and m["lora"]["target_modules"] == ["q_proj", "k_proj", "v_proj", "o_proj"]
    assert m["gradient"]["kind"] == "sgd" and m["rows"] == 6 and m["format_version"] == 1
    assert m["curator_version"] and [p["rows"] for p in m["parts"]] == [6]  # the per-batch parts, rolled up at finalize


def test_bf16_store_records_dtype_and_refuses_fp32_resume(tmp_path, small_data):
    cands, _ = small_data
    bf16 = IndexConfig(model="tiny-random", projection=ProjectionConfig(dim=256), gradient=GradientConfig(max_length=128, dtype="bf16", tokens_per_batch=200), batch_size=4)
    fp32 = IndexConfig(model="tiny-random", projection=ProjectionConfig(dim=256), gradient=GradientConfig(max_length=128), batch_size=4)
    index_file(cands, tmp_path / "bf16", bf16)
    index_file(cands, tmp_path / "fp32", fp32)
    a, b = GradientStore.open(tmp_path / "bf16"), GradientStore.open(tmp_path / "fp32")
    assert a.manifest["gradient"]["dtype"] == "bf16" and b.manifest["gradient"]["dtype"] == "fp32"
    cos = (a.vectors() * b.vectors()).sum(axis=1)
    assert cos.min() > 0.99  # bf16 autocast stays close to fp32
    with pytest.raises(MismatchError, match="gradient.dtype: bf16 vs fp32"):
        index_file(cands, tmp_path / "bf16", fp32)


def test_one_writer_at_a_time_and_a_closed_store_reopens(tmp_path):
    from curator.store.lock import StoreLockedError

    s = GradientStore.create_or_resume(tmp_path / "s", identity())
    with pytest.raises(StoreLockedError, match="the store is being written by pid"):
        GradientStore.create_or_resume(tmp_path / "s", identity())
    assert GradientStore.open(tmp_path / "s").n_rows == 0  # readers take no lock
    s.close()
    t = GradientStore.create_or_resume(tmp_path / "s", identity())
    t.close()
    # a fresh folder holding only a lock file is still an empty folder to create the store in
    (tmp_path / "fresh").mkdir()
    (tmp_path / "fresh" / "writer.lock").write_text("")
    GradientStore.create_or_resume(tmp_path / "fresh", identity()).close()


def test_a_manifest_naming_a_part_outside_the_store_is_refused(tmp_path):
    s = GradientStore.create_or_resume(tmp_path / "s", identity())
    s.append(rows(1), unit(1, 8, 0))
    s.close()
    m = json.loads((tmp_path / "s" / "manifest.json").read_text())
    m["parts"][0]["name"] = "../../etc/passwd"
    (tmp_path / "s" / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(StoreError, match="parts list is damaged"):
        GradientStore.open(tmp_path / "s")


def _files(path) -> list[str]:
    return sorted(f.name for f in (path / "parts").iterdir())


def test_small_parts_roll_up_as_rows_arrive_and_at_finalize(tmp_path, monkeypatch):
    """Per-batch parts merge once they hold ROLLUP_BYTES; the store keeps every row and float16 bit."""
    from curator.store import parts

    monkeypatch.setattr(parts, "ROLLUP_BYTES", 10 * 8 * 2)  # 10 rows of dim 8
    s = GradientStore.create_or_resume(tmp_path / "s", identity())
    data = unit(31, 8, 0)
    sizes = [3, 3, 3, 3, 4, 2, 6, 7]  # 31 rows
    lo = 0
    for n in sizes:
        s.append(rows(n, lo), data[lo : lo + n])
        lo += n
    # 3+3+3+3 = 12 >= 10 rolled into one part; 4+2+6 = 12 into another; 7 is still small
    assert [p["rows"] for p in s.manifest["parts"]] == [12, 12, 7]
    assert len(_files(tmp_path / "s")) == 6  # only listed parts are on disk
    s.append(rows(1, 31), unit(1, 8, 9))
    s.finalize()
    assert [p["rows"] for p in s.manifest["parts"]] == [12, 12, 8]  # the small tail merged at finalize
    names = [p["name"] for p in s.manifest["parts"]]
    assert len(set(names)) == 3 and _files(tmp_path / "s") == sorted(f"{n}{x}" for n in names for x in (".npy", ".parquet"))
    t = GradientStore.open(tmp_path / "s")
    t.verify()
    assert t.ids() == [f"r{i}" for i in range(32)]
    expect = np.vstack([data, unit(1, 8, 9)]).astype(np.float16).astype(np.float32)
    np.testing.assert_array_equal(t.vectors(), expect)
    np.testing.assert_array_equal(t.read_rows(np.array([30, 0, 13])), expect[[30, 0, 13]])
    # a resumed writer names new parts after every name ever used
    s.close()
    r = GradientStore.create_or_resume(tmp_path / "s", identity())
    r.append(rows(1, 32), unit(1, 8, 10))
    assert r.manifest["parts"][-1]["name"] not in names


def test_reader_opened_before_a_rollup_finds_its_rows_in_the_merged_part(tmp_path):
    s = GradientStore.create_or_resume(tmp_path / "s", identity())
    a, b = unit(3, 8, 0), unit(2, 8, 1)
    s.append(rows(3), a)
    s.append(rows(2, 3), b)
    reader = GradientStore.open(tmp_path / "s")  # sees two per-batch parts
    assert len(reader.manifest["parts"]) == 2
    s.finalize()  # merges them and deletes their files
    assert len(s.manifest["parts"]) == 1 and not (tmp_path / "s" / "parts" / "part-00000.npy").exists()
    assert reader.ids() == [f"r{i}" for i in range(5)]
    np.testing.assert_array_equal(reader.vectors(), np.vstack([a, b]).astype(np.float16).astype(np.float32))
    reader.verify()
    # a file that is truly gone is still an error, naming it
    (tmp_path / "s" / "parts" / f"{s.manifest['parts'][0]['name']}.npy").unlink()
    with pytest.raises(StoreError, match=r"part-00002.npy: missing store file"):
        GradientStore.open(tmp_path / "s").vectors()


def test_files_left_by_a_killed_rollup_are_swept_by_the_next_writer(tmp_path):
    s = GradientStore.create_or_resume(tmp_path / "s", identity())
    s.append(rows(3), unit(3, 8, 0))
    s.close()
    # a merge killed before its manifest: a part file no manifest lists
    stray = tmp_path / "s" / "parts" / "part-00007.npy"
    stray.write_bytes(b"half a part")
    (tmp_path / "s" / "parts" / "notes.txt").write_text("not ours")
    GradientStore.open(tmp_path / "s")  # readers never delete
    assert stray.exists()
    w = GradientStore.create_or_resume(tmp_path / "s", identity())
    assert not stray.exists() and (tmp_path / "s" / "parts" / "notes.txt").exists()
    assert w.n_rows == 3 and w.ids() == ["r0", "r1", "r2"]
