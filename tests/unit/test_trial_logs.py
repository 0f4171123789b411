"""Tune's trial logs (``progress.csv``, ``result.json``) are read whole lines only: a reader can
meet a file while Tune writes it or copies it into the results folder, or after a kill cut it
short. A cut CSV row parses without error into wrong values: cut numbers, and a missing ``done``
that pandas reads as NaN, which is true."""

from __future__ import annotations

from adpo_ray.metrics import whole_lines
from adpo_ray.orchestration.status import _trial_state
from adpo_ray.report.data import read_progress

HEADER = "env_steps,loss/adpo,done,training_iteration\n"


def test_whole_lines_of_text_and_bytes():
    assert whole_lines("a\nb\nc") == "a\nb\n" and whole_lines(b"a\nb\nc") == b"a\nb\n"
    assert whole_lines("a\nb\n") == "a\nb\n"  # whole: as it is
    assert whole_lines("cut") == "" and whole_lines(b"") == b""


def test_a_cut_progress_row_is_not_read(tmp_path):
    folder = tmp_path / "trial"
    folder.mkdir()
    (folder / "progress.csv").write_text(HEADER + "128,1.97861,False,1\n256,1.95")  # 1.95 of 1.95123
    rows = read_progress(folder)
    assert rows["env_steps"].tolist() == [128] and rows["loss/adpo"].tolist() == [1.97861]
    assert _trial_state(folder) == ("started", 128)  # not finished at 256 (NaN done read as true)

    (folder / "progress.csv").write_text(HEADER + "128,1.97861,False,1\n256,1.95123,True,2\n")  # control
    assert read_progress(folder)["loss/adpo"].tolist() == [1.97861, 1.95123]
    assert _trial_state(folder) == ("finished", 256)

    (folder / "progress.csv").write_text(HEADER[:10])  # not even a whole header yet
    assert read_progress(folder).empty and _trial_state(folder) == ("started", 0)
