"""storage.size: what a resume reads to tell Tune's snapshot from a tuner.pkl left empty by a kill."""

from __future__ import annotations

from adpo_ray.orchestration import storage


def test_size_of_a_missing_an_empty_and_a_written_file(tmp_path):
    assert storage.size(str(tmp_path / "tuner.pkl")) == 0  # none
    (tmp_path / "tuner.pkl").write_bytes(b"")
    assert storage.size(str(tmp_path / "tuner.pkl")) == 0  # left empty by a driver killed mid-write
    (tmp_path / "tuner.pkl").write_bytes(b"12345")
    assert storage.size(str(tmp_path / "tuner.pkl")) == 5
    assert storage.size(str(tmp_path)) == 0  # a folder is no file
