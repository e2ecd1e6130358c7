"""One progress bar for a whole run, one summary line per epoch (training and pretraining)."""

from __future__ import annotations

import logging
import re
import time

import pytest

from xchm.runs.run import Run, summary_line

from .test_run import _run

KINDS = ("training", "pretraining")
#: tqdm's counter in a bar's text: "3/6 [".
COUNTER = re.compile(r"(\d+)/(\d+) \[")

# Two epochs of two steps do not beat the train mean; that warning is not tested here.
pytestmark = pytest.mark.filterwarnings("ignore:.*no better than predicting:UserWarning")


def _bars(err):
    """Each bar in ``err`` (tqdm off a terminal: refreshes split by CR, a bar ends in LF),
    as the list of its (count, total) refreshes."""
    lines = [line for line in err.split("\n") if COUNTER.search(line)]
    return [[(int(n), int(t)) for n, t in COUNTER.findall(line)] for line in lines]


@pytest.mark.parametrize("kind", KINDS)
def test_progress__one_bar_for_the_run_and_one_line_per_epoch(kind, cube, tmp_path, capsys):
    result = _run(kind, cube, tmp_path / "run", epochs=2, progress=True)
    printed = capsys.readouterr()
    steps = sum(row["steps"] for row in result.history)
    assert steps == 4  # two steps an epoch, two epochs
    (bar,) = _bars(printed.err)  # one bar, not one per epoch
    assert {total for _, total in bar} == {steps}  # its total: every step of the run
    assert bar[0] == (0, steps) and bar[-1] == (steps, steps)
    assert [n for n, _ in bar] == sorted(n for n, _ in bar)  # it never restarts at an epoch
    lines = [line for line in printed.out.splitlines() if " epoch " in line]
    assert lines == [summary_line(kind, row) for row in result.history]
    assert [line.split(":")[0] for line in lines] == [f"{kind} epoch {e}" for e in range(2)]
    assert all(f" {'val_mae' if kind == 'training' else 'loss'} " in line for line in lines)


@pytest.mark.parametrize("kind", KINDS)
def test_progress__off_prints_nothing_and_logs_the_lines(kind, cube, tmp_path, capsys, caplog):
    with caplog.at_level(logging.INFO, logger="xchm.runs.run"):
        result = _run(kind, cube, tmp_path / "run", epochs=1, progress=False)
    printed = capsys.readouterr()
    assert printed.out == "" and _bars(printed.err) == []
    logged = [r.getMessage() for r in caplog.records if r.levelno == logging.INFO]
    assert logged == [summary_line(kind, row) for row in result.history]


def test_progress__a_resumed_run_goes_on_from_where_it_stopped(cube, tmp_path, capsys, monkeypatch):
    class Stop(Exception):
        """Ends the run after its first epoch, as a kill would."""

    logged = Run.log

    def log_then_stop(self, history):
        logged(self, history)
        raise Stop

    monkeypatch.setattr(Run, "log", log_then_stop)
    with pytest.raises(Stop):
        _run("training", cube, tmp_path / "run", epochs=2, progress=False)
    monkeypatch.undo()
    _run("training", cube, tmp_path / "run", epochs=2, resume=True, progress=True)
    (bar,) = _bars(capsys.readouterr().err)
    assert bar[0] == (2, 4) and bar[-1] == (4, 4)


def test_summary_line__shows_the_losses_it_has_and_the_time():
    row = {"epoch": 4, "loss": 9.87654, "teacher_information": 0.5, "lr": 1e-4, "seconds": 2.0}
    assert summary_line("pretraining", row) == (
        "pretraining epoch 4: loss 9.877, teacher_information 0.5 (2.0 s)"
    )


def test_progress__into_a_log_file_refreshes_at_most_every_few_seconds(tmp_path, capsys):
    """Off a terminal every refresh is a line's worth of bytes in the log."""
    from xchm.runs.distributed import Place
    from xchm.training import TrainConfig

    place = Place(rank=0, world=1, device="cpu")
    run = Run("training", TrainConfig(epochs=1), None, tmp_path, place, {}, {})
    bar = run.progress(40, 0, 0, "batch", True)
    for _ in range(40):  # 0.8 s of steps: a terminal's bar would refresh about 8 times
        time.sleep(0.02)
        bar.update()
    run.close()
    (refreshes,) = _bars(capsys.readouterr().err)
    assert refreshes == [(0, 40), (40, 40)]
