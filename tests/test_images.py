"""Image sources, the CLIP embedding cache and scripts/embed_images.py."""

from __future__ import annotations

import importlib.util
import os
import pickle
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
from PIL import Image

from neurobridge.alignment import (
    EmbeddingCache,
    build_clip_image_encoder,
    embed_image_source,
    write_embedding_cache,
)
from neurobridge.data.images import (
    HDF5ImageStore,
    ImageFolderSource,
    open_image_source,
    write_hdf5_image_store,
)

REPO = Path(__file__).resolve().parents[1]


def _rgb(seed: int, size: tuple[int, int] = (12, 10)) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (*size, 3), dtype=np.uint8)


def _tiny_encoder():
    torch.manual_seed(0)
    with pytest.warns(UserWarning, match="RANDOM"):
        return build_clip_image_encoder(model_name="neurobridge-tiny")


@pytest.fixture
def image_folder(tmp_path) -> Path:
    """THINGS-like layout with mixed formats, modes and sizes, plus files to be skipped."""
    root = tmp_path / "things"
    (root / "aardvark").mkdir(parents=True)
    (root / "zebra").mkdir()
    (root / ".hidden").mkdir()
    Image.fromarray(_rgb(0)).save(root / "aardvark" / "aardvark_01b.jpg")
    Image.fromarray(_rgb(1)).save(root / "aardvark" / "aardvark_02s.PNG")
    Image.fromarray(_rgb(2, (7, 9))[..., 0]).save(root / "zebra" / "zebra_01.png")  # grayscale
    Image.fromarray(_rgb(3)).convert("RGBA").save(root / "top.webp")
    Image.fromarray(_rgb(4)).save(root / ".hidden" / "skip.png")
    Image.fromarray(_rgb(5)).save(root / "zebra" / "._zebra_01.png")
    (root / "notes.txt").write_text("not an image")
    return root


def test_folder_source_ids_and_load(image_folder):
    source = ImageFolderSource(image_folder)
    assert source.ids == [
        "aardvark/aardvark_01b.jpg",
        "aardvark/aardvark_02s.PNG",
        "top.webp",
        "zebra/zebra_01.png",
    ]
    assert len(source) == 4 and "top.webp" in source and "notes.txt" not in source
    gray = source.load("zebra/zebra_01.png")
    assert gray.mode == "RGB" and gray.size == (9, 7)
    assert np.array_equal(np.asarray(source.load("aardvark/aardvark_02s.PNG")), _rgb(1))
    assert source.load("top.webp").mode == "RGB"
    with pytest.raises(KeyError, match=r"'aardvark/missing.jpg'.*things.*4 ids"):
        source.load("aardvark/missing.jpg")


def test_folder_source_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="nowhere"):
        ImageFolderSource(tmp_path / "nowhere")
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "readme.txt").write_text("x")
    with pytest.raises(ValueError, match=r"empty.*no image files"):
        ImageFolderSource(tmp_path / "empty")


def test_hdf5_store_roundtrip(tmp_path):
    images = np.stack([_rgb(i) for i in range(3)])
    ids = ["b/1.png", "a/2.png", "ü/3.png"]
    path = write_hdf5_image_store(tmp_path / "store.h5", ids, images)
    assert sorted(os.listdir(tmp_path)) == ["store.h5"]  # no temporary file left behind
    store = HDF5ImageStore(path)
    assert store.ids == ids and len(store) == 3 and "ü/3.png" in store
    for i, image_id in enumerate(ids):
        assert np.array_equal(np.asarray(store.load(image_id)), images[i])
    clone = pickle.loads(pickle.dumps(store))
    assert np.array_equal(np.asarray(clone.load("a/2.png")), images[1])
    store.close()
    with pytest.raises(KeyError, match=r"'nope'.*store\.h5.*3 ids"):
        store.load("nope")


def test_hdf5_store_grayscale_and_pil_input(tmp_path):
    gray = np.stack([_rgb(i)[..., 0] for i in range(2)])
    store = HDF5ImageStore(write_hdf5_image_store(tmp_path / "gray.h5", ["x", "y"], gray))
    loaded = np.asarray(store.load("y"))
    assert loaded.shape == (12, 10, 3) and np.array_equal(loaded[..., 2], gray[1])

    pil = [Image.fromarray(_rgb(i)) for i in range(2)]
    store = HDF5ImageStore(write_hdf5_image_store(tmp_path / "pil.h5", ["p", "q"], pil))
    assert np.array_equal(np.asarray(store.load("q")), _rgb(1))
    with pytest.raises(ValueError, match="one size"):
        write_hdf5_image_store(tmp_path / "bad.h5", ["p", "q"], [pil[0], pil[1].resize((4, 4))])


