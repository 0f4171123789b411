"""`adpo-ray status` reads each trial-pack member's own progress from the pack's result.json (as
Tune writes it: one JSON result per line, the members' results under ``members``)."""

from __future__ import annotations

import json

from adpo_ray.orchestration.status import member_progress


def write_results(folder, lines: list) -> None:
    folder.mkdir(exist_ok=True)
    (folder / "result.json").write_text("".join(
        (line if isinstance(line, str) else json.dumps(line)) + "\n" for line in lines))


def result(steps: list[int], ended: list[bool], done: bool = False) -> dict:
    return {"training_iteration": 1, "done": done, "env_steps": sum(steps),
            "members": [{"env_steps": n, **({"done": True} if e else {})} for n, e in zip(steps, ended, strict=True)]}


def test_each_member_has_its_own_steps_and_end(tmp_path):
    folder = tmp_path / "pack3_x"
    write_results(folder, [result([2043, 2057, 2052], [False, False, False]),
                           result([4095, 4107, 4100], [False, True, False])])
    assert member_progress(folder, 3) == [(4095, False), (4107, True), (4100, False)]
    # the pack's own done ends every member
    write_results(folder, [result([4095, 4107, 4100], [False, True, False], done=True)])
    assert member_progress(folder, 3) == [(4095, True), (4107, True), (4100, True)]


def test_a_torn_last_line_reads_the_one_before_and_a_long_file_only_its_tail(tmp_path):
    folder = tmp_path / "pack2_x"
    write_results(folder, [result([n, n + 1], [False, False]) for n in range(0, 200_000, 100)]
                  + ['{"training_iteration": 3, "members": [{"env_st'])
    assert member_progress(folder, 2) == [(199_900, False), (199_901, False)]
    assert member_progress(folder, 2, tail_bytes=300) == [(199_900, False), (199_901, False)]
    # a tail too short for one whole result grows until it holds one
    assert member_progress(folder, 2, tail_bytes=10) == [(199_900, False), (199_901, False)]


def test_no_result_yet_or_another_size_is_none(tmp_path):
    assert member_progress(tmp_path / "missing", 2) is None
    folder = tmp_path / "pack2_x"
    write_results(folder, ["{not json", result([10, 12, 14], [False] * 3)])
    assert member_progress(folder, 2) is None
