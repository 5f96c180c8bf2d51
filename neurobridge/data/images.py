"""Stimulus images keyed by a string image id: a folder of image files or one HDF5 store.

Image folder (THINGS / Allen layout): every file under ``root`` whose suffix is one of
``.png .jpg .jpeg .bmp .tif .tiff .webp`` (any case) is an image; its id is its POSIX path
relative to ``root``, e.g. ``"aardvark/aardvark_01b.jpg"``. Files and folders whose name starts
with ``.`` are skipped (macOS ``._*`` resource forks often sit next to real images).

HDF5 image store (one file, written by :func:`write_hdf5_image_store`):

- ``images``: ``uint8`` ``[N, H, W, 3]`` (RGB) or ``[N, H, W]`` (grayscale);
- ``image_ids``: ``[N]`` variable-length UTF-8 strings, all distinct; ``image_ids[i]`` names
  ``images[i]``.

Every source returns RGB :class:`PIL.Image.Image` objects; ids are sorted for folders and kept
in file order for stores.
"""

from __future__ import annotations

import hashlib
import os
from collections import Counter
from collections.abc import Sequence
from pathlib import Path

import h5py
import numpy as np
from PIL import Image

from neurobridge.io import atomic_path

__all__ = [
    "IMAGE_EXTENSIONS",
    "IMAGE_FOLDER",
    "HDF5ImageStore",
    "ImageFolderSource",
    "ImagePixels",
    "ImageSource",
    "open_image_source",
    "write_hdf5_image_store",
]

#: Folder of a data root that holds its images (``<root>/images``), where converters and the
#: synthetic generator write them and stimulus-locked tasks look by default.
IMAGE_FOLDER = "images"

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")
_HDF5_SUFFIXES = (".h5", ".hdf5")


class ImageSource:
    """Base class: a fixed, ordered set of image ids, each loadable as an RGB PIL image."""

    def __init__(self, *, path: Path, ids: list[str]):
        self.path = path
        self.ids = ids
        self._index = {image_id: i for i, image_id in enumerate(ids)}

    def __len__(self) -> int:
        return len(self.ids)

    def __contains__(self, image_id: object) -> bool:
        return image_id in self._index

    def __repr__(self) -> str:
        return f"{type(self).__name__}({str(self.path)!r}, n_images={len(self)})"

    def load(self, image_id: str) -> Image.Image:
        """Load one image as RGB; raises ``KeyError`` naming the id and the source if absent."""
        index = self._index.get(image_id)
        if index is None:
            raise KeyError(
                f"image id {image_id!r} not found in {type(self).__name__} {self.path} "
                f"({len(self)} ids, e.g. {self.ids[:3]})."
            )
        return self._read(index)

    def files(self) -> list[Path]:
        """The files the images are read from (what :meth:`fingerprint` covers)."""
        raise NotImplementedError

    def fingerprint(self) -> str:
        """A hex digest of the ids and of every file's path, size and modification time: it
        changes when an image is added, removed, renamed or rewritten in place (a cache keyed
        by it is never stale), without reading the pixels."""
        digest = hashlib.sha256("\n".join(self.ids).encode())
        for file in self.files():
            stat = file.stat()
            digest.update(f"\n{file.resolve()}|{stat.st_size}|{stat.st_mtime_ns}".encode())
        return digest.hexdigest()

    def _read(self, index: int) -> Image.Image:
        raise NotImplementedError


class ImageFolderSource(ImageSource):
    """Images stored as files under ``root`` (ids: sorted POSIX paths relative to ``root``)."""

    def __init__(self, root: str | Path):
        root = Path(root)
        if not root.is_dir():
            raise FileNotFoundError(f"image folder {root} does not exist or is not a folder.")
        ids = []
        for folder, dirnames, filenames in os.walk(root):
            dirnames[:] = [d for d in dirnames if not d.startswith(".")]
            for name in filenames:
                if not name.startswith(".") and name.lower().endswith(IMAGE_EXTENSIONS):
                    ids.append((Path(folder) / name).relative_to(root).as_posix())
        if not ids:
            raise ValueError(
                f"image folder {root} contains no image files (looked for "
                f"{', '.join(IMAGE_EXTENSIONS)} in all subfolders)."
            )
        super().__init__(path=root, ids=sorted(ids))

    def files(self) -> list[Path]:
        return [self.path / image_id for image_id in self.ids]

    def _read(self, index: int) -> Image.Image:
        path = self.path / self.ids[index]
        try:
            with Image.open(path) as image:
                return image.convert("RGB")
        except (OSError, ValueError) as err:  # PIL.UnidentifiedImageError is an OSError
            raise ValueError(
                f"Image {path} could not be read ({type(err).__name__}: {err}): the file is "
                "damaged or not an image. Replace it with a readable copy, or remove it (and the "
                "presentations that show it) from the data."
            ) from None


def _check_layout(dtype: np.dtype, shape: tuple[int, ...], ids: Sequence[str], where: str) -> None:
    """Raise ``ValueError`` (mentioning ``where``) unless ``images`` / ``ids`` form a valid store."""
    if dtype != np.uint8:
        raise ValueError(f"{where}: 'images' must be uint8, got {dtype}.")
    if not (len(shape) == 3 or (len(shape) == 4 and shape[-1] == 3)):
        raise ValueError(
            f"{where}: 'images' must have shape [N, H, W, 3] or [N, H, W], got {list(shape)}."
        )
    if shape[0] == 0:
        raise ValueError(f"{where}: the store holds no images.")
    if len(ids) != shape[0]:
        raise ValueError(
            f"{where}: 'image_ids' has {len(ids)} entries but 'images' has {shape[0]}."
        )
    if len(set(ids)) != len(ids):
        duplicates = sorted(i for i, n in Counter(ids).items() if n > 1)
        raise ValueError(f"{where}: 'image_ids' has duplicates, e.g. {duplicates[:5]}.")


