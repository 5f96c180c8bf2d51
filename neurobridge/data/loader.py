"""The DataLoader of a NeuroBridge run: packed batches, and a position that resumes exactly.

Every window's content and mask depend only on its index (:class:`~neurobridge.data.WindowIndex`),
and the samplers' order only on ``(seed, epoch)``; so the state of a training loader is the
number of batches of the current epoch it has handed out. Lightning saves :meth:`BatchLoader.state_dict`
with every checkpoint and restores it before training resumes; the loader then skips the
indices of those batches (without loading their windows) and the run continues with the
batches an uninterrupted run would have seen next.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch

from neurobridge.data.collate import PackedBatch, collate_packed

__all__ = ["BatchLoader"]


class _SkippingSampler(torch.utils.data.Sampler):
    """A sampler that leaves out the first ``skip`` indices of epoch ``epoch`` (:meth:`skip_next`),
    once, if its next epoch is that one."""

    def __init__(self, sampler):
        self.sampler = sampler
        self.skip, self.skip_epoch = 0, None

    def skip_next(self, count: int, epoch: int) -> None:
        self.skip, self.skip_epoch = count, epoch

    @property
    def pending(self) -> int:
        """The indices the next iteration leaves out: ``skip`` if it is of epoch ``epoch``."""
        same_epoch = self.skip_epoch in (None, getattr(self.sampler, "epoch", 0))
        return self.skip if same_epoch else 0

    def set_epoch(self, epoch: int) -> None:
        if hasattr(self.sampler, "set_epoch"):
            self.sampler.set_epoch(epoch)

    def __len__(self) -> int:
        return len(self.sampler)

    def __iter__(self) -> Iterator:
        skip = self.pending
        self.skip, self.skip_epoch = 0, None
        for i, index in enumerate(self.sampler):
            if i >= skip:
                yield index


class BatchLoader(torch.utils.data.DataLoader):
    """A DataLoader with :func:`~neurobridge.data.collate.collate_packed` batches, unpacked as
    they arrive (and pinned once per batch, as one buffer, with ``pin_memory``), that resumes
    where a checkpoint left it (:meth:`state_dict`, :meth:`load_state_dict`).

    Takes the DataLoader's arguments; ``sampler`` is required (the run's samplers fix every
    window).
    """

    def __init__(self, dataset, *, sampler, **kwargs):
        kwargs.setdefault("collate_fn", collate_packed)
        # the workers' base seed comes from the loader's own generator, not torch's global one:
        # creating an iterator (a new epoch, a validation) then leaves the model's random
        # stream (dropout) alone, so a resumed run draws what an uninterrupted one does
        kwargs.setdefault("generator", torch.Generator().manual_seed(0))
        super().__init__(dataset, sampler=_SkippingSampler(sampler), **kwargs)
        self._served = 0  # batches of the current epoch handed out

    def __iter__(self):
        self._served = self.sampler.pending // max(1, self.batch_size or 1)
        for batch in super().__iter__():
            self._served += 1
            yield batch.unpack() if isinstance(batch, PackedBatch) else batch

    def state_dict(self) -> dict:
        """``{"epoch", "batches"}``: the sampler's epoch and the batches of it handed out."""
        return {"epoch": int(getattr(self.sampler.sampler, "epoch", 0)), "batches": self._served}

    def load_state_dict(self, state: dict) -> None:
        """Skip the batches ``state`` says were handed out when the next iteration is of that
        epoch (the trainer sets the sampler's epoch first; a checkpoint from the end of an
        epoch resumes at the start of the next one, with nothing to skip)."""
        self.sampler.skip_next(int(state["batches"]) * int(self.batch_size or 1),
                               int(state["epoch"]))
