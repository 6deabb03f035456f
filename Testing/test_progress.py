"""progress: one protocol, progress(fraction, message), for every job; counted units keep their count for the bars
that show it."""

from __future__ import annotations

import json

from LungNoduleExplainLib.progress import Count, part, report_count


def test_a_count_is_the_fraction_done_and_remembers_i_of_n():
    heard = []
    report_count(lambda fraction, message: heard.append((fraction, message)), 3, 12, "LIDC-IDRI-0003")
    report_count(None, 4, 12, "nobody listens")  # no listener: nothing to do
    (fraction, message), = heard
    assert fraction == 0.25 and (fraction.done, fraction.total, message) == (3, 12, "LIDC-IDRI-0003")
    assert json.dumps({"fraction": fraction}) == '{"fraction": 0.25}'  # the worker's JSON lines see a float
    assert Count(0, 0) == 1.0 and type(0.5 * fraction) is float  # a rescaled count is no longer a count


def test_a_part_maps_a_steps_progress_onto_its_share_of_the_whole():
    heard = []
    step = part(lambda fraction, message: heard.append((round(fraction, 6), message)), 0.1, 0.5, "member 2/4: ")
    step(0.0, "epoch 1")
    step(Count(1, 2), "epoch 2")
    assert heard == [(0.1, "member 2/4: epoch 1"), (0.3, "member 2/4: epoch 2")]
    assert part(None, 0.0, 0.8) is None


def test_the_command_line_bar_still_counts_units(capsys):
    from LungNoduleExplainLib.commands.prepare_lidc import tqdm_progress

    progress, close = tqdm_progress("preparing cases", unit="CT")
    for done in (1, 2, 3):
        report_count(progress, done, 3, f"ct{done}.nii.gz")
    close()
    bar = capsys.readouterr().err
    assert "3/3" in bar and "ct3.nii.gz" in bar
