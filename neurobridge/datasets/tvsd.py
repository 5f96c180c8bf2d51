"""TVSD (THINGS Ventral Stream Spiking Dataset) to NeuroBridge recordings.

Published layout of one monkey folder (``monkeyN/`` or ``monkeyF/``). MATLAB v7.3 files are
HDF5, and h5py reads their axes in reverse order, so the shapes below are h5py's::

    THINGS_MUA_trials.mat                   (v7.3)
        ALLMUA   [300, n_trials, 1024]  MUA, time x trial x channel (recording order)
        tb       [300, 1]               ms from stimulus onset, -100 ... 199
        ALLMAT   [6, n_trials]          rows trial, train_idx, test_idx, rep, count, day
                                        (1-based; exactly one of train_idx / test_idx > 0)
    THINGS_normMUA.mat                      (v7.3, physical order; only for channel selection)
        SNR_max  [1024, 1]
        reliab   [n_pairs, 1024]
    _logs/1024chns_mapping_20220105.mat     (pre-v7.3, scipy.io.loadmat)
        mapping  [1, 1024]  1-based: ALLMUA[..., mapping - 1] is in physical order
    _logs/things_imgs.mat                   (v7.3)
        train_imgs.things_path, test_imgs.things_path   references to char arrays;
                                        row k <-> train_idx (test_idx) == k + 1

Physical order is 16 Utah arrays x 64 channels; see :data:`REGIONS` for the areas.

:func:`convert_tvsd` writes ``<out_dir>/tvsd_monkey{N|F}[_day{d}].h5`` (temporaldata HDF5).
Each trial becomes a segment of ``n_time`` ms (0.3 s, -100 ... +200 ms around onset); the
segments are placed back to back in trial order, so the trial at position ``k`` has its onset
at ``k * 0.3 + 0.1`` s. ``C`` kept channels, ``P`` trials, ``B = 0.3 / bin_size`` bins per
trial::

    session.id                 str, the recording id, e.g. "tvsd_monkeyN" or "tvsd_monkeyN_day3"
    subject.id                 str, "monkeyN" / "monkeyF"
    brainset.id                str, "tvsd"
    units.id                   str [C], "tvsd_N/ch0001" (1-based physical channel number;
                               "tvsd_N_day3/ch0001" in per-day files)
    units.brain_region         str [C], "V1" / "V4" / "IT"
    units.array                int64 [C], Utah array, physical index // 64
    mua.values                 float32 [P * B, C], bin means of ALLMUA, 1 / bin_size Hz;
                               row k * B + j is bin j of the trial at position k
    domain                     Interval [0, P * 0.3)
    stimulus_presentations     Interval [P]: start (onset), end (onset + 0.2: the 200 ms
                               presentation), image_id (THINGS path "aardvark/aardvark_01b.jpg"),
                               trial, train_idx, test_idx, rep, day (int64, from ALLMAT)
    train_domain, valid_domain, test_domain
                               Intervals of whole trial segments; an image's trials all
                               fall in one split
"""

from __future__ import annotations

import math
from collections import Counter
from pathlib import Path

import h5py
import numpy as np
import scipy.io
from temporaldata import Data, Interval, RegularTimeSeries

from neurobridge.data.index import SPLITS
from neurobridge.data.stimuli import presentations_by_split
from neurobridge.data.writer import write_recording

__all__ = [
    "ALLMAT_ROWS",
    "IMAGES_FILE",
    "MAPPING_FILE",
    "MUA_FILE",
    "NORM_FILE",
    "N_CHANNELS",
    "PRESENTATION_DURATION",
    "REGIONS",
    "channel_regions",
    "convert_tvsd",
    "read_channel_mapping",
    "read_image_paths",
    "read_mua_trials",
    "read_reliability",
    "read_snr_max",
    "summarize_tvsd",
]

