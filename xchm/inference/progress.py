"""A tqdm progress bar for predictions computed with Dask's local schedulers.

The bar counts windows (blocks finished x the scene's windows per block), so it
shows windows/s and an ETA. With a distributed cluster use the dashboard or
``distributed.progress`` instead.
"""

from __future__ import annotations

from typing import Any

from dask.callbacks import Callback

__all__ = ["WindowProgress", "PREDICT_PREFIX"]

#: Name prefix of the prediction tasks in the graph.
PREDICT_PREFIX = "chm-predict-"


def _name(key: Any) -> str:
    return str(key[0] if isinstance(key, tuple) else key)


class WindowProgress(Callback):
    """Advance a tqdm bar as prediction blocks finish.

    Parameters
    ----------
    total_windows
        Windows in the whole scene (the bar's total).
    area_km2
        Area of the scene; when given, the bar also shows km2/h.
    disable
        Hide the bar (e.g. when not attached to a terminal).
    """

    def __init__(
        self,
        total_windows: int,
        *,
        area_km2: float | None = None,
        desc: str = "predicting",
        disable: bool = False,
    ):
        super().__init__()
        self.total = int(total_windows)
        self.area_km2 = area_km2
        self.desc = desc
        self.disable = disable
        self.bar: Any = None
        self.blocks = self.done = 0

    def _start(self, dsk: Any) -> None:
        from tqdm.auto import tqdm

        self.blocks = sum(1 for key in dsk if _name(key).startswith(PREDICT_PREFIX))
        self.done = 0
        self.bar = tqdm(total=self.total, desc=self.desc, unit="win", disable=self.disable)

    def _posttask(self, key: Any, result: Any, dsk: Any, state: Any, worker_id: Any) -> None:
        if self.bar is None or not self.blocks or not _name(key).startswith(PREDICT_PREFIX):
            return
        self.done += 1
        self.bar.update(self.total * self.done // self.blocks - self.bar.n)
        hours = self.bar.format_dict["elapsed"] / 3600
        if self.area_km2 and hours > 0:
            rate = self.area_km2 * self.done / self.blocks / hours
            self.bar.set_postfix_str(f"{rate:.1f} km2/h", refresh=False)

    def _finish(self, dsk: Any, state: Any, errored: bool) -> None:
        if self.bar is not None:
            self.bar.close()
