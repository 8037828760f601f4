"""Search: exact scans equal brute force, approximate indexes find planted duplicates, the index is built part by part."""

from __future__ import annotations

from pathlib import Path

import faiss
import numpy as np
import pytest
import torch
from click.testing import CliRunner

from curator.store import scan, search
from curator.cli.main import cli
from curator.errors import InputError, StoreError
from curator.influence.scoring import influence_scores, open_space, top_k
from curator.config import parse_search
from curator.store.search import ApproxSearcher, ExactSearcher
from curator.store.store import GradientStore
from tests.conftest import write_jsonl

D = 32
APPROX = ["ivf", "ivfpq:m=8,nbits=4", "hnsw"]


def identity(role: str = "candidates", ckpt: str | None = None, lr: float = 1.0) -> dict:
    return {
        "role": role,
        "model": {"spec": "x", "fingerprint": "fp"},
        "lora": {"r": 8},
        "projection": {"dim": D, "seed": 0},
        "gradient": {"kind": "sgd", "max_length": 64, "checkpoint": ckpt, "lr_weight": lr},
    }


def clustered(n: int, seed: int = 0, clusters: int = 20) -> np.ndarray:
    """Unit vectors from a mixture of gaussians, so IVF lists are meaningful."""
    rng = np.random.default_rng(seed)
    centers = rng.normal(size=(clusters, D))
    x = centers[rng.integers(0, clusters, n)] + 0.4 * rng.normal(size=(n, D))
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def make_store(path: Path, x: np.ndarray, role: str = "candidates", part: int = 300, **kw) -> GradientStore:
    s = GradientStore.create_or_resume(path, identity(role, **kw))
    for lo in range(0, len(x), part):
        n = min(part, len(x) - lo)
        s.append([{"id": f"{role[0]}{i}", "strategy": "s" if role == "candidates" else None, "task": "ab"[i % 2], "group": f"g{i}"} for i in range(lo, lo + n)], x[lo : lo + n])
    return s


def as_stored(x: np.ndarray) -> np.ndarray:
    return x.astype(np.float16).astype(np.float64)


PLANTED = [3, 250, 301, 599, 777, 998]


@pytest.fixture
def planted(tmp_path):
    """1000 clustered rows in 4 parts, and eval items that are near-duplicates of PLANTED rows."""
    x = clustered(1000)
    rng = np.random.default_rng(1)
    q = x[PLANTED] + 0.02 * rng.normal(size=(len(PLANTED), D))
    q = (q / np.linalg.norm(q, axis=1, keepdims=True)).astype(np.float32)
    train = make_store(tmp_path / "train", x)
    make_store(tmp_path / "eval", q, role="eval").finalize()
    return train, x, q


# ---------------------------------------------------------------------- parsing


@pytest.mark.parametrize("text,needle", [
    ("annoy", "'annoy' is unknown: use flat, ivf, ivfpq or hnsw"),
    ("ivf:m=8", "ivf has no parameter 'm': its parameters are nlist, nprobe"),
    ("ivf:nlist=0", "nlist=0 is invalid: use an integer >= 1"),
    ("ivf:nlist=abc", "nlist=abc is invalid"),
    ("hnsw:M=1", "M=1 is invalid"),
    ("ivfpq:m=5", "m=5 does not divide the projection dim 32: use one of"),
    ("ivfpq:nbits=20", "nbits=20 is invalid"),
    ("flat:nlist=4", "flat has no parameter 'nlist'"),
    ("ivf:nlist=4,nlist=8", "nlist is given twice"),
])
def test_bad_search_values_are_refused(text, needle):
    with pytest.raises(InputError) as err:
        parse_search(text, dim=D)
    assert needle in str(err.value) and "\n" not in str(err.value)


def test_parse_keeps_only_what_was_set():
    spec = parse_search(" IVFPQ:nbits=4, m=8 ")
    assert spec.type == "ivfpq" and dict(spec.params) == {"m": 8, "nbits": 4}
    assert str(spec) == "ivfpq:m=8,nbits=4" and parse_search(str(spec)) == spec