MUA_FILE = "THINGS_MUA_trials.mat"
NORM_FILE = "THINGS_normMUA.mat"
MAPPING_FILE = "_logs/1024chns_mapping_20220105.mat"
IMAGES_FILE = "_logs/things_imgs.mat"
N_CHANNELS = 1024
CHANNELS_PER_ARRAY = 64
#: Seconds each image is shown (TVSD: 200 ms on, 200 ms off).
PRESENTATION_DURATION = 0.2
#: Rows of ``ALLMAT``.
ALLMAT_ROWS = ("trial", "train_idx", "test_idx", "rep", "count", "day")
#: Areas of the physical channels, as consecutive ``(region, n_channels)`` blocks.
REGIONS = {
    "N": (("V1", 512), ("V4", 256), ("IT", 256)),
    "F": (("V1", 512), ("IT", 320), ("V4", 192)),
}
_LAYOUT_HINT = (
    "Keep the monkey folder as published: THINGS_MUA_trials.mat, THINGS_normMUA.mat and "
    "_logs/ (1024chns_mapping_20220105.mat, things_imgs.mat)."
)


# --------------------------------------------------------------------------------------
# readers


def _require_file(path: Path) -> None:
    if not path.is_file():
        raise FileNotFoundError(f"TVSD file {path} not found. {_LAYOUT_HINT}")


def _open_v73(path: Path) -> h5py.File:
    _require_file(path)
    try:
        return h5py.File(path, "r")
    except OSError as err:
        raise ValueError(
            f"{path} is not a MATLAB v7.3 (HDF5) file ({err}). Use the published file, or "
            "re-save it in MATLAB with save(..., '-v7.3')."
        ) from None


def _variable(f: h5py.File, path: Path, name: str, content: str) -> h5py.Dataset:
    node = f.get(name)
    if not isinstance(node, h5py.Dataset):
        raise ValueError(
            f"{path}: no variable '{name}' ({content}). The file is incomplete or not the "
            f"published one; {_LAYOUT_HINT}"
        )
    return node


def _integers(values: np.ndarray, path: Path, name: str) -> np.ndarray:
    if not (np.isfinite(values).all() and np.array_equal(values, np.round(values))):
        raise ValueError(f"{path}: variable '{name}' must hold whole numbers (MATLAB indices).")
    return values.astype(np.int64)


def read_channel_mapping(path: str | Path) -> np.ndarray:
    """Recording-order index of each physical channel, int64 ``[1024]`` (0-based).

    Reads ``mapping`` (``[1, 1024]``, 1-based) of the pre-v7.3 mapping file, so that
    ``ALLMUA[..., read_channel_mapping(path)]`` is in physical order.
    """
    path = Path(path)
    _require_file(path)
    try:
        mat = scipy.io.loadmat(path, variable_names=["mapping"])
    except (NotImplementedError, ValueError, TypeError, OSError) as err:
        raise ValueError(
            f"{path} is not a readable pre-v7.3 MATLAB file (scipy.io.loadmat: {err}). Use the "
            "mapping file shipped with TVSD."
        ) from None
    if "mapping" not in mat:
        raise ValueError(
            f"{path}: no variable 'mapping' (1 x 1024, 1-based recording-order channel of each "
            f"physical channel). {_LAYOUT_HINT}"
        )
    mapping = np.asarray(mat["mapping"], dtype=np.float64).ravel()
    expected = np.arange(1, N_CHANNELS + 1)
    ok = mapping.size == N_CHANNELS and np.array_equal(np.sort(mapping), expected)
    if not ok:
        detail = f"{mapping.size} values"
        if mapping.size:
            n_dup = mapping.size - np.unique(mapping).size
            detail += f" in [{mapping.min():g}, {mapping.max():g}], {n_dup} duplicates"
        if mapping.size == N_CHANNELS and np.array_equal(np.sort(mapping), expected - 1):
            detail += "; it looks 0-based"
        raise ValueError(
            f"{path}: variable 'mapping' is not a permutation of 1..{N_CHANNELS} (MATLAB "
            f"1-based channel indices): {detail}. Use the mapping file shipped with TVSD, "
            "unmodified."
        )
    return mapping.astype(np.int64) - 1


def _image_id(node: h5py.Dataset, path: Path, where: str) -> str:
    codes = np.asarray(node[()])
    if node.attrs.get("MATLAB_empty", 0) or codes.dtype != np.uint16 or codes.size == 0:
        raise ValueError(
            f"{path}: {where} is not a non-empty MATLAB char array (uint16 codes), got "
            f"{codes.dtype} {list(codes.shape)}. Use the published things_imgs.mat."
        )
    text = codes.astype("<u2").ravel().tobytes().decode("utf-16-le")
    parts = [p for p in text.replace("\\", "/").split("/") if p]
    return "/".join(parts[-2:])