def test_hdf5_store_write_errors(tmp_path):
    images = np.stack([_rgb(i) for i in range(2)])
    with pytest.raises(ValueError, match="duplicates"):
        write_hdf5_image_store(tmp_path / "s.h5", ["a", "a"], images)
    with pytest.raises(ValueError, match="uint8"):
        write_hdf5_image_store(tmp_path / "s.h5", ["a", "b"], images.astype(np.float32))
    with pytest.raises(ValueError, match=r"\[N, H, W, 3\]"):
        write_hdf5_image_store(tmp_path / "s.h5", ["a", "b"], images[..., :2])
    with pytest.raises(ValueError, match="1 entries"):
        write_hdf5_image_store(tmp_path / "s.h5", ["a"], images)
    assert not (tmp_path / "s.h5").exists()


def _raw_store(path: Path, **datasets) -> Path:
    with h5py.File(path, "w") as f:
        for name, (data, dtype) in datasets.items():
            f.create_dataset(name, data=data, dtype=dtype)
    return path


def test_hdf5_store_read_errors(tmp_path):
    pixels = (np.stack([_rgb(0), _rgb(1)]), None)
    ids = (["a", "b"], h5py.string_dtype("utf-8"))
    cases = {
        "missing dataset 'image_ids'": _raw_store(tmp_path / "1.h5", images=pixels),
        "missing dataset 'images'": _raw_store(tmp_path / "2.h5", image_ids=ids),
        "uint8": _raw_store(
            tmp_path / "3.h5", images=(pixels[0].astype(np.int16), None), image_ids=ids
        ),
        r"\[N, H, W, 3\]": _raw_store(
            tmp_path / "4.h5", images=(pixels[0][..., :2], None), image_ids=ids
        ),
        "duplicates": _raw_store(tmp_path / "5.h5", images=pixels, image_ids=(["a", "a"], ids[1])),
        "string dataset": _raw_store(tmp_path / "6.h5", images=pixels, image_ids=([1, 2], None)),
    }
    for message, path in cases.items():
        with pytest.raises(ValueError, match=rf"{path.name}.*{message}|{message}.*{path.name}"):
            HDF5ImageStore(path)
    (tmp_path / "junk.h5").write_bytes(b"not hdf5")
    with pytest.raises(ValueError, match="junk.h5"):
        HDF5ImageStore(tmp_path / "junk.h5")
    with pytest.raises(FileNotFoundError, match="absent.h5"):
        HDF5ImageStore(tmp_path / "absent.h5")


def test_open_image_source(tmp_path, image_folder):
    assert isinstance(open_image_source(image_folder), ImageFolderSource)
    path = write_hdf5_image_store(tmp_path / "s.hdf5", ["a"], _rgb(0)[None])
    assert isinstance(open_image_source(path), HDF5ImageStore)
    with pytest.raises(FileNotFoundError):
        open_image_source(tmp_path / "absent")
    (tmp_path / "file.npy").write_bytes(b"")
    with pytest.raises(ValueError, match="neither a folder nor an HDF5 store"):
        open_image_source(tmp_path / "file.npy")


def test_embedding_cache_roundtrip(tmp_path):
    ids = ["c", "a", "b"]
    emb = torch.randn(3, 4)
    path = write_embedding_cache(tmp_path / "e.h5", ids, emb, model_name="m", pretrained=None)
    cache = EmbeddingCache(path)
    assert cache.ids == ids and len(cache) == 3 and "a" in cache
    assert (cache.embed_dim, cache.model_name, cache.pretrained) == (4, "m", "random")
    assert cache.embeddings.dtype == torch.float32 and torch.equal(cache.embeddings, emb)
    assert cache.index_of(["b", "c", "b"]).tolist() == [2, 0, 2]
    assert torch.equal(cache.lookup(["b", "c"]), emb[[2, 0]])
    with pytest.raises(KeyError, match=r"7 image id.*e\.h5.*'x0'.*'x4'.*embed_images\.py") as info:
        cache.lookup(["a"] + [f"x{i}" for i in range(7)])
    assert "'x5'" not in str(info.value)

    write_embedding_cache(path, ["z"], np.ones((1, 2)), model_name="m", pretrained="tag")
    assert EmbeddingCache(path).pretrained == "tag"


