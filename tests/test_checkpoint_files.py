"""Checkpoint files: content hashes checked on load, the previous checkpoint kept, a failed
write leaving the last good one loadable."""

import pytest
import torch

from neurobridge.training import checkpoint_files
from neurobridge.training.checkpoint import read_checkpoint_meta


def _ckpt(step):
    return {"global_step": step, "state_dict": {"w": torch.full((64,), float(step))},
            "neurobridge": {"kind": "masked", "model": {}}}


def test_each_save_keeps_the_previous_checkpoint_and_both_verify(tmp_path):
    last = tmp_path / "last.ckpt"
    checkpoint_files.save(_ckpt(1), last)
    assert not checkpoint_files.previous_path(last).exists()
    checkpoint_files.save(_ckpt(2), last)
    prev = checkpoint_files.previous_path(last)
    assert prev.name == "last.prev.ckpt"
    assert torch.load(last, weights_only=True)["global_step"] == 2
    assert torch.load(prev, weights_only=True)["global_step"] == 1
    checkpoint_files.verify(last)
    checkpoint_files.verify(prev)
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "last.ckpt", "last.ckpt.sha256", "last.prev.ckpt", "last.prev.ckpt.sha256"]


@pytest.mark.parametrize("damage", ["truncate", "flip"])
def test_a_damaged_checkpoint_is_refused_naming_the_previous_one(tmp_path, damage):
    last = tmp_path / "last.ckpt"
    checkpoint_files.save(_ckpt(1), last)
    checkpoint_files.save(_ckpt(2), last)
    data = bytearray(last.read_bytes())
    if damage == "truncate":
        data = data[: len(data) // 2]
    else:
        data[len(data) // 2] ^= 0xFF
    last.write_bytes(bytes(data))
    prev = checkpoint_files.previous_path(last)
    message = rf"last.ckpt is damaged: .*The previous checkpoint {prev} is intact: .*resume_from"
    with pytest.raises(checkpoint_files.DamagedCheckpointError, match=message):
        checkpoint_files.verify(last)
    with pytest.raises(checkpoint_files.DamagedCheckpointError, match=message):
        read_checkpoint_meta(last)  # what resume_from / init_from read at start-up


def test_a_failed_write_leaves_the_last_checkpoint_loadable(tmp_path, monkeypatch):
    last = tmp_path / "last.ckpt"
    checkpoint_files.save(_ckpt(1), last)
    before = last.read_bytes()

    def full_disk(obj, f, *args, **kwargs):
        with open(f, "wb") as out:
            out.write(b"\x80\x02partial")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(torch, "save", full_disk)
    with pytest.raises(OSError, match="No space left"):
        checkpoint_files.save(_ckpt(2), last)
    monkeypatch.undo()
    assert last.read_bytes() == before
    checkpoint_files.verify(last)
    assert torch.load(last, weights_only=True)["global_step"] == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.ckpt", "last.ckpt.sha256"]
