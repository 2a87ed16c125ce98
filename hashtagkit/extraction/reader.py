"""The reader: a store row -> decoded, resized uint8 pixels for every backbone's preprocessing.

Worker processes (a DataLoader's, or a Dask task's threads) decode each image once with Pillow
(EXIF orientation applied, any mode to RGB) and resize and crop it for each distinct
preprocessing, handing uint8 pixels over in shared memory; the model's side normalises them.
An image that is missing, unreadable, truncated or a decompression bomb becomes an invalid
row with its reason, and the run goes on. `ChunkBatches` cuts batches that never straddle a
chunk, so every chunk is computed the same way whether a run resumes or not.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import torch

from hashtagkit.backbones import Preprocessing
from hashtagkit.data.photos import Photos
from hashtagkit.images import DecodeError, decode_image, decode_jpegs_on, draft_side, jpeg_for_device, orient
from hashtagkit.stores.store import chunk_bounds


class ImageReader(torch.utils.data.Dataset):
    """Row -> (row, one uint8 pixel tensor per distinct preprocessing, reason or ''); the model's
    side normalises them (`Extractor`).

    `decode_mode` (images.DECODE_MODES): `fast` decodes JPEGs reduced down to the resize; `gpu`
    hands a whole RGB/grey JPEG over as its bytes and EXIF orientation (a 4th item, zeros in
    its pixel tensors), decoded in the main process on the model's device (`on_device`)."""

    def __init__(self, photos: Photos, transforms: Sequence[Preprocessing], allow_truncated: bool,
                 decode_mode: str = "default"):
        self.photos, self.transforms, self.allow_truncated = photos, list(transforms), allow_truncated
        self.decode_mode = decode_mode
        self.draft_side = draft_side(decode_mode)
        self.parent = os.getpid()  # decoding in another process than this one is a worker's

    @classmethod
    def exact(cls, photos: Photos, transforms: Sequence[Preprocessing], allow_truncated: bool) -> ImageReader:
        """A reader that never reduces a JPEG (Pillow at full size): the reference a
        pixel-changing decode is measured against."""
        reader = cls(photos, transforms, allow_truncated)
        reader.draft_side = 1 << 30
        return reader

    def __len__(self) -> int:
        return len(self.photos.paths)

    def __getitem__(self, row: int):
        if self.decode_mode == "gpu":
            try:
                jpeg = jpeg_for_device(self.photos.get(row))
            except DecodeError as e:
                return row, self.zeros(), str(e)
            if jpeg is not None:
                return row, self.zeros(), "", jpeg
        return self.decoded(row)

    def decoded(self, row: int) -> tuple:
        """The row decoded by Pillow: (row, pixels, '') or (row, zeros, reason)."""
        try:
            image = decode_image(self.photos.get(row), self.allow_truncated, draft_side=self.draft_side)
            return row, [t.pixels(image) for t in self.transforms], ""
        except DecodeError as e:
            return row, self.zeros(), str(e)

    def __getitems__(self, rows: list[int]) -> list:
        """A batch's rows (DataLoader's batched fetch): the photo source may fetch them
        together first (one ranged read of a shard instead of one per photo)."""
        self.photos.prefetch(rows)
        return [self[row] for row in rows]

    def zeros(self) -> list[torch.Tensor]:
        return [torch.zeros(3, t.crop, t.crop, dtype=torch.uint8) for t in self.transforms]

    def on_device(self, batch: tuple, device: torch.device) -> tuple:
        """A collated batch -> (rows, inputs, reasons): the JPEGs a `gpu` reader handed over are
        decoded on `device` in one call, turned, resized and cropped there; one the device cannot
        decode goes through Pillow here (its pixels, or its reason)."""
        if len(batch) == 3:
            return batch
        rows, inputs, reasons, jpegs = batch
        if not jpegs:
            return rows, inputs, reasons
        inputs = [x.to(device) for x in inputs]
        decoded = decode_jpegs_on(device, [data for _, (data, _) in jpegs])
        for (i, (_, orientation)), image in zip(jpegs, decoded, strict=True):
            if image is None:
                _, pixels, reasons[i] = self.decoded(int(rows[i]))
            else:
                image = orient(image, orientation)
                pixels = [t.pixels_of_tensor(image) for t in self.transforms]
            for x, p in zip(inputs, pixels, strict=True):
                x[i] = p.to(device)
        return rows, inputs, reasons


DECODER_DIED = "decoder died"


def is_worker_death(e: BaseException) -> bool:
    """Whether a DataLoader error means a worker process died (killed, out of memory, segfault):
    DataLoader's own RuntimeError, or, when the worker dies while the main process takes a
    batch's shared memory from it, the broken connection of that hand-over."""
    if isinstance(e, (ConnectionError, EOFError)):
        return True
    return "DataLoader worker" in str(e) and ("exited unexpectedly" in str(e) or "killed" in str(e))


def collate(items):
    """(rows, one stacked tensor per preprocessing, reasons), and when a `gpu` reader handed
    JPEGs over, a 4th item: [(index in the batch, (bytes, orientation))]."""
    rows = torch.tensor([it[0] for it in items])
    inputs = [torch.stack([it[1][i] for it in items]) for i in range(len(items[0][1]))]
    reasons = [it[2] for it in items]
    if any(len(it) > 3 for it in items):
        return rows, inputs, reasons, [(i, it[3]) for i, it in enumerate(items) if len(it) > 3]
    return rows, inputs, reasons


class ChunkBatches(torch.utils.data.Sampler):
    """Batches that never straddle a chunk, so every chunk is computed the same way on a resume."""

    def __init__(self, chunks: list[int], chunk_rows: int, n_rows: int, batch_size: int):
        self.batches = []
        for c in chunks:
            rows = list(range(*chunk_bounds(c, chunk_rows, n_rows)))
            self.batches += [rows[i : i + batch_size] for i in range(0, len(rows), batch_size)]

    def __iter__(self):
        return iter(self.batches)

    def __len__(self) -> int:
        return len(self.batches)

