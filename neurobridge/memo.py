"""Results remembered per array object (per recording, for the arrays a reader shares)."""

from __future__ import annotations

__all__ = ["MemoByIdentity"]


class MemoByIdentity:
    """``fn(array, *args)``, remembered for the array object itself while it is remembered.

    The windows of one :class:`~neurobridge.data.windows.RecordingReader` share its ``units``
    arrays, so what depends only on them (vocabulary indices, region labels) is computed once
    per recording. The array is kept with its result, so its ``id`` cannot be reused by another
    array meanwhile; at most ``size`` arrays are remembered (windows cut by temporaldata bring
    new arrays each time). ``fn`` must be picklable (a module-level function or a bound
    method) for DataLoader workers that are spawned rather than forked.
    """

    def __init__(self, fn, size: int = 64):
        self.fn = fn
        self.size = size
        self._memo: dict[int, tuple[object, object]] = {}

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_memo": {}}

    def __call__(self, array, *args):
        hit = self._memo.get(id(array))
        if hit is not None and hit[0] is array:
            return hit[1]
        out = self.fn(array, *args)
        if len(self._memo) >= self.size:
            self._memo.clear()
        self._memo[id(array)] = (array, out)
        return out
