"""Scratch buffers that a tree of layers shares, owned by an object instead of a module global.

A `Workspace` holds one grow-only buffer per (device, slot name, dtype). A layer asks for a buffer of a
given shape for values that need not outlive one call (Conv2d's output before the NCHW transpose, the
column chunks when a batch is too large to keep its columns); the next call of any layer sharing the
workspace may overwrite it. Reusing buffers avoids a fresh large allocation per layer per step (on the
CPU a fresh 100 MB array costs page faults; on the GPU the pool would keep them anyway).

Ownership (see `minissd.nn.module.Module.add_child`): every Module is created with its own Workspace,
and adding a child hands the parent's Workspace to the whole child subtree, so a model built from
containers shares the one Workspace of its root (SSD: ``model.workspace``). Memory then grows with the
largest layer, not with the sum over layers. ``model.clear_cache()`` empties it (and every layer's own
caches); the buffers come back on the next forward.
"""
from __future__ import annotations

import numpy as np


class Workspace:
    """Named scratch buffers, grown on demand, dropped by `clear`."""

    def __init__(self):
        self._buffers: dict = {}

    def get(self, xp, slot: str, shape, dtype):
        """A C-contiguous array of ``shape`` and ``dtype`` on ``xp``'s device (contents undefined), a view
        of the buffer for ``slot``; it stays valid until the next `get` of the same slot and dtype."""
        size = int(np.prod(shape))
        key = (xp.__name__, slot, np.dtype(dtype).str)
        buf = self._buffers.get(key)
        if buf is None or buf.size < size:
            # free the small buffer before allocating the big one: drop this frame's reference too, or
            # growing an 8 MB buffer would hold 16 MB at its peak
            buf = None
            self._buffers.pop(key, None)
            buf = xp.empty(size, dtype=dtype)
            self._buffers[key] = buf
        return buf[:size].reshape(shape)

    def clear(self) -> None:
        """Drop every buffer (their memory is freed once no caller holds a view)."""
        self._buffers.clear()

    @property
    def nbytes(self) -> int:
        """Bytes held, over every device and slot."""
        return int(sum(b.nbytes for b in self._buffers.values()))

    def __len__(self) -> int:
        return len(self._buffers)

    def __repr__(self) -> str:
        return f"Workspace({len(self)} buffers, {self.nbytes} bytes)"
