"""Atomic writes: a temp left by a dead writer is swept, a live writer's temp is kept, folders swap whole."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from curator.io.atomic import _HOST, sweep_stale, write_bytes_atomic, write_dir_atomic
from tests.helpers import dead_pid


def test_stale_temp_of_a_dead_writer_is_swept_live_one_kept(tmp_path: Path) -> None:
    target = tmp_path / "part-00001.npy"
    stale = tmp_path / f".part-00001.npy.{_HOST}-{dead_pid()}.abc123.tmp"
    live = tmp_path / f".part-00001.npy.{_HOST}-{os.getpid()}.def456.tmp"
    other_host = tmp_path / f".part-00001.npy.elsewhere-{dead_pid()}.ghi789.tmp"
    unrelated = tmp_path / ".part-00002.npy.x.tmp"
    for p in (stale, live, other_host, unrelated):
        p.write_bytes(b"half")
    write_bytes_atomic(target, b"whole")
    assert target.read_bytes() == b"whole"
    assert not stale.exists()
    assert live.exists() and other_host.exists() and unrelated.exists()
    assert sweep_stale(target) == []


def test_failed_write_keeps_the_old_file(tmp_path: Path) -> None:
    target = tmp_path / "manifest.json"
    write_bytes_atomic(target, b"old")

    def boom(fh) -> None:
        fh.write(b"new but partial")
        raise RuntimeError("disk full")

    from curator.io.atomic import write_atomic

    with pytest.raises(RuntimeError):
        write_atomic(target, boom)
    assert target.read_bytes() == b"old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["manifest.json"]


def test_folder_swap_replaces_whole_and_a_failure_keeps_the_old(tmp_path: Path) -> None:
    out = tmp_path / "export"
    write_dir_atomic(out, lambda d: (d / "a.txt").write_text("1"))
    write_dir_atomic(out, lambda d: (d / "b.txt").write_text("2"))
    assert sorted(p.name for p in out.iterdir()) == ["b.txt"]

    def boom(d: Path) -> None:
        (d / "c.txt").write_text("3")
        raise RuntimeError("crash")

    with pytest.raises(RuntimeError):
        write_dir_atomic(out, boom)
    assert sorted(p.name for p in out.iterdir()) == ["b.txt"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["export"]


def test_written_files_and_folders_get_the_mode_open_and_mkdir_would(tmp_path: Path) -> None:
    """mkstemp/mkdtemp make 0600/0700; an output shared with a team must not become private."""
    import os
    import stat

    from curator.io.atomic import write_dir_atomic, write_text_atomic

    old = os.umask(0o022)
    try:
        write_text_atomic(tmp_path / "report.md", "hello\n")
        write_dir_atomic(tmp_path / "store", lambda d: (d / "part.npy").write_bytes(b"x"))
        os.umask(0o077)
        write_text_atomic(tmp_path / "private.md", "hello\n")
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "report.md").stat().st_mode) == 0o644
    assert stat.S_IMODE((tmp_path / "store").stat().st_mode) == 0o755
    assert stat.S_IMODE((tmp_path / "private.md").stat().st_mode) == 0o600
    assert (tmp_path / "report.md").read_text() == "hello\n" and (tmp_path / "store" / "part.npy").read_bytes() == b"x"
