"""Clusters xchm starts show only Dask's warnings, unless xchm's logging (``-v``) asks for more."""

from __future__ import annotations

import logging
import subprocess
import sys
import textwrap

import pytest

import xchm.cluster
from xchm.cli import main

pytestmark = pytest.mark.slow


class _Records(logging.Handler):
    """Every record that reaches the ``distributed`` logger's handlers."""

    def __init__(self) -> None:
        super().__init__(logging.NOTSET)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


def _start_and_stop() -> list[logging.LogRecord]:
    handler = _Records()
    dask_logger = logging.getLogger("distributed")
    dask_logger.addHandler(handler)
    try:
        with xchm.cluster.start(
            gpus=None, n_workers=1, threads_per_worker=1, dashboard_address=":0", quiet=True
        ) as client:
            assert client.submit(sum, [1, 2]).result() == 3
    finally:
        dask_logger.removeHandler(handler)
    return handler.records


def test_start__dask_says_only_warnings_by_default(capfd):
    level = logging.getLogger("distributed").level
    records = _start_and_stop()
    assert [r.getMessage() for r in records if r.levelno < logging.WARNING] == []
    assert "INFO" not in capfd.readouterr().err  # nor the worker processes
    assert logging.getLogger("distributed").level == level  # put back on close


def test_start__xchm_at_info_brings_dask_info_back():
    xchm_logger = logging.getLogger("xchm")
    before = xchm_logger.level
    xchm_logger.setLevel(logging.INFO)
    try:
        records = _start_and_stop()
    finally:
        xchm_logger.setLevel(before)
    messages = [r.getMessage() for r in records if r.levelno == logging.INFO]
    assert any("Scheduler at" in m for m in messages), messages


def test_cli__verbose_sets_the_level_dask_follows():
    xchm_logger = logging.getLogger("xchm")
    before = xchm_logger.level
    try:
        assert main(["models"]) == 0
        assert xchm.cluster.dask_log_level() == logging.WARNING
        assert main(["-v", "models"]) == 0
        assert xchm.cluster.dask_log_level() == logging.INFO
    finally:
        xchm_logger.setLevel(before)


#: A process that configures logging as ``xchm [-v] ...`` does, then starts a cluster.
SCRIPT = textwrap.dedent(
    """
    import sys
    import xchm.cluster
    from xchm.cli import main

    if __name__ == "__main__":
        main([*sys.argv[1:], "models"])
        with xchm.cluster.start(gpus=None, n_workers=1, dashboard_address=":0") as client:
            client.submit(sum, [1, 2]).result()
    """
)


@pytest.mark.parametrize("flags", [[], ["-v"]])
def test_cli__dask_info_lines_only_with_verbose(flags, tmp_path):
    script = tmp_path / "run.py"
    script.write_text(SCRIPT)
    done = subprocess.run(
        [sys.executable, str(script), *flags], capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr
    info = [line for line in done.stderr.splitlines() if "INFO" in line]
    if flags:
        assert any("Scheduler at" in line for line in info), done.stderr
    else:
        assert info == [], done.stderr
        assert "Dask dashboard" in done.stderr  # the one line xchm prints itself