class HDF5ImageStore(ImageSource):
    """Images stored in one HDF5 file (layout in the module docstring).

    Ids are read and checked eagerly; pixels are read on demand. The file handle is opened on
    first :meth:`load` and reopened after ``fork`` / unpickling, so a store can be shared with
    DataLoader workers.
    """

    def __init__(self, path: str | Path):
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"HDF5 image store {path} does not exist.")
        try:
            f = h5py.File(path, "r")
        except OSError as err:
            raise ValueError(f"{path} is not a readable HDF5 file: {err}") from err
        with f:
            for name in ("images", "image_ids"):
                if name not in f or not isinstance(f[name], h5py.Dataset):
                    raise ValueError(
                        f"HDF5 image store {path}: missing dataset '{name}' (expected "
                        "'images' uint8 [N, H, W, 3] and 'image_ids' UTF-8 strings [N])."
                    )
            raw_ids = f["image_ids"]
            if h5py.check_string_dtype(raw_ids.dtype) is None or raw_ids.ndim != 1:
                raise ValueError(
                    f"HDF5 image store {path}: 'image_ids' must be a 1-D string dataset, got "
                    f"{raw_ids.dtype} {list(raw_ids.shape)}."
                )
            ids = raw_ids.asstr()[()].tolist()
            images = f["images"]
            _check_layout(images.dtype, images.shape, ids, f"HDF5 image store {path}")
        super().__init__(path=path, ids=ids)
        self._file: h5py.File | None = None
        self._pid: int | None = None

    def files(self) -> list[Path]:
        return [self.path]

    def _read(self, index: int) -> Image.Image:
        if self._file is None or self._pid != os.getpid():
            self._file = h5py.File(self.path, "r")
            self._pid = os.getpid()
        pixels = self._file["images"][index]
        return Image.fromarray(pixels).convert("RGB")

    def close(self) -> None:
        """Close the file handle (it reopens on the next :meth:`load`)."""
        if self._file is not None and self._pid == os.getpid():
            self._file.close()
        self._file = None

    def __getstate__(self) -> dict:
        state = self.__dict__.copy()
        state["_file"] = None
        state["_pid"] = None
        return state


def write_hdf5_image_store(
    path: str | Path,
    ids: Sequence[str],
    images: np.ndarray | Sequence[Image.Image],
) -> Path:
    """Write an HDF5 image store atomically (readers never see a partial file).

    Args:
        path: output ``.h5`` file; replaced if it exists.
        ids: ``[N]`` distinct image ids.
        images: ``uint8`` array ``[N, H, W, 3]`` or ``[N, H, W]``, or ``N`` PIL images of one
            size (converted to RGB).

    Returns:
        ``path`` as a :class:`~pathlib.Path`.
    """
    path = Path(path)
    ids = [str(image_id) for image_id in ids]
    if not isinstance(images, np.ndarray):
        arrays = [np.asarray(image.convert("RGB")) for image in images]
        sizes = {a.shape for a in arrays}
        if len(sizes) > 1:
            raise ValueError(
                f"write_hdf5_image_store({path}): images must share one size, got {sorted(sizes)}."
            )
        images = np.stack(arrays) if arrays else np.empty((0, 0, 0, 3), dtype=np.uint8)
    _check_layout(images.dtype, images.shape, ids, f"write_hdf5_image_store({path})")
    with atomic_path(path) as tmp, h5py.File(tmp, "w") as f:
        f.create_dataset("images", data=images, chunks=(1, *images.shape[1:]))
        f.create_dataset("image_ids", data=ids, dtype=h5py.string_dtype("utf-8"))
    return path


def open_image_source(path: str | Path) -> ImageSource:
    """Open ``path`` as an :class:`HDF5ImageStore` (``.h5`` / ``.hdf5``) or an image folder."""
    path = Path(path)
    if path.suffix.lower() in _HDF5_SUFFIXES:
        return HDF5ImageStore(path)
    if path.is_dir():
        return ImageFolderSource(path)
    if not path.exists():
        raise FileNotFoundError(f"image source {path} does not exist.")
    raise ValueError(
        f"image source {path} is neither a folder nor an HDF5 store "
        f"(suffix {', '.join(_HDF5_SUFFIXES)})."
    )


class ImagePixels:
    """``image_id -> float32 [3, size, size]`` in ``[0, 1]``: the shown image, resized (bicubic)
    to the diffusion model's resolution. Picklable, so it runs in DataLoader workers.

    Args:
        source: where the images are.
        size: output height and width in pixels.
    """

    def __init__(self, source: ImageSource, size: int):
        if size < 1:
            raise ValueError(f"ImagePixels size must be >= 1, got {size}.")
        self.source = source
        self.size = int(size)

    def __call__(self, image_id: str) -> np.ndarray:
        image = self.source.load(image_id).resize((self.size, self.size), Image.BICUBIC)
        return np.ascontiguousarray(np.asarray(image, dtype=np.float32).transpose(2, 0, 1) / 255.0)
