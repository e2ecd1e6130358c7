"""A local staging folder sent file by file to a run directory in object storage.

A training run writes its checkpoint, models and logs many times; those writers
(``torch.save``, safetensors, TensorBoard, the atomic temp-file-and-rename of
:mod:`xchm.outputs`) need a local file. So a run whose directory is a URL writes into
a staging folder, and :meth:`Mirror.send` then uploads each file that changed since
the last send, oldest first, each one whole or not at all
(:func:`xchm.outputs.upload_file`). Oldest first keeps the order of the writes in the
store: a model's ``model.safetensors`` before its ``card.json`` (whose digest would
catch a mix), a saved model before the state that follows it.

Written by hand: fsspec's ``put`` copies a tree but neither keeps an order nor skips
unchanged files, and a sync tool would be a new dependency for twenty lines.
"""

from __future__ import annotations

import atexit
import logging
import shutil
import tempfile
from pathlib import Path

from xchm.storage import Location

__all__ = ["Mirror"]

log = logging.getLogger(__name__)


class Mirror:
    """Upload what a local staging folder gains to ``target``, a folder on an object store.

    Parameters
    ----------
    target
        The run directory (a URL).

    Attributes
    ----------
    staging
        The local folder to write into (temporary, removed when the process ends).
    """

    def __init__(self, target: Location) -> None:
        self.target = target
        self.staging = Path(tempfile.mkdtemp(prefix="xchm-run-"))
        self._sent: dict[Path, tuple[int, int]] = {}
        atexit.register(shutil.rmtree, self.staging, True)

    def send(self) -> list[str]:
        """Upload every file that is new or changed since the last call, oldest first.

        Returns
        -------
        list of str
            The names sent, relative to the run directory.

        Raises
        ------
        OutputError
            An upload failed; what was sent before it stays in the store, and the next
            call sends the rest.
        """
        from xchm.outputs import upload_file

        changed = []
        for file in self.staging.rglob("*"):
            if not file.is_file() or any(
                p.startswith(".") for p in file.relative_to(self.staging).parts
            ):
                continue  # folders, and the hidden temporaries of atomic writes
            stat = file.stat()
            stamp = (stat.st_mtime_ns, stat.st_size)
            if self._sent.get(file) != stamp:
                changed.append((stamp, file))
        names = []
        for stamp, file in sorted(changed):
            name = file.relative_to(self.staging).as_posix()
            upload_file(file, self.target.join(*name.split("/")), overwrite=True)
            self._sent[file] = stamp
            names.append(name)
        if names:
            log.debug("sent %s to %s", names, self.target)
        return names

    def close(self) -> None:
        """Remove the staging folder."""
        shutil.rmtree(self.staging, ignore_errors=True)