def read_image_paths(path: str | Path) -> dict[str, list[str]]:
    """THINGS image ids of ``train_imgs`` and ``test_imgs``: ``{"train": [...], "test": [...]}``.

    Entry ``k`` belongs to ``train_idx`` (``test_idx``) ``== k + 1``. An id is the last two
    components of ``things_path`` with ``/`` separators (``"aardvark/aardvark_01b.jpg"``), the
    path of the image relative to the THINGS image folder.
    """
    path = Path(path)
    out = {}
    with _open_v73(path) as f:
        for split in ("train", "test"):
            name = f"{split}_imgs"
            refs = f.get(f"{name}/things_path")
            if not isinstance(refs, h5py.Dataset) or refs.dtype != h5py.ref_dtype:
                raise ValueError(
                    f"{path}: no variable '{name}.things_path' (struct array {name} with field "
                    f"things_path, one char array per image). {_LAYOUT_HINT}"
                )
            out[split] = [
                _image_id(f[ref], path, f"{name}.things_path row {k + 1}")
                for k, ref in enumerate(refs[()].ravel())
            ]
    return out


def _check_allmua(shape: tuple[int, ...], path: Path, n_time: int) -> None:
    if len(shape) == 3 and shape[0] == n_time and shape[2] == N_CHANNELS:
        return
    looks_transposed = len(shape) == 3 and sorted((shape[0], shape[2])) == sorted(
        (n_time, N_CHANNELS)
    )
    hint = (
        "It looks transposed: h5py must read time x trial x channel, i.e. MATLAB's "
        "channel x trial x time array saved with -v7.3."
        if looks_transposed
        else "Use the published THINGS_MUA_trials.mat."
    )
    raise ValueError(
        f"{path}: variable 'ALLMUA' has h5py shape {list(shape)}, expected [{n_time} time "
        f"samples (the length of 'tb'), n_trials, {N_CHANNELS} channels]. {hint}"
    )


def _trial_list(trial: np.ndarray, bad: np.ndarray) -> str:
    return f"{int(bad.sum())} trials, e.g. trial {trial[bad][:5].tolist()}"


def read_mua_trials(
    path: str | Path, *, n_train_images: int, n_test_images: int
) -> dict[str, np.ndarray]:
    """Check ``THINGS_MUA_trials.mat`` and read its trial table, without reading ``ALLMUA``.

    Args:
        path: the ``THINGS_MUA_trials.mat`` file.
        n_train_images: rows of ``train_imgs``, the largest valid ``train_idx``.
        n_test_images: rows of ``test_imgs``, the largest valid ``test_idx``.

    Returns:
        ``"tb"``: float64 ``[n_time]`` ms from onset; one int64 ``[n_trials]`` array per row
        of ``ALLMAT`` (:data:`ALLMAT_ROWS`), in ``ALLMUA``'s trial order.
    """
    path = Path(path)
    with _open_v73(path) as f:
        tb = _variable(f, path, "tb", "time base in ms, [300, 1]")[()]
        tb = np.asarray(tb, np.float64).ravel()
        step = np.diff(tb)
        regular = tb.size >= 2 and np.isfinite(tb).all() and step[0] > 0
        if not (regular and np.allclose(step, step[0])):
            raise ValueError(
                f"{path}: variable 'tb' must be evenly spaced increasing times in ms "
                f"(-100 ... 199), got {tb.size} values. Use the published file."
            )
        allmua = _variable(f, path, "ALLMUA", f"MUA, [{tb.size}, n_trials, {N_CHANNELS}]")
        _check_allmua(allmua.shape, path, tb.size)
        n_trials = allmua.shape[1]
        dset = _variable(f, path, "ALLMAT", f"trial table, [6, {n_trials}]")
        if dset.shape != (len(ALLMAT_ROWS), n_trials):
            transposed = dset.shape == (n_trials, len(ALLMAT_ROWS))
            raise ValueError(
                f"{path}: variable 'ALLMAT' has h5py shape {list(dset.shape)}, expected "
                f"[6, {n_trials}] (rows {', '.join(ALLMAT_ROWS)}; one column per ALLMUA "
                "trial). "
                + ("It looks transposed: save MATLAB's n_trials x 6 array with -v7.3."
                   if transposed else "Use the published THINGS_MUA_trials.mat.")
            )
        allmat = _integers(np.asarray(dset[()], np.float64), path, "ALLMAT")
    out = {"tb": tb, **dict(zip(ALLMAT_ROWS, allmat))}
    trial, train, test = out["trial"], out["train_idx"], out["test_idx"]
    where = f"{path}: variable 'ALLMAT'"
    if trial.min(initial=1) < 1 or np.unique(trial).size != trial.size:
        raise ValueError(f"{where} row 1 (trial) must hold distinct trial numbers >= 1.")
    bad = (train < 0) | (test < 0) | ((train > 0) == (test > 0))
    if bad.any():
        raise ValueError(
            f"{where} rows 2-3 (train_idx, test_idx): exactly one must be > 0 in every trial "
            f"(each trial shows one train or one test image); {_trial_list(trial, bad)} "
            "break this. Use the published file, unmodified."
        )
    for name, n_images in (("train_idx", n_train_images), ("test_idx", n_test_images)):
        bad = out[name] > n_images
        if bad.any():
            raise ValueError(
                f"{where} row {ALLMAT_ROWS.index(name) + 1} ({name}) goes up to "
                f"{int(out[name].max())} but {IMAGES_FILE} has {n_images} "
                f"{name.split('_')[0]}_imgs rows ({_trial_list(trial, bad)}). Use the "
                "things_imgs.mat of the same release."
            )
    return out


