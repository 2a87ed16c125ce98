"""Fault injection for the tests, installed into hashtagkit from outside (production code has no hooks).

- a decoder that dies: reading a photo named `$HASHTAGKIT_FAULT_KILL_DECODE`, the decoding
  process SIGKILLs itself, as the OS kills a decoder out of memory (never the process named
  `spare_pid`: the test's own, whose forked DataLoader workers inherit the patch);
- a slow chunk: a Dask chunk task first sleeps `$HASHTAGKIT_FAULT_CHUNK_SECONDS`, so a test can
  see it executing and kill things meanwhile.

In the test process `install(monkeypatch, spare_pid=os.getpid())`; in Dask worker processes this
module is a preload (`LocalCluster(preload=["tests.faults"])`, or Dask's own
`DASK_DISTRIBUTED__WORKER__PRELOAD` for workers a CLI subprocess starts), whose `dask_setup`
installs it. The settings are read from the environment at each call, so a test (or
`client.run`) can change them while workers run.
"""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

KILL_DECODE = "HASHTAGKIT_FAULT_KILL_DECODE"
CHUNK_SECONDS = "HASHTAGKIT_FAULT_CHUNK_SECONDS"
PRELOAD_ENV = {"DASK_DISTRIBUTED__WORKER__PRELOAD": '["tests.faults"]'}  # for workers of a CLI subprocess


def install(monkeypatch=None, spare_pid: int | None = None) -> None:
    """Patch the reader and the Dask chunk task (through `monkeypatch` when given: undone after the test)."""
    from hashtagkit.extraction import distributed, reader

    setattr_ = monkeypatch.setattr if monkeypatch is not None else setattr
    real_getitem = reader.ImageReader.__getitem__
    if getattr(real_getitem, "faulty", False):
        return

    def getitem(self, row: int):
        target = os.environ.get(KILL_DECODE)
        if target and os.getpid() != spare_pid and Path(self.photos.paths[row]).name == target:
            os.kill(os.getpid(), signal.SIGKILL)
        return real_getitem(self, row)

    getitem.faulty = True
    setattr_(reader.ImageReader, "__getitem__", getitem)
    real_chunk = distributed.extract_chunk

    def extract_chunk(job, chunk: int) -> dict:
        time.sleep(float(os.environ.get(CHUNK_SECONDS) or 0))
        return real_chunk(job, chunk)

    setattr_(distributed, "extract_chunk", extract_chunk)


def dask_setup(worker) -> None:
    """Dask's preload entry point, run in each worker process."""
    install()
