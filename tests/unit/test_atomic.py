"""The one write-then-rename: a body that fails leaves neither the target nor a partial file."""

import errno

import pytest

from iclscope.core.atomic import commit, partial_path, removed_when_disk_full, written


def test_written_renames_a_whole_file_into_place(tmp_path):
    out = tmp_path / "sub" / "table.parquet"
    with written(out) as tmp:
        assert tmp == partial_path(out) and not out.exists()
        tmp.write_text("whole")
    assert out.read_text() == "whole" and not partial_path(out).exists()


def test_a_failing_body_leaves_the_previous_file_and_no_partial(tmp_path):
    out = tmp_path / "fig.png"
    out.write_text("previous")
    with pytest.raises(ValueError), written(out) as tmp:
        tmp.write_text("half")
        raise ValueError("killed mid-write")
    assert out.read_text() == "previous" and not partial_path(out).exists()


def test_a_directory_replaces_the_previous_one_whole(tmp_path):
    ckpt = tmp_path / "checkpoint"
    for step in (1, 2):
        with written(ckpt) as tmp:
            tmp.mkdir()
            (tmp / f"step{step}").write_text(str(step))
    assert sorted(p.name for p in ckpt.iterdir()) == ["step2"]
    assert not partial_path(ckpt).exists()


def test_a_stale_partial_from_a_killed_attempt_is_overwritten(tmp_path):
    out = tmp_path / "x.txt"
    partial_path(out).write_text("torn")
    with written(out) as tmp:
        assert not tmp.exists()
        tmp.write_text("new")
    assert out.read_text() == "new"


def test_commit_keeps_nothing_but_the_target(tmp_path):
    tmp, out = tmp_path / "a.partial", tmp_path / "a"
    tmp.write_text("x")
    commit(tmp, out)
    assert out.read_text() == "x" and not tmp.exists()


def test_a_full_disk_names_the_file_and_removes_the_partial(tmp_path):
    out = tmp_path / "act.h5"
    partial = partial_path(out)
    with pytest.raises(OSError, match="disk full while writing .*act.h5") as err, removed_when_disk_full(partial, out):
        partial.write_text("torn")
        raise OSError(errno.ENOSPC, "No space left on device")
    assert err.value.errno == errno.ENOSPC and not partial.exists()
    with pytest.raises(OSError, match="disk full"), written(out) as tmp:
        tmp.write_text("torn")
        raise RuntimeError("Can't write data (No space left on device)")
    assert not partial_path(out).exists()