def _quality(path: Path, name: str) -> np.ndarray:
    with _open_v73(path) as f:
        return np.asarray(_variable(f, path, name, "per-channel quality")[()], np.float64)


def _bad_quality(path: Path, name: str, shape: tuple[int, ...], expected: str) -> ValueError:
    transposed = len(shape) == 2 and shape[0] == N_CHANNELS
    return ValueError(
        f"{path}: variable '{name}' has h5py shape {list(shape)}, expected {expected} (physical "
        "channel order). " + ("It looks transposed." if transposed else "Use the published file.")
    )


def read_snr_max(path: str | Path) -> np.ndarray:
    """``SNR_max`` of ``THINGS_normMUA.mat``, float64 ``[1024]`` in physical order."""
    path = Path(path)
    values = _quality(path, "SNR_max")
    if values.ndim > 2 or values.size != N_CHANNELS:
        raise _bad_quality(path, "SNR_max", values.shape, f"[{N_CHANNELS}, 1]")
    return values.ravel()


def read_reliability(path: str | Path) -> np.ndarray:
    """Mean over pairs (NaNs ignored) of ``reliab`` of ``THINGS_normMUA.mat``, float64
    ``[1024]`` in physical order; channels with no finite value get ``-inf``."""
    path = Path(path)
    values = _quality(path, "reliab")
    if values.ndim != 2 or values.shape[1] != N_CHANNELS:
        raise _bad_quality(path, "reliab", values.shape, f"[n_pairs, {N_CHANNELS}]")
    finite = np.isfinite(values)
    count = finite.sum(axis=0)
    total = np.where(finite, values, 0.0).sum(axis=0)
    return np.where(count > 0, total / np.maximum(count, 1), -np.inf)


def channel_regions(monkey: str) -> tuple[np.ndarray, np.ndarray]:
    """Brain region (str ``[1024]``) and Utah array (int64 ``[1024]``, index // 64) of each
    physical channel of monkey ``"N"`` or ``"F"``."""
    if monkey not in REGIONS:
        raise ValueError(f"monkey must be one of {sorted(REGIONS)}, got {monkey!r}.")
    names, sizes = zip(*REGIONS[monkey])
    regions = np.repeat(np.array(names), sizes)
    return regions, np.arange(N_CHANNELS, dtype=np.int64) // CHANNELS_PER_ARRAY


# --------------------------------------------------------------------------------------
# conversion