def test_embedding_cache_errors(tmp_path):
    path = tmp_path / "e.h5"
    kwargs = dict(model_name="m", pretrained=None)
    bad = torch.zeros(2, 3)
    bad[1, 0] = float("nan")
    with pytest.raises(ValueError, match=r"NaN or Inf.*'b'"):
        write_embedding_cache(path, ["a", "b"], bad, **kwargs)
    with pytest.raises(ValueError, match="duplicates"):
        write_embedding_cache(path, ["a", "a"], torch.zeros(2, 3), **kwargs)
    with pytest.raises(ValueError, match="shape"):
        write_embedding_cache(path, ["a", "b", "c"], torch.zeros(2, 3), **kwargs)
    assert not path.exists()
    with pytest.raises(FileNotFoundError, match="embed_images.py"):
        EmbeddingCache(path)
    with h5py.File(path, "w") as f:
        f.create_dataset("image_ids", data=["a"], dtype=h5py.string_dtype())
    with pytest.raises(ValueError, match=r"e\.h5.*'embeddings'"):
        EmbeddingCache(path)


def test_embed_image_source(image_folder):
    encoder = _tiny_encoder()
    source = ImageFolderSource(image_folder)
    ids, emb = embed_image_source(encoder, source, batch_size=3)
    assert ids == source.ids and emb.shape == (4, encoder.embed_dim)
    torch.testing.assert_close(emb.norm(dim=-1), torch.ones(4))
    _, emb_one_batch = embed_image_source(encoder, source, batch_size=64)
    torch.testing.assert_close(emb, emb_one_batch, atol=1e-5, rtol=1e-5)


def test_embed_images_script(tmp_path, capsys):
    images = tmp_path / "images"
    images.mkdir()
    for i in range(5):
        Image.fromarray(_rgb(i, (16, 16))).save(images / f"img_{i}.png")
    out = tmp_path / "cache" / "clip.h5"
    env = dict(os.environ, OMP_NUM_THREADS="1")
    cmd = [sys.executable, str(REPO / "scripts" / "embed_images.py"), "--images", str(images)]
    result = subprocess.run(
        [*cmd, "--out", str(out), "--batch-size", "2"],
        capture_output=True,
        text=True,
        env=env,
        cwd=REPO,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    assert "embedded 5 images" in result.stdout and str(out) in result.stdout
    assert "RANDOM weights" in result.stderr
    cache = EmbeddingCache(out)
    assert cache.ids == [f"img_{i}.png" for i in range(5)]
    assert (cache.model_name, cache.pretrained, cache.embed_dim) == (
        "neurobridge-tiny",
        "random",
        32,
    )

    spec = importlib.util.spec_from_file_location(
        "embed_images", REPO / "scripts" / "embed_images.py"
    )
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    assert script.main(["--images", str(tmp_path / "absent"), "--out", str(out)]) == 1
    assert "absent" in capsys.readouterr().err


def test_a_damaged_image_file_is_named_with_the_fix(tmp_path):
    from neurobridge.data import ImageFolderSource

    Image.new("RGB", (8, 8)).save(tmp_path / "good.png")
    (tmp_path / "bad.png").write_bytes(b"not a png at all")
    source = ImageFolderSource(tmp_path)
    assert source.load("good.png").size == (8, 8)
    with pytest.raises(ValueError, match=r"bad.png could not be read .*damaged or not an image"):
        source.load("bad.png")


def test_a_cache_that_cannot_be_written_names_the_variable(tmp_path, monkeypatch):
    from neurobridge.data import cache_folder

    blocker = tmp_path / "a_file"
    blocker.write_text("")
    monkeypatch.setenv("NEUROBRIDGE_CACHE", str(blocker))
    with pytest.raises(PermissionError, match=rf"NEUROBRIDGE_CACHE={blocker}.*writable folder"):
        cache_folder("clip")
    monkeypatch.setenv("NEUROBRIDGE_CACHE", str(tmp_path / "ok"))
    assert cache_folder("clip").is_dir()
