"""wsol_fast.files: the atomic write every file goes through, and the clean-up of what a crash left."""
from __future__ import annotations

import os

import pytest

from wsol_fast import files


def test_atomic_write_bytes_and_text(tmp_path):
    path = str(tmp_path / "a.txt")
    files.atomic_write("héllo\n", path)
    assert open(path, "rb").read() == "héllo\n".encode("utf-8")
    files.atomic_write(b"\x00\x01", path, fsync=False)
    assert open(path, "rb").read() == b"\x00\x01"
    assert os.listdir(tmp_path) == ["a.txt"]


def test_a_failed_write_leaves_the_old_file_and_no_temp_file(tmp_path):
    path = str(tmp_path / "metrics.csv")
    files.atomic_write("old\n", path)
    with pytest.raises(RuntimeError, match="half-way"):
        with files.atomic_open(path, "w", newline="") as fh:
            fh.write("new, partial")
            raise RuntimeError("failed half-way")
    assert open(path).read() == "old\n" and os.listdir(tmp_path) == ["metrics.csv"]


def test_stale_temp_files_are_removed_and_named(tmp_path):
    for name in ("last.pt.tmp-123", "metrics.csv.tmp", "best.pt", "notes.txt"):
        (tmp_path / name).write_text("x")
    (tmp_path / "folder.tmp").mkdir()                    # a folder is never removed
    assert files.remove_stale_temp_files(str(tmp_path)) == ["last.pt.tmp-123", "metrics.csv.tmp"]
    assert sorted(os.listdir(tmp_path)) == ["best.pt", "folder.tmp", "notes.txt"]
    assert files.remove_stale_temp_files(str(tmp_path / "missing")) == []


def test_atomic_link_shares_the_bytes_and_survives_the_next_write_of_its_source(tmp_path):
    last, best = tmp_path / "last.pt", tmp_path / "best.pt"
    files.atomic_write(b"epoch 1", str(best))
    files.atomic_write(b"epoch 0", str(last))
    files.atomic_link(str(best), str(last))
    assert last.read_bytes() == b"epoch 1" and os.path.samefile(best, last)
    files.atomic_write(b"epoch 2", str(last))            # a new inode: best.pt keeps epoch 1
    assert best.read_bytes() == b"epoch 1" and last.read_bytes() == b"epoch 2"
    assert sorted(os.listdir(tmp_path)) == ["best.pt", "last.pt"]   # no temp file left


def test_atomic_link_copies_where_the_filesystem_has_no_hard_links(tmp_path, monkeypatch):
    def no_links(src, dst):
        raise OSError(1, "Operation not permitted")

    monkeypatch.setattr(os, "link", no_links)
    last, best = tmp_path / "last.pt", tmp_path / "best.pt"
    files.atomic_write(b"epoch 1", str(last))
    files.atomic_link(str(last), str(best))
    assert best.read_bytes() == b"epoch 1" and not os.path.samefile(best, last)
    assert sorted(os.listdir(tmp_path)) == ["best.pt", "last.pt"]
