"""One chunk's rows as they come out of the model, before the store's `write_chunk` takes them whole.

The in-process runner (`local`) and a Dask task (`distributed`) fill a chunk the same way, so a
chunk's features are the same bit for bit in fp32 whichever computed it.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    import torch


class ChunkBuffer:
    """One chunk's rows as they arrive from the model: features, valid flags, reasons, and which
    rows are in. The in-process writer and a Dask task fill a chunk the same way."""

    def __init__(self, start: int, stop: int, dim: int):
        self.start = start
        self.features = np.zeros((stop - start, dim), dtype=np.float32)
        self.valid = np.ones(stop - start, bool)
        self.reasons = [""] * (stop - start)
        self.received = np.zeros(stop - start, bool)

    def put(self, rows: Sequence[int], feats: np.ndarray, reasons: Sequence[str]) -> None:
        """Rows of one batch: an invalid row keeps zero features and gets its reason."""
        for j, (r, reason) in enumerate(zip(rows, reasons, strict=True)):
            i = r - self.start
            if reason:
                self.valid[i] = False
                self.reasons[i] = reason
            else:
                self.features[i] = feats[j]
            self.received[i] = True  # last: an interruption above leaves the row to do again

    def complete(self) -> bool:
        return bool(self.received.all())


def chunk_info(run: int, device: torch.device | str, precision: str, seconds: float, worker: str = "in-process") -> dict:
    """What a writer records about the chunk it computed (see `Store.write_chunk`)."""
    return {"run": run, "host": socket.gethostname(), "worker": worker, "pid": os.getpid(), "device": str(device),
            "precision": precision, "seconds": round(seconds, 3)}

