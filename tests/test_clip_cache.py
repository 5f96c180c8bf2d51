"""The CLIP embedding cache is keyed by the images' content: an image replaced in place is
embedded again, an untouched folder is reused (and the reuse is logged)."""

import logging
import os
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from PIL import Image

from neurobridge.alignment.clip import TINY_MODEL_NAME
from neurobridge.data.images import ImageFolderSource
from neurobridge.tasks.align import image_embeddings


def _write(path, seed):
    rng = np.random.default_rng(seed)
    Image.fromarray(rng.integers(0, 255, (32, 32, 3), dtype=np.uint8)).save(path)


@pytest.fixture
def folder(tmp_path):
    root = tmp_path / "images"
    root.mkdir()
    for i in range(3):
        _write(root / f"im{i}.png", i)
    return root


def test_fingerprint_changes_when_an_image_is_rewritten_in_place(folder):
    before = ImageFolderSource(folder).fingerprint()
    assert ImageFolderSource(folder).fingerprint() == before
    _write(folder / "im1.png", 99)
    stat = (folder / "im1.png").stat()
    os.utime(folder / "im1.png", ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000))
    assert ImageFolderSource(folder).fingerprint() != before


@pytest.mark.filterwarnings("ignore:CLIP model")
def test_replaced_images_are_embedded_again(folder, caplog):
    dm = SimpleNamespace(images=str(folder), image_ids=["im0.png", "im1.png", "im2.png"])
    cfg = {"model_name": TINY_MODEL_NAME, "pretrained": None}
    first = image_embeddings(dm, cfg)
    with caplog.at_level(logging.INFO, logger="neurobridge.tasks.align"):
        again = image_embeddings(dm, cfg)
    assert torch.equal(first, again)
    assert "Reusing the CLIP embeddings of the 3 images" in caplog.text
    _write(folder / "im0.png", 7)
    stat = (folder / "im0.png").stat()
    os.utime(folder / "im0.png", ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000))
    replaced = image_embeddings(dm, cfg)
    assert not torch.allclose(replaced[0], first[0])
    torch.testing.assert_close(replaced[1:], first[1:])