def _resolve_monkey(monkey_dir: Path, monkey: str | None) -> str:
    named = {f"monkey{m}": m for m in REGIONS}.get(monkey_dir.name)
    if monkey is None:
        if named is None:
            raise ValueError(
                f"Cannot infer the monkey from the folder name {monkey_dir.name!r} (expected "
                f"{' or '.join(f'monkey{m}' for m in REGIONS)}); pass monkey='N' or 'F'."
            )
        return named
    if monkey not in REGIONS:
        raise ValueError(f"monkey must be one of {sorted(REGIONS)}, got {monkey!r}.")
    if named is not None and named != monkey:
        raise ValueError(
            f"monkey={monkey!r} contradicts the folder name {monkey_dir.name!r}; the regions of "
            "the two monkeys differ. Pass the right monkey or rename the folder."
        )
    return monkey


def _select_channels(
    monkey_dir: Path, min_snr: float | None, top_reliable: int | None
) -> np.ndarray:
    """Sorted physical indices of the kept channels, int64 ``[C]``."""
    keep = np.arange(N_CHANNELS)
    norm = monkey_dir / NORM_FILE
    if (min_snr is not None or top_reliable is not None) and not norm.is_file():
        raise FileNotFoundError(
            f"Channel selection (min_snr / top_reliable) needs {norm} (SNR_max, reliab), which "
            f"is missing. Add the file, or convert without channel selection."
        )
    if min_snr is not None:
        keep = keep[read_snr_max(norm) >= min_snr]
    if top_reliable is not None:
        reliability = read_reliability(norm)[keep]
        keep = np.sort(keep[np.argsort(-reliability, kind="stable")[:top_reliable]])
    if keep.size == 0:
        raise ValueError(
            f"Channel selection kept no channel (min_snr={min_snr}, top_reliable={top_reliable})."
        )
    return keep


def _check_options(
    bin_size: float,
    valid_fraction: float,
    min_snr: float | None,
    top_reliable: int | None,
    chunk_trials: int,
) -> None:
    if not (isinstance(bin_size, (int, float)) and math.isfinite(bin_size) and bin_size > 0):
        raise ValueError(f"bin_size must be a number > 0 (seconds), got {bin_size!r}.")
    if not (isinstance(valid_fraction, (int, float)) and 0 <= valid_fraction < 1):
        raise ValueError(f"valid_fraction must be in [0, 1), got {valid_fraction!r}.")
    if min_snr is not None and not (isinstance(min_snr, (int, float)) and math.isfinite(min_snr)):
        raise ValueError(f"min_snr must be a finite number or None, got {min_snr!r}.")
    for name, value in (("top_reliable", top_reliable), ("chunk_trials", chunk_trials)):
        if value is not None and not (isinstance(value, (int, np.integer)) and value >= 1):
            raise ValueError(f"{name} must be an integer >= 1, got {value!r}.")


def _bin_factor(tb: np.ndarray, bin_size: float) -> int:
    step = (tb[1] - tb[0]) / 1000.0
    factor = round(bin_size / step)
    if factor < 1 or not math.isclose(factor * step, bin_size) or tb.size % factor:
        raise ValueError(
            f"bin_size={bin_size} s must be a whole number of ALLMUA samples ({step * 1000:g} ms) "
            f"that divides the {tb.size}-sample trial, e.g. 0.01 or 0.02."
        )
    return factor


def _split_labels(
    image_ids: np.ndarray, is_test: np.ndarray, valid_fraction: float, seed: int
) -> np.ndarray:
    """Index into SPLITS of each trial: test images -> test, a seeded share of the other
    images -> valid, the rest -> train; an image's trials share one split."""
    test_images = set(image_ids[is_test].tolist())
    train_images = sorted(set(image_ids.tolist()) - test_images)
    n_valid = 0 if valid_fraction == 0 else max(1, round(valid_fraction * len(train_images)))
    if n_valid >= len(train_images) and n_valid > 0:
        raise ValueError(
            f"valid_fraction={valid_fraction} leaves no train image ({len(train_images)} train "
            "images); lower it."
        )
    rng = np.random.default_rng(seed)
    valid = {train_images[i] for i in rng.choice(len(train_images), n_valid, replace=False)}
    labels = np.zeros(image_ids.size, dtype=np.int64)
    labels[np.isin(image_ids, list(valid))] = SPLITS.index("valid")
    labels[np.isin(image_ids, list(test_images))] = SPLITS.index("test")
    return labels