def test_default_parameters():
    p = search.plan(parse_search("ivfpq"), 100_000, 1024)  # nlist = 4 sqrt(N), nprobe = ceil(sqrt(nlist))
    assert p["params"] == {"nlist": 1265, "nprobe": 36, "m": 64, "nbits": 8, "refine": 10}
    big = search.plan(parse_search("ivf"), 1_000_000, 1024)  # 4000 lists would need more than the sample budget
    assert big["params"]["nlist"] == (search.TRAIN_BYTES // (4 * 1024)) // 39 == 3360
    assert search.plan(parse_search("hnsw"), 10, 8)["params"] == {"M": 32, "efConstruction": 40, "efSearch": 64}
    # nlist is clamped so every list gets 39 training rows, and the sample fits the budget
    small = search.plan(parse_search("ivf"), 10_000, 64)
    assert small["params"]["nlist"] == 10_000 // 39 and small["train_rows"] <= 10_000
    wide = search.plan(parse_search("ivf"), 1_000_000, 8192)
    assert wide["params"]["nlist"] == (search.TRAIN_BYTES // (4 * 8192)) // 39
    assert wide["train_rows"] * 8192 * 4 <= search.TRAIN_BYTES


# ---------------------------------------------------------------------- exact scans


@pytest.mark.parametrize("chunk_bytes", [4 * D * 7, 1 << 20])
def test_centroid_scores_equal_numpy(tmp_path, monkeypatch, chunk_bytes):
    monkeypatch.setattr(scan, "CHUNK_BYTES", chunk_bytes)  # 7-row chunks cross every part boundary
    x = clustered(700)
    s = make_store(tmp_path / "s", x, part=128)
    q = np.random.default_rng(3).normal(size=(4, D)).astype(np.float32)
    threads = torch.get_num_threads(), faiss.omp_get_max_threads()
    got = scan.exact_scores([s], [1.0], q)
    assert (torch.get_num_threads(), faiss.omp_get_max_threads()) == threads  # the workers' 1-thread setting is undone
    np.testing.assert_allclose(got, q.astype(np.float64) @ as_stored(x).T, rtol=1e-5, atol=1e-6)
    d, i = scan.exact_top_k([s], [1.0], q, 5)
    brute = q.astype(np.float64) @ as_stored(x).T
    np.testing.assert_array_equal(i, np.argsort(-brute, axis=1)[:, :5])
    np.testing.assert_allclose(d, np.sort(brute, axis=1)[:, ::-1][:, :5], rtol=1e-5, atol=1e-6)


def test_weighted_scan_of_two_checkpoints(tmp_path, monkeypatch):
    monkeypatch.setattr(scan, "CHUNK_BYTES", 4 * 2 * D * 50)
    a, b = clustered(400, seed=1), clustered(400, seed=2)
    sa = make_store(tmp_path / "a", a, part=64)
    sb = make_store(tmp_path / "b", b, part=150)  # different part boundaries
    w = [0.25, 0.75]
    q = np.random.default_rng(4).normal(size=(3, 2 * D)).astype(np.float32)
    got = scan.exact_scores([sa, sb], [np.sqrt(x) for x in w], q)
    want = np.sqrt(w[0]) * q[:, :D] @ as_stored(a).T + np.sqrt(w[1]) * q[:, D:] @ as_stored(b).T
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)


def test_centroid_influence_equals_brute_force_on_a_store(planted, tmp_path):
    _, x, q = planted
    table = influence_scores(open_space([tmp_path / "train"], [tmp_path / "eval"]))
    e = as_stored(q)
    tasks = np.array(["ab"[i % 2] for i in range(len(q))])
    for t in "ab":
        np.testing.assert_allclose(table[f"influence:{t}"], as_stored(x) @ e[tasks == t].mean(axis=0), rtol=1e-5, atol=1e-6)


# ---------------------------------------------------------------------- approximate indexes


@pytest.mark.parametrize("kind", APPROX)
def test_each_index_type_finds_the_planted_duplicates(planted, tmp_path, kind):
    train, x, q = planted
    assert train.request_search(kind)
    entry = train.finalize()
    assert entry["type"] == kind.split(":")[0] and "fallback" not in entry
    assert GradientStore.open(tmp_path / "train").manifest["index"]["type"] == entry["type"]
    assert (tmp_path / "train" / "index.faiss").stat().st_size == entry["bytes"]
    searcher = GradientStore.open(tmp_path / "train").index()
    assert isinstance(searcher, ApproxSearcher) and searcher.ntotal == 1000
    _, ids = searcher.search(q, 3)
    assert list(ids[:, 0]) == PLANTED
    top = top_k(open_space([tmp_path / "train"], [tmp_path / "eval"]), 1)
    assert list(top["id"]) == [f"c{i}" for i in PLANTED]
    assert top["score"].min() > 0.99


def test_ivf_built_part_by_part_equals_exact_scores(planted, monkeypatch):
    train, x, q = planted
    monkeypatch.setattr(search, "SHARD_BYTES", 4 * D * 111)  # many add() calls, across parts

    def no_full_load(self):
        raise AssertionError("finalize must not load every vector")

    monkeypatch.setattr(GradientStore, "vectors", no_full_load)
    train.request_search("ivf:nlist=8,nprobe=8")  # every list probed: exact
    entry = train.finalize()
    assert entry["params"] == {"nlist": 8, "nprobe": 8}
    d, i = train.index().search(q, 10)
    brute = q.astype(np.float64) @ as_stored(x).T
    np.testing.assert_array_equal(i, np.argsort(-brute, axis=1)[:, :10])
    np.testing.assert_allclose(d, np.sort(brute, axis=1)[:, ::-1][:, :10], rtol=1e-5, atol=1e-5)


def test_too_few_rows_fall_back_to_exact(tmp_path):
    s = make_store(tmp_path / "s", clustered(60))
    s.request_search("ivf")
    entry = s.finalize()
    assert entry["type"] == "flat" and entry["requested"] == "ivf"
    assert "needs at least 78 rows" in entry["fallback"] and "searched exactly" in entry["fallback"]
    assert not (tmp_path / "s" / "index.faiss").exists()
    assert isinstance(s.index(), ExactSearcher)
    assert search.plan(parse_search("ivfpq"), 5000, D)["fallback"].startswith("ivfpq needs at least 9984 rows")
    assert search.plan(parse_search("ivf:nlist=1000,nprobe=2000"), 5000, D)["clamped"] == {"nlist": {"asked": 1000, "used": 128}, "nprobe": {"asked": 2000, "used": 128}}


def test_stale_or_corrupt_index(planted, tmp_path):
    train, _, q = planted
    train.request_search("hnsw")
    train.finalize()
    f = tmp_path / "train" / "index.faiss"
    f.write_bytes(f.read_bytes()[:-10])
    with pytest.raises(StoreError, match="index.faiss: checksum does not match"):
        GradientStore.open(tmp_path / "train").index()
    train.append([{"id": "extra", "strategy": "s", "task": "a", "group": "x"}], q[:1])
    assert isinstance(GradientStore.open(tmp_path / "train").index(), ExactSearcher)  # stale: exact


def test_several_checkpoints_top_k_is_exact(tmp_path):
    xa, xb = clustered(500, seed=5), clustered(500, seed=6)
    for name, x, lr in (("a", xa, 1.0), ("b", xb, 3.0)):
        make_store(tmp_path / f"t{name}", x, ckpt=name, lr=lr).request_search("hnsw")
        GradientStore.open(tmp_path / f"t{name}").finalize()
        make_store(tmp_path / f"e{name}", x[:4], role="eval", ckpt=name, lr=lr).finalize()
    space = open_space([tmp_path / "ta", tmp_path / "tb"], [tmp_path / "ea", tmp_path / "eb"])
    assert isinstance(space.searcher(), ExactSearcher)
    top = top_k(space, 3)
    combined = 0.25 * as_stored(xa[:4]) @ as_stored(xa).T + 0.75 * as_stored(xb[:4]) @ as_stored(xb).T
    want = np.argsort(-combined, axis=1)[:, :3]
    assert list(top["id"]) == [f"c{i}" for i in want.ravel()]


# ---------------------------------------------------------------------- CLI


def test_cli_search_is_recorded_rebuilt_and_validated(tmp_path, small_data):
    cands, _ = small_data
    base = ["-q", "index", str(cands), "--out", str(tmp_path / "s"), "--model", "tiny-random", "--dim", "64", "--max-length", "128"]
    r = CliRunner().invoke(cli, [*base, "--search", "ivf"])
    assert r.exit_code == 0, r.output
    m = GradientStore.open(tmp_path / "s").manifest
    assert m["search"] == {"type": "ivf", "params": {}} and m["index"]["type"] == "flat"
    assert "searched exactly (flat) instead" in m["index"]["fallback"] and "search ivf: ivf needs at least 78 rows" in r.stdout
    r = CliRunner().invoke(cli, [*base, "--search", "hnsw:M=8"])  # a complete store: rebuilt, not refused
    assert r.exit_code == 0, r.output
    m = GradientStore.open(tmp_path / "s").manifest
    assert m["index"]["type"] == "hnsw" and m["index"]["params"]["M"] == 8 and m["index"]["bytes_per_example"] > 0
    assert "0 new, 6 already there" in r.stdout and "search index: IndexHNSWFlat (M=8," in r.stdout
    sha = m["index"]["sha256"]
    r = CliRunner().invoke(cli, base)  # no --search: the store keeps its index
    assert r.exit_code == 0 and GradientStore.open(tmp_path / "s").manifest["index"]["sha256"] == sha
    r = CliRunner().invoke(cli, [*base, "--search", "flat"])
    assert r.exit_code == 0 and GradientStore.open(tmp_path / "s").manifest["index"]["type"] == "flat"
    assert not (tmp_path / "s" / "index.faiss").exists()
    for bad, needle in (("annoy", "--search 'annoy' is unknown"), ("ivfpq:m=7", "m=7 does not divide the projection dim 64")):
        r = CliRunner().invoke(cli, [*base, "--search", bad])
        assert r.exit_code == 2, r.output
        assert r.stderr.splitlines() == [r.stderr.strip()] and r.stderr.startswith("error: ") and needle in r.stderr


def test_a_store_from_before_search_types_is_searched_exactly(planted, tmp_path):
    """Stores written before --search had a float32 IndexIDMap2(IndexFlatIP) file: it is ignored, the parts are searched."""
    train, x, q = planted
    train.finalize()
    (tmp_path / "train" / "index.faiss").write_bytes(b"an old float32 index")
    train.manifest["index"] = {"file": "index.faiss", "type": "IndexIDMap2(IndexFlatIP)", "ntotal": 1000}
    train.manifest.pop("search", None)
    train._write_manifest()
    assert isinstance(GradientStore.open(tmp_path / "train").index(), ExactSearcher)
    assert GradientStore.open(tmp_path / "train").request_search(None) is False  # a rerun without --search rebuilds nothing
    top = top_k(open_space([tmp_path / "train"], [tmp_path / "eval"]), 1)
    assert list(top["id"]) == [f"c{i}" for i in PLANTED]


def test_ivfpq_on_disk_from_parts_matches_exact_top1(planted, tmp_path, monkeypatch, capfd):
    """IVF-PQ built out of core: shards added with global row numbers, merged into on-disk lists."""
    train, x, q = planted
    monkeypatch.setattr(search, "SHARD_BYTES", 4 * D * 137)  # many shards, crossing the 4 parts
    monkeypatch.setattr(search, "ADD_TABLE_BYTES", 4 * 8 * 256 * 50)  # add_with_ids 50 rows at a time
    exact = GradientStore.open(tmp_path / "train").index().search(q, 1)[1][:, 0]
    assert list(exact) == PLANTED
    train.request_search("ivfpq:m=8,nbits=4")
    entry = train.finalize()
    assert entry["ivfdata"].endswith(".ivfdata") and (tmp_path / "train" / entry["ivfdata"]).stat().st_size == entry["ivfdata_bytes"]
    assert not list((tmp_path / "train").glob(".index-build.*"))  # the shards are gone
    moved = tmp_path / "elsewhere"
    (tmp_path / "train").rename(moved)  # the lists are found beside the index, wherever the store lives
    searcher = GradientStore.open(moved).index()
    assert isinstance(searcher, ApproxSearcher) and searcher.ntotal == 1000
    _, ids = searcher.search(q, 1)
    assert list(ids[:, 0]) == list(exact)
    assert capfd.readouterr().out == ""  # FAISS's own printf()s are kept off stdout
    # a rebuild replaces the lists and removes the old file; a damaged file is refused
    store = GradientStore.open(moved)
    store.request_search("ivfpq:m=8,nbits=4,nlist=8")
    new = store.finalize()
    assert [f.name for f in moved.glob("*.ivfdata")] == [new["ivfdata"]] != [entry["ivfdata"]]
    with open(moved / new["ivfdata"], "r+b") as fh:
        fh.seek(10)
        fh.write(b"\xff\xff")
    with pytest.raises(StoreError, match="checksum does not match"):
        GradientStore.open(moved).index()
