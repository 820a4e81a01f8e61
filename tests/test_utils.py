"""Atomic writes: all-or-nothing, and the result has ordinary permissions (not mkstemp's private 0600)."""
import os

import pytest

from vidiff.utils import atomic_dir, atomic_path, parse_dtype


def _umask():
    mask = os.umask(0)
    os.umask(mask)
    return mask


def test_atomic_path_writes_with_umask_permissions(tmp_path):
    target = tmp_path / "sub" / "out.txt"
    with atomic_path(target) as tmp:
        assert tmp.suffix == ".txt" and tmp.parent == target.parent
        tmp.write_text("done")
    assert target.read_text() == "done"
    assert target.stat().st_mode & 0o777 == 0o666 & ~_umask()
    assert os.listdir(target.parent) == ["out.txt"]


def test_atomic_path_failure_keeps_the_old_file(tmp_path):
    target = tmp_path / "out.txt"
    target.write_text("old")
    with pytest.raises(OSError):
        with atomic_path(target) as tmp:
            tmp.write_text("half")
            raise OSError("disk full")
    assert target.read_text() == "old"
    assert os.listdir(tmp_path) == ["out.txt"]


def test_atomic_dir_replaces_only_on_success(tmp_path):
    target = tmp_path / "model"
    with atomic_dir(target) as tmp:
        (tmp / "a").write_text("1")
    assert (target / "a").read_text() == "1"
    assert target.stat().st_mode & 0o777 == 0o777 & ~_umask()
    with pytest.raises(RuntimeError):
        with atomic_dir(target) as tmp:
            (tmp / "b").write_text("2")
            raise RuntimeError("crash")
    assert sorted(os.listdir(target)) == ["a"] and os.listdir(tmp_path) == ["model"]
    with atomic_dir(target) as tmp:
        (tmp / "c").write_text("3")
    assert sorted(os.listdir(target)) == ["c"] and os.listdir(tmp_path) == ["model"]


def test_parse_dtype_names_the_choices():
    import torch

    assert parse_dtype("bf16") is torch.bfloat16
    with pytest.raises(ValueError, match="fp32, fp16, bf16"):
        parse_dtype("fp8")


def test_atomic_dir_failed_publish_keeps_the_old_folder_and_leaves_no_temporary(tmp_path, monkeypatch):
    """Found in QA: a failing rename (busy target, `--out .`) left the temporary folder behind."""
    target = tmp_path / "model"
    target.mkdir()
    (target / "a").write_text("old")
    real_replace = os.replace

    def failing_replace(src, dst):
        if str(src).endswith(".tmp"):
            raise OSError(16, "Device or resource busy")
        return real_replace(src, dst)

    monkeypatch.setattr(os, "replace", failing_replace)
    with pytest.raises(OSError, match="busy"):
        with atomic_dir(target) as tmp:
            (tmp / "b").write_text("new")
    assert os.listdir(tmp_path) == ["model"] and os.listdir(target) == ["a"]


def test_atomic_dir_replacing_a_file_leaves_no_leftover(tmp_path):
    """Found in QA: a file replaced by a folder stayed behind as `.name.old-PID`."""
    target = tmp_path / "out"
    target.write_text("a file")
    with atomic_dir(target) as tmp:
        (tmp / "a").write_text("1")
    assert os.listdir(tmp_path) == ["out"] and (target / "a").read_text() == "1"


def test_plural_counts_read_right():
    from vidiff.utils import plural

    assert [plural(n, "frame") for n in (0, 1, 2)] == ["0 frames", "1 frame", "2 frames"]