def _runs(labels: np.ndarray, split: int, seg: float) -> Interval:
    """Interval of the back-to-back segments (``seg`` s each) whose label is ``split``."""
    mask = np.concatenate([[False], labels == split, [False]]).astype(np.int8)
    edges = np.flatnonzero(np.diff(mask))
    return Interval(start=edges[0::2] * seg, end=edges[1::2] * seg)


def _trial_image_ids(path: Path, images: dict[str, list[str]], table: dict) -> np.ndarray:
    """Image id of each trial, str ``[n_trials]``; non-ASCII ids (used by a trial) raise."""
    for split in ("train", "test"):
        used = np.unique(table[f"{split}_idx"])
        rows = [int(k) for k in used if k and not images[split][k - 1].isascii()]
        if rows:
            raise ValueError(
                f"{path}: variable '{split}_imgs.things_path' has non-ASCII image ids in rows "
                f"{rows[:3]}, e.g. {images[split][rows[0] - 1]!r}; recordings store ASCII "
                "strings only. Rename those images (and their files) to ASCII."
            )
    return np.array([
        images["test"][t - 1] if t > 0 else images["train"][i - 1]
        for i, t in zip(table["train_idx"], table["test_idx"])
    ])


def _read_binned(
    path: Path,
    columns: list[np.ndarray],
    *,
    channels: np.ndarray,
    factor: int,
    chunk_trials: int,
) -> list[np.ndarray]:
    """Binned ALLMUA of each recording, float32 ``[len(cols), n_time // factor, C]``.

    ``columns[r]`` lists the ALLMUA trials of recording ``r`` in their output order;
    ``channels`` the recording-order channel of each output channel. ALLMUA is read
    ``chunk_trials`` trials at a time.
    """
    n_trials = sum(cols.size for cols in columns)
    recording_of = np.empty(n_trials, dtype=np.int64)
    position_of = np.empty(n_trials, dtype=np.int64)
    for r, cols in enumerate(columns):
        recording_of[cols], position_of[cols] = r, np.arange(cols.size)
    with _open_v73(path) as f:
        allmua = f["ALLMUA"]
        n_bins = allmua.shape[0] // factor
        out = [np.empty((cols.size, n_bins, channels.size), np.float32) for cols in columns]
        for j0 in range(0, n_trials, chunk_trials):
            block = allmua[:, j0 : j0 + chunk_trials, :][:, :, channels]
            nt = block.shape[1]
            binned = block.reshape(n_bins, factor, nt, channels.size).mean(axis=1, dtype=np.float64)
            binned = binned.transpose(1, 0, 2).astype(np.float32)
            cols = np.arange(j0, j0 + nt)
            for r in np.unique(recording_of[cols]):
                mine = recording_of[cols] == r
                out[r][position_of[cols[mine]]] = binned[mine]
    return out


def convert_tvsd(
    monkey_dir: str | Path,
    out_dir: str | Path,
    *,
    monkey: str | None = None,
    bin_size: float = 0.01,
    valid_fraction: float = 0.05,
    seed: int = 0,
    min_snr: float | None = None,
    top_reliable: int | None = None,
    per_day: bool = False,
    chunk_trials: int = 256,
) -> list[Path]:
    """Convert one TVSD monkey folder into recordings (layout in the module docstring).

    ``ALLMUA`` is read ``chunk_trials`` trials at a time; memory holds the binned output
    (``n_trials * 0.3 / bin_size * n_channels`` float32) plus about two chunks of ``ALLMUA``.
    The valid images are drawn once over all trials, so with ``per_day`` an image keeps its
    split in every day's recording.

    Args:
        monkey_dir: the published ``monkeyN`` / ``monkeyF`` folder.
        out_dir: output folder (created); existing files of the same name are replaced.
        monkey: ``"N"`` or ``"F"``; inferred from the folder name by default.
        bin_size: seconds per bin, a whole number of 1 ms samples dividing 300 ms.
        valid_fraction: share of the train images whose trials all go to ``valid_domain``.
        seed: seed of the choice of valid images.
        min_snr: keep channels with ``SNR_max >= min_snr`` (``THINGS_normMUA.mat``).
        top_reliable: keep the channels with the highest mean ``reliab``, at most this many
            (applied after ``min_snr``).
        per_day: one recording per recording day (``ALLMAT`` day row) instead of one in all.
            The day recordings share unit ids (same electrodes), which
            :meth:`RecordingDataset.unit_ids` rejects as duplicates.
        chunk_trials: trials per read of ``ALLMUA``.

    Returns:
        The written paths, ``tvsd_monkey{monkey}.h5`` or ``tvsd_monkey{monkey}_day{d}.h5`` in
        day order.
    """
    monkey_dir, out_dir = Path(monkey_dir), Path(out_dir)
    if not monkey_dir.is_dir():
        raise FileNotFoundError(f"TVSD monkey folder {monkey_dir} not found. {_LAYOUT_HINT}")
    monkey = _resolve_monkey(monkey_dir, monkey)
    _check_options(bin_size, valid_fraction, min_snr, top_reliable, chunk_trials)

    images = read_image_paths(monkey_dir / IMAGES_FILE)
    order = read_channel_mapping(monkey_dir / MAPPING_FILE)
    mua_path = monkey_dir / MUA_FILE
    table = read_mua_trials(
        mua_path, n_train_images=len(images["train"]), n_test_images=len(images["test"])
    )
    keep = _select_channels(monkey_dir, min_snr, top_reliable)
    factor = _bin_factor(table["tb"], bin_size)
    n_bins = table["tb"].size // factor
    sampling_rate = 1.0 / bin_size
    seg = n_bins / sampling_rate
    pre = -table["tb"][0] / 1000.0

    image_ids = _trial_image_ids(monkey_dir / IMAGES_FILE, images, table)
    labels = _split_labels(image_ids, table["test_idx"] > 0, valid_fraction, seed)

    # recordings: trial columns of ALLMUA, each in trial order
    days = np.unique(table["day"]) if per_day else [None]
    columns = [
        np.flatnonzero(table["day"] == d) if per_day else np.arange(table["trial"].size)
        for d in days
    ]
    columns = [c[np.argsort(table["trial"][c], kind="stable")] for c in columns]
    values = _read_binned(
        mua_path, columns, channels=order[keep], factor=factor, chunk_trials=chunk_trials
    )

    regions, arrays = channel_regions(monkey)
    paths = []
    for day, cols, vals in zip(days, columns, values):
        rid = f"tvsd_monkey{monkey}" + ("" if day is None else f"_day{day}")
        # unit ids are unique across recordings: per-day files name the day in them
        prefix = f"tvsd_{monkey}" + ("" if day is None else f"_day{day}")
        onset = np.arange(cols.size) * seg + pre
        path = write_recording(
            out_dir / f"{rid}.h5",
            session_id=rid,
            unit_ids=[f"{prefix}/ch{p + 1:04d}" for p in keep],
            unit_id_prefix=prefix,
            domain=(0.0, cols.size * seg),
            splits={split: _runs(labels[cols], s, seg) for s, split in enumerate(SPLITS)},
            values=RegularTimeSeries(
                values=vals.reshape(-1, keep.size), sampling_rate=sampling_rate
            ),
            brain_regions=regions[keep],
            stimuli=dict(
                start=onset,
                end=onset + PRESENTATION_DURATION,
                image_id=image_ids[cols],
                **{k: table[k][cols] for k in ("trial", "train_idx", "test_idx", "rep", "day")},
            ),
            subject_id=f"monkey{monkey}",
            brainset="tvsd",
            source=mua_path,
            array=arrays[keep],
        )
        paths.append(path)
    return paths


def summarize_tvsd(path: str | Path) -> dict:
    """Counts of one converted recording: ``recording_id``, ``trials``, ``channels``
    (``{region: n}`` in channel order) and ``splits`` (``{split: {"trials": n, "images": n}}``)."""
    with Data.load(path, lazy=True) as data:
        regions = Counter(np.asarray(data.units.brain_region).astype(str).tolist())
        image_ids = np.asarray(data.stimulus_presentations.image_id).astype(str)
        splits = {}
        for split, (inside, _) in presentations_by_split(data).items():
            splits[split] = {
                "trials": int(inside.sum()),
                "images": int(np.unique(image_ids[inside]).size),
            }
        return {
            "recording_id": str(data.session.id),
            "trials": int(image_ids.size),
            "channels": dict(regions),
            "splits": splits,
        }
