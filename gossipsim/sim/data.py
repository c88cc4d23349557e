"""Datasets, their partition across agents, per-agent minibatch sampling and augmentation.

Everything ends as tensors on the device: a `Dataset` keeps uint8 images and int64 labels there
(normalized per batch, so CIFAR-10 costs 150 MB instead of 600), a `Partition` is each agent's
indices into the train set, and a `Sampler` draws one (N, B) index tensor per round without a host
sync. Nothing is ever downloaded: the readers take files the user already has (idx files for MNIST
and Fashion-MNIST, the CIFAR python pickles, an ImageFolder tree) and fail with a one-line
`ConfigError` saying where they looked and how to get the data.

The built-in "synthetic" dataset needs no files. Each of its 10 classes is a fixed glyph of three
random strokes (line segments with a Gaussian profile, 1.6 px wide, drawn from a fixed seed). A
sample is its class glyph shifted by up to 3 px in each direction, overlaid (pixelwise max) with a
fainter (at most half-intensity), independently shifted glyph of a random class as a distractor,
scaled by a random contrast in [0.5, 1], plus Gaussian noise of std 0.35 (in [0, 1] pixel units),
clipped and quantized to uint8: 12,000 train and 2,000 test images of 1x28x28, so the MNIST models
run on it unchanged. It is made in about 0.2 s on one CPU core. A 784-200-200-10 MLP trained with
plain SGD (lr 0.1, batch 32, normalized inputs, torch's default init) reaches about 55% test accuracy
after 50 steps (50 to 59% over five seeds), 86% after 300 and 94% after 1,000 (chance is 10%): learnable,
with room to tell algorithms apart.
"""
from __future__ import annotations

import dataclasses
import gzip
import hashlib
import math
import numbers
import os
import pickle
import struct
import zlib
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from gossipsim.errors import ConfigError

DATASETS = ("synthetic", "mnist", "fashion-mnist", "cifar10", "cifar100", "imagefolder")
PARTITIONS = ("iid", "dirichlet", "shards")

# Per-channel pixel mean and std over the train set, in [0, 1] units. For CIFAR these are the std of
# all pixels, not the often-copied (0.2023, 0.1994, 0.2010), which averages per-image stds.
STATS = {
    "mnist": ((0.1307,), (0.3081,)),
    "fashion-mnist": ((0.2860,), (0.3530,)),
    "cifar10": ((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)),
    "cifar100": ((0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762)),
}
_ALIASES = {"fashion": "fashion-mnist", "fmnist": "fashion-mnist", "fashionmnist": "fashion-mnist",
            "cifar-10": "cifar10", "cifar-100": "cifar100", "image-folder": "imagefolder"}
_OPTIONS = {"synthetic": ("seed",), "imagefolder": ("image_size", "cache_dir")}
_SYSTEM_DIR = Path("/usr/share/datasets")


@dataclass
class Dataset:
    """Images (S, C, H, W) uint8 and labels (S,) int64, resident on one device."""

    name: str
    x: torch.Tensor  # (S, C, H, W) uint8
    y: torch.Tensor  # (S,) int64
    classes: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    source: str = ""  # the folder it was read from ("" for the built-in dataset)
    # (scale, shift) per (device, dtype): building them from Python floats every batch would be a
    # host-to-device copy inside the round.
    _affine: dict = field(default_factory=dict, init=False, repr=False, compare=False)

    def __len__(self) -> int:
        return int(self.y.shape[0])

    @property
    def shape(self) -> tuple[int, int, int]:
        """(C, H, W) of one image."""
        c, h, w = self.x.shape[1:]
        return int(c), int(h), int(w)

    def normalize(self, xb: torch.Tensor, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """uint8 (..., C, H, W) -> `dtype` (..., C, H, W): (xb / 255 - mean) / std."""
        key = (xb.device, dtype)
        if key not in self._affine:
            mean = torch.tensor(self.mean, dtype=torch.float64)
            std = torch.tensor(self.std, dtype=torch.float64)
            scale, shift = 1 / (255 * std), mean / std
            self._affine[key] = tuple(v.view(-1, 1, 1).to(xb.device, dtype) for v in (scale, shift))
        scale, shift = self._affine[key]
        return torch.addcmul(-shift, xb.to(dtype), scale)

    def to(self, device: str | torch.device) -> Dataset:
        return dataclasses.replace(self, x=self.x.to(device), y=self.y.to(device))


def load(name: str, data_dir: str | os.PathLike | None = None, device: str | torch.device = "cpu",
         **kw) -> tuple[Dataset, Dataset]:
    """(train, test) of dataset `name` (one of DATASETS), on `device`.

    Options: synthetic takes `seed` (default 0); imagefolder takes `image_size` (default 64) and
    `cache_dir` (default: next to the data, else ~/.cache/gossipsim).
    """
    key = str(name).lower().replace("_", "-")
    key = _ALIASES.get(key, key)
    if key not in DATASETS:
        raise ConfigError(f"unknown dataset {name!r}; accepted: {', '.join(DATASETS)}")
    allowed = _OPTIONS.get(key, ())
    for k in kw:
        if k not in allowed:
            accepted = ", ".join(allowed) or "none"
            raise ConfigError(f"dataset {key!r} takes no option {k!r}; accepted: {accepted}")
    if key != "synthetic" and data_dir is not None and not Path(data_dir).is_dir():
        raise ConfigError(f"data_dir {str(data_dir)!r} is not a directory; give the folder that holds {key}'s files")
    if key == "synthetic":
        train, test = synthetic(**kw)
    elif key in ("mnist", "fashion-mnist"):
        train, test = _load_idx(key, data_dir)
    elif key in ("cifar10", "cifar100"):
        train, test = _load_cifar(key, data_dir)
    else:
        train, test = _load_imagefolder(data_dir, **kw)
    for split, d in (("train", train), ("test", test)):
        _check(d, split)
    if train.shape != test.shape:  # the model is built for the train images: it would fail at the first evaluation
        raise ConfigError(f"{train.name} in {train.source}: train images are {train.shape} (C, H, W), test images "
                          f"{test.shape}; the two splits must have the same image size")
    return train.to(device), test.to(device)


def _check(d: Dataset, split: str) -> None:
    """Images and labels that belong together: as many of each, labels among the classes (a mismatch would
    silently drop samples, or fail rounds later inside a batch)."""
    where = f"{d.name} {split} set" + (f" in {d.source}" if d.source else "")
    if d.x.dim() != 4 or d.y.dim() != 1 or len(d.x) != len(d.y) or not len(d.y):
        raise ConfigError(f"{where}: {tuple(d.x.shape)} images and {tuple(d.y.shape)} labels; expected (S, C, H, "
                          f"W) images and S labels, S > 0")
    low, high = int(d.y.min()), int(d.y.max())
    if low < 0 or high >= d.classes:
        raise ConfigError(f"{where}: labels range over {low}..{high}; {d.name} has classes 0..{d.classes - 1}")


def channel_stats(x: torch.Tensor) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Exact per-channel mean and std of uint8 images (S, C, H, W), in [0, 1] units."""
    levels = torch.arange(256, dtype=torch.float64) / 255
    mean, std = [], []
    for c in range(x.shape[1]):
        counts = torch.bincount(x[:, c].reshape(-1).cpu(), minlength=256).double()  # (256,)
        m = float((counts * levels).sum() / counts.sum())
        v = float((counts * (levels - m) ** 2).sum() / counts.sum())
        mean.append(m)
        std.append(math.sqrt(v) or 1.0)
    return tuple(mean), tuple(std)


def _is_int(v: object) -> bool:
    return isinstance(v, numbers.Integral) and not isinstance(v, bool)


# --------------------------------------------------------------------------------------------------
# the built-in dataset


def synthetic(seed: int = 0, train_size: int = 12000, test_size: int = 2000) -> tuple[Dataset, Dataset]:
    """The built-in stroke-glyph benchmark (module docstring), on the CPU; deterministic in `seed`."""
    g = torch.Generator().manual_seed(seed)
    classes, strokes, width, shift, noise, distract = 10, 3, 1.6, 3, 0.35, 0.5
    h = 28
    hp = h + 2 * shift
    # Glyphs are drawn on a canvas padded by `shift` so that every shifted 28x28 window is a crop.
    a = torch.rand(classes, strokes, 2, generator=g) * 16 + 6 + shift  # (K, S, 2) segment starts
    b = torch.rand(classes, strokes, 2, generator=g) * 16 + 6 + shift  # (K, S, 2) segment ends
    grid = torch.arange(hp, dtype=torch.float32)
    p = torch.stack(torch.meshgrid(grid, grid, indexing="ij"), -1)  # (Hp, Hp, 2)
    ab = (b - a)[:, :, None, None, :]
    ap = p - a[:, :, None, None, :]  # (K, S, Hp, Hp, 2)
    u = ((ap * ab).sum(-1) / (ab * ab).sum(-1).clamp_min(1e-6)).clamp(0, 1)  # nearest point on segment
    d2 = ((ap - u[..., None] * ab) ** 2).sum(-1)
    glyph = torch.exp(-d2 / (2 * width**2)).amax(1)  # (K, Hp, Hp); max, not sum: strokes don't add up
    s = 2 * shift + 1
    crops = glyph.unfold(1, h, 1).unfold(2, h, 1).reshape(classes * s * s, h * h)  # (K*s*s, 784)
    n = train_size + test_size
    y = torch.randint(0, classes, (n,), generator=g)
    other = torch.randint(0, classes, (n,), generator=g)
    at = torch.randint(0, s * s, (n,), generator=g)
    at_other = torch.randint(0, s * s, (n,), generator=g)
    contrast = torch.rand(n, 1, generator=g) * 0.5 + 0.5
    weight = torch.rand(n, 1, generator=g) * distract
    x = torch.maximum(crops[y * s * s + at], weight * crops[other * s * s + at_other]).mul_(contrast)
    x.add_(torch.randn(n, h * h, generator=g), alpha=noise)
    x = x.clamp_(0, 1).mul_(255).round_().to(torch.uint8).view(n, 1, h, h)  # (n, 1, 28, 28)
    mean, std = channel_stats(x[:train_size])
    return (Dataset("synthetic", x[:train_size].clone(), y[:train_size].clone(), classes, mean, std),
            Dataset("synthetic", x[train_size:].clone(), y[train_size:].clone(), classes, mean, std))


# --------------------------------------------------------------------------------------------------
# MNIST and Fashion-MNIST: idx files

_IDX_FILES = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte",
              "t10k-labels-idx1-ubyte")
_IDX_DTYPES = {0x08: np.uint8, 0x09: np.int8, 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}
_IDX_DIRS = {
    "mnist": ("mnist", "MNIST", "mnist/raw", "MNIST/raw"),
    "fashion-mnist": ("fashion-mnist", "fashion_mnist", "FashionMNIST", "fashion-mnist/raw",
                      "FashionMNIST/raw", "fashion_mnist/raw"),
}


def read_idx(path: str | os.PathLike) -> np.ndarray:
    """The array in an idx file (the MNIST format), gzipped when the name ends in .gz."""
    path = Path(path)
    try:
        with (gzip.open(path, "rb") if path.suffix == ".gz" else open(path, "rb")) as f:
            data = bytearray(f.read())  # writable, so torch.from_numpy does not warn
    except (EOFError, gzip.BadGzipFile, zlib.error) as e:
        raise ConfigError(f"{path} cannot be read as gzip ({str(e).splitlines()[0]}): cut short, or not "
                          f"gzipped (then drop the .gz from its name)") from None
    if len(data) < 4 or data[0] or data[1] or data[2] not in _IDX_DTYPES:
        raise ConfigError(f"{path} is not an idx file (header {bytes(data[:4]).hex()}); "
                          "expected the MNIST idx format")
    ndim = data[3]
    if len(data) < 4 + 4 * ndim:
        raise ConfigError(f"{path} is truncated: cut inside its header of {ndim} dimensions")
    dims = struct.unpack(f">{ndim}I", data[4:4 + 4 * ndim])
    dtype = np.dtype(_IDX_DTYPES[data[2]])
    count = math.prod(dims)
    if len(data) < 4 + 4 * ndim + count * dtype.itemsize:
        raise ConfigError(f"{path} is truncated: its header promises shape {dims}")
    arr = np.frombuffer(data, dtype=dtype, count=count, offset=4 + 4 * ndim).reshape(dims)
    return arr.astype(dtype.newbyteorder("="), copy=False)


def _find_idx(folder: Path) -> list[Path] | None:
    found = []
    for stem in _IDX_FILES:
        # MNIST mirrors also use "train-images.idx3-ubyte"
        names = [stem, stem.replace("-idx", ".idx")]
        hits = [folder / (n + ext) for n in names for ext in (".gz", "") if (folder / (n + ext)).is_file()]
        if not hits:
            return None
        found.append(hits[0])
    return found


def _load_idx(key: str, data_dir: str | os.PathLike | None) -> tuple[Dataset, Dataset]:
    # a data_dir given is the only place looked in: a mistyped one must not quietly train on the system's copy
    places = ([Path(data_dir) / sub for sub in _IDX_DIRS[key]] + [Path(data_dir)] if data_dir is not None
              else [_SYSTEM_DIR / key])
    for folder in places:
        files = _find_idx(folder)
        if files is not None:
            break
    else:
        how = ("install it with `apt-get install dataset-fashion-mnist` or put the four idx files in "
               "--data_dir" if key == "fashion-mnist" else
               "put the four idx files (from the MNIST site or torchvision's MNIST/raw) in --data_dir")
        raise ConfigError(f"dataset {key!r} not found: no {_IDX_FILES[0]}[.gz] and the other three idx files "
                          f"in {', '.join(map(str, places))}; {how}")
    xtr, ytr, xte, yte = (torch.from_numpy(read_idx(f)) for f in files)
    for f, a, ndim in zip(files, (xtr, ytr, xte, yte), (3, 1, 3, 1), strict=True):
        if a.dim() != ndim:
            raise ConfigError(f"{f} holds an array of shape {tuple(a.shape)}; expected {ndim} dimensions "
                              f"({'images S x H x W' if ndim == 3 else 'labels S'})")
        # images are pixels 0..255 (float ones in [0, 1] would be divided by 255 again); labels are class codes
        if (a.dtype != torch.uint8) if ndim == 3 else a.is_floating_point():
            raise ConfigError(f"{f} holds {str(a.dtype).removeprefix('torch.')} values; expected "
                              f"{'uint8 pixels' if ndim == 3 else 'integer labels'}, as the MNIST idx files have")
    mean, std = STATS[key]
    if len(xtr) == 60000:
        # MNIST and Fashion-MNIST share file names: catch one standing in for the other.
        got = float(xtr.mean(dtype=torch.float64)) / 255
        if abs(got - mean[0]) > 0.05:
            raise ConfigError(f"the idx files in {folder} have mean pixel {got:.3f}, not {key}'s {mean[0]}: "
                              f"another dataset; put {key}'s files in --data_dir/{_IDX_DIRS[key][0]}")
    return (Dataset(key, xtr[:, None].contiguous(), ytr.long(), 10, mean, std, str(folder)),
            Dataset(key, xte[:, None].contiguous(), yte.long(), 10, mean, std, str(folder)))


# --------------------------------------------------------------------------------------------------
# CIFAR-10 and CIFAR-100: the python pickles

_CIFAR = {  # folder name, train files, test file, label key, classes
    "cifar10": ("cifar-10-batches-py", tuple(f"data_batch_{i}" for i in range(1, 6)), "test_batch", "labels",
                10),
    "cifar100": ("cifar-100-python", ("train",), "test", "fine_labels", 100),
}


def read_cifar(files: list[Path], label_key: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Images (S, 3, 32, 32) uint8 and labels (S,) int64 from CIFAR python pickles."""
    xs, ys = [], []
    for path in files:
        try:
            with open(path, "rb") as f:
                d = pickle.load(f, encoding="bytes")  # the official format; only open files you trust
        except Exception as e:  # a corrupt pickle raises almost anything (LookupError, OverflowError, ...)
            raise ConfigError(f"{path} is not a readable pickle ({type(e).__name__}): cut short or another "
                              f"file; extract the CIFAR 'python version' archive again") from None
        if isinstance(d, dict):
            d = {k.decode() if isinstance(k, bytes) else k: v for k, v in d.items()}
        if not isinstance(d, dict) or "data" not in d or label_key not in d:
            raise ConfigError(f"{path} is not a CIFAR pickle with 'data' and {label_key!r}")
        x, y = np.asarray(d["data"]), np.asarray(d[label_key])
        if x.dtype != np.uint8 or x.ndim != 2 or x.shape[1] != 3 * 32 * 32 or y.shape != (len(x),):
            raise ConfigError(f"{path}: data of shape {x.shape} ({x.dtype}) and {y.shape} labels; expected "
                              f"S x 3072 uint8 images and S labels")
        xs.append(torch.from_numpy(x.reshape(-1, 3, 32, 32)))
        ys.append(torch.as_tensor(y.astype(np.int64)))
    return torch.cat(xs), torch.cat(ys)


def _load_cifar(key: str, data_dir: str | os.PathLike | None) -> tuple[Dataset, Dataset]:
    folder, train_files, test_file, label_key, classes = _CIFAR[key]
    places = [_SYSTEM_DIR / key / folder, _SYSTEM_DIR / key]
    if data_dir is not None:  # the only place looked in, as for the idx datasets
        r = Path(data_dir)
        places = [r / folder, r / key / folder, r / key, r]
    for place in places:
        if all((place / f).is_file() for f in (*train_files, test_file)):
            break
    else:
        partial = next((p for p in places if any((p / f).is_file() for f in (*train_files, test_file))), None)
        if partial is not None:  # the folder is there, some files are not
            lacks = [f for f in (*train_files, test_file) if not (partial / f).is_file()]
            raise ConfigError(f"dataset {key!r}: {partial} lacks {', '.join(lacks)}; extract the CIFAR "
                              f"'python version' archive there again")
        raise ConfigError(f"dataset {key!r} not found: no {folder}/{train_files[0]} in "
                          f"{', '.join(map(str, places))}; extract the CIFAR 'python version' archive "
                          f"(or torchvision's download) into --data_dir")
    xtr, ytr = read_cifar([place / f for f in train_files], label_key)
    xte, yte = read_cifar([place / test_file], label_key)
    mean, std = STATS[key]
    return (Dataset(key, xtr, ytr, classes, mean, std, str(place)),
            Dataset(key, xte, yte, classes, mean, std, str(place)))


# --------------------------------------------------------------------------------------------------
# ImageFolder (e.g. Imagenette): decoded once, cached as one uint8 tensor file

_IMAGE_EXTS = {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".ppm", ".pgm", ".tif", ".tiff", ".webp"}


def _decode_image(path: Path, size: int) -> np.ndarray:
    """(size, size, 3) uint8: RGB, shorter side resized to `size`, then center-cropped."""
    from PIL import Image

    try:
        with Image.open(path) as im:
            im.draft("RGB", (size, size))  # JPEG: decode at a reduced scale still >= size, much faster
            im = im.convert("RGB")
            w, h = im.size
            r = size / min(w, h)
            nw, nh = max(size, round(w * r)), max(size, round(h * r))
            im = im.resize((nw, nh), Image.Resampling.BILINEAR)
            left, top = (nw - size) // 2, (nh - size) // 2
            return np.asarray(im.crop((left, top, left + size, top + size)), dtype=np.uint8)
    except OSError as e:
        raise ConfigError(f"cannot decode image {path}: {str(e).splitlines()[0]}") from None


def _list_images(split: Path, classes: list[str]) -> tuple[list[Path], list[int]]:
    paths, labels = [], []
    for c in sorted(d.name for d in split.iterdir() if d.is_dir()):
        if c not in classes:
            raise ConfigError(f"class folder {split / c} is not among train/'s class folders; "
                              f"accepted: {', '.join(classes)}")
        for dirpath, dirnames, filenames in os.walk(split / c):
            dirnames.sort()
            for f in sorted(filenames):
                if Path(f).suffix.lower() in _IMAGE_EXTS:
                    paths.append(Path(dirpath) / f)
                    labels.append(classes.index(c))
    return paths, labels


def _load_imagefolder(data_dir: str | os.PathLike | None, image_size: int = 64,
                      cache_dir: str | os.PathLike | None = None) -> tuple[Dataset, Dataset]:
    if data_dir is None:
        raise ConfigError("dataset 'imagefolder' needs --data_dir: a folder with train/ and val/ (or test/) "
                          "subfolders of class folders")
    if not _is_int(image_size) or image_size < 1:
        raise ConfigError(f"image_size must be a positive integer, got {image_size!r}")
    root = Path(data_dir).resolve()
    test_dir = next((root / s for s in ("val", "test") if (root / s).is_dir()), None)
    if not (root / "train").is_dir() or test_dir is None:
        raise ConfigError(f"imagefolder: {root} needs train/ and val/ (or test/) subfolders of class folders")
    classes = sorted(d.name for d in (root / "train").iterdir() if d.is_dir())
    if not classes:
        raise ConfigError(f"imagefolder: {root / 'train'} has no class folders")
    (tr_paths, tr_labels), (te_paths, te_labels) = (_list_images(root / "train", classes),
                                                    _list_images(test_dir, classes))
    empty = [c for i, c in enumerate(classes) if i not in set(tr_labels)]
    if empty and tr_paths:  # a class with no training image: a stray folder, or images of another extension
        raise ConfigError(f"imagefolder: class folder(s) {', '.join(empty)} in {root / 'train'} hold no images "
                          f"({', '.join(sorted(_IMAGE_EXTS))}); remove them or add their images")
    if not tr_paths or not te_paths:
        raise ConfigError(f"imagefolder: no images ({', '.join(sorted(_IMAGE_EXTS))}) under {root}/train "
                          f"or {test_dir}")
    # The cache is valid while the file list, sizes, mtimes and image_size are unchanged.
    h = hashlib.sha1(f"{image_size}".encode())
    for p in (*tr_paths, *te_paths):
        st = p.stat()
        h.update(f"\n{p.relative_to(root)}\t{st.st_size}\t{st.st_mtime_ns}".encode())
    fingerprint = h.hexdigest()
    name = f"gossipsim-imagefolder-{hashlib.sha1(str(root).encode()).hexdigest()[:12]}-{image_size}px.pt"
    if cache_dir is not None:
        caches = [Path(cache_dir) / name]
    else:
        xdg = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache"))
        caches = [root / f".gossipsim-cache-{image_size}px.pt", xdg / "gossipsim" / name]
    for cache in caches:
        if cache.is_file():
            try:
                d = torch.load(cache, weights_only=True)
            except Exception:  # a truncated or foreign file: rebuild it
                continue
            if d.get("fingerprint") == fingerprint:
                return _imagefolder_sets(d, root)
    try:
        from PIL import Image  # noqa: F401
    except ImportError:
        raise ConfigError("dataset 'imagefolder' needs Pillow: pip install Pillow") from None
    with ThreadPoolExecutor(max_workers=min(8, os.cpu_count() or 1)) as pool:  # PIL decodes without the GIL
        images = list(pool.map(lambda p: _decode_image(p, image_size), [*tr_paths, *te_paths]))
    x = torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).contiguous()  # (S, 3, size, size)
    ntr = len(tr_paths)
    mean, std = channel_stats(x[:ntr])
    d = {"fingerprint": fingerprint, "classes": classes, "mean": list(mean), "std": list(std),
         "train_x": x[:ntr].clone(), "train_y": torch.tensor(tr_labels, dtype=torch.int64),
         "test_x": x[ntr:].clone(), "test_y": torch.tensor(te_labels, dtype=torch.int64)}
    for cache in caches:
        try:
            cache.parent.mkdir(parents=True, exist_ok=True)
            tmp = cache.with_name(cache.name + f".{os.getpid()}.tmp")
            torch.save(d, tmp)
            os.replace(tmp, cache)  # atomic: a concurrent reader never sees half a file
            break
        except OSError:
            continue  # read-only data folder: try the next place
    return _imagefolder_sets(d, root)


def _imagefolder_sets(d: dict, root: Path) -> tuple[Dataset, Dataset]:
    k, mean, std = len(d["classes"]), tuple(d["mean"]), tuple(d["std"])
    # The folders list the test images class by class; in a fixed shuffled order, the first eval_samples of them
    # span the classes (as in the idx and CIFAR test sets) instead of being the first classes only.
    order = torch.randperm(len(d["test_y"]), generator=torch.Generator().manual_seed(0))
    return (Dataset("imagefolder", d["train_x"], d["train_y"], k, mean, std, str(root)),
            Dataset("imagefolder", d["test_x"][order], d["test_y"][order], k, mean, std, str(root)))


# --------------------------------------------------------------------------------------------------
# partitions


@dataclass
class Partition:
    """Each agent's int64 indices (CPU) into the train set."""

    indices: list[torch.Tensor]
    kind: str = "custom"

    def sizes(self) -> torch.Tensor:
        """(N,) samples per agent."""
        return torch.tensor([len(i) for i in self.indices], dtype=torch.int64)

    def histogram(self, labels: torch.Tensor, classes: int) -> torch.Tensor:
        """(N, classes) label counts per agent, on labels' device."""
        n = len(self.indices)
        agent = torch.repeat_interleave(torch.arange(n), self.sizes()).to(labels.device)
        lab = labels[torch.cat(self.indices).to(labels.device)]
        return torch.bincount(agent * classes + lab, minlength=n * classes).view(n, classes)

    def describe(self, labels: torch.Tensor, classes: int, max_rows: int = 12) -> str:
        """Per-agent sizes (min/median/max) and a compact label histogram, one agent a row."""
        hist = self.histogram(labels, classes).cpu()  # (N, classes)
        sizes = hist.sum(1)
        n = len(sizes)
        present = (hist > 0).sum(1).double()
        lines = [f"{self.kind} partition: {n} agents, {int(sizes.sum())} samples; per agent "
                 f"min {int(sizes.min())} / median {int(sizes.median())} / max {int(sizes.max())}; "
                 f"{float(present.mean()):.1f} of {classes} classes on average"]
        rows = list(range(n)) if n <= max_rows else [*range(max_rows // 2), -1, *range(n - max_rows // 2, n)]
        if classes <= 20:
            w = max(len(str(int(hist.max()))), len(str(classes - 1))) + 1
            lines.append(f"{'agent':>6} {'size':>7} |" + "".join(f"{c:>{w}}" for c in range(classes)))
            fmt = lambda i: "".join(f"{int(v):>{w}}" for v in hist[i])  # noqa: E731
        else:
            lines.append(f"{'agent':>6} {'size':>7} | classes  top labels (share)")
            def fmt(i: int) -> str:
                top = torch.topk(hist[i], 3)
                shares = " ".join(f"{int(c)}:{100 * int(v) / max(1, int(sizes[i])):.0f}%"
                                  for v, c in zip(top.values, top.indices, strict=True) if v > 0)
                return f"{int(present[i]):>8}  {shares}"
        for i in rows:
            lines.append("   ..." if i < 0 else f"{i:>6} {int(sizes[i]):>7} |{fmt(i)}")
        return "\n".join(lines)


def partition(labels: torch.Tensor, n: int, kind: str = "iid", *, alpha: float = 0.5,
              shards_per_agent: int = 2, seed: int = 0, min_size: int = 10) -> Partition:
    """Split the train set (given by its labels (S,)) among `n` agents; deterministic in `seed`.

    iid: a random permutation cut into n parts whose sizes differ by at most one.
    dirichlet: for each class, its samples are split among agents in proportions ~ Dir(alpha): the
      label-skew construction of the FedML and NIID-Bench (Li et al. 2021) code, usually cited as
      Hsu et al. 2019, including their balancing step (an agent already holding S/n samples or more
      gets no share of the classes still to deal). The whole draw is repeated until every agent has
      at least min(min_size, S // n) samples, at most 100 times, else ConfigError. Small alpha
      concentrates each agent on few classes; large alpha approaches iid.
    shards: McMahan et al. 2017: sort by label, cut into n * shards_per_agent contiguous shards,
      deal each agent shards_per_agent of them at random. The shards differ in size by at most
      one, so no sample is dropped (the remainder S mod (n * shards_per_agent) is spread one
      sample at a time over the first shards).
    Every sample belongs to exactly one agent in all three.
    """
    labels = torch.as_tensor(labels)
    if labels.dim() != 1 or labels.dtype.is_floating_point or labels.dtype == torch.bool:
        raise ConfigError(f"partition needs 1-D integer labels, got {tuple(labels.shape)} {labels.dtype}")
    y = labels.cpu().numpy().astype(np.int64)
    s = len(y)
    if kind not in PARTITIONS:
        raise ConfigError(f"unknown partition {kind!r}; accepted: {', '.join(PARTITIONS)}")
    if not _is_int(n) or n < 1 or n > s:
        raise ConfigError(f"agents must be an integer in [1, {s}] (the train set size), got {n!r}")
    n = int(n)
    rng = np.random.default_rng(seed)
    if kind == "iid":
        parts = np.array_split(rng.permutation(s), n)
    elif kind == "dirichlet":
        if not (isinstance(alpha, numbers.Real) and 0 < alpha < math.inf):
            raise ConfigError(f"alpha must be a finite number > 0, got {alpha!r}")
        parts = _dirichlet(y, n, float(alpha), rng, min(min_size, s // n))
    else:
        m = int(n * shards_per_agent) if _is_int(shards_per_agent) else 0
        if m < 1 or m > s:
            raise ConfigError(f"shards_per_agent must be an integer >= 1 with agents * shards_per_agent <= "
                              f"{s} (the train set size), got {shards_per_agent!r} for {n} agents")
        order = rng.permutation(s)
        order = order[np.argsort(y[order], kind="stable")]  # label-sorted, random within a label
        shards = np.array_split(order, m)
        deal = rng.permutation(m).reshape(n, -1)
        parts = [np.concatenate([shards[j] for j in row]) for row in deal]
    return Partition([torch.from_numpy(np.sort(p).astype(np.int64)) for p in parts], kind)


def _dirichlet(y: np.ndarray, n: int, alpha: float, rng: np.random.Generator,
               min_size: int) -> list[np.ndarray]:
    s = len(y)
    by_class = [np.flatnonzero(y == c) for c in np.unique(y)]
    for _ in range(100):
        owner = np.empty(s, dtype=np.int64)  # agent of each sample
        counts = np.zeros(n, dtype=np.int64)
        for idx in by_class:
            idx = rng.permutation(idx)
            prop = rng.dirichlet(np.full(n, alpha))
            balanced = prop * (counts < s / n)
            prop = balanced / balanced.sum() if balanced.sum() > 0 else prop / prop.sum()
            cuts = (np.cumsum(prop) * len(idx)).astype(np.int64)[:-1]
            owner[idx] = np.searchsorted(cuts, np.arange(len(idx)), side="right")
            counts += np.bincount(owner[idx], minlength=n)
        if counts.min() >= min_size:
            order = np.argsort(owner, kind="stable")
            return np.split(order, np.cumsum(counts)[:-1])
    raise ConfigError(f"dirichlet partition with alpha={alpha} left an agent with fewer than {min_size} of "
                      f"{s} samples in 100 draws for {n} agents; use a larger alpha or fewer agents")


# --------------------------------------------------------------------------------------------------
# sampling


class Sampler:
    """Per-agent minibatches as one (N, B) index tensor a round, drawn on the device.

    Agent i walks its shard of L_i samples in a fresh random permutation each local epoch; a batch
    that crosses the end of an epoch takes the rest of it and continues in the next permutation,
    so one epoch visits every sample of the shard exactly once. Round t reads positions
    t*B .. t*B + B - 1 of agent i's stream, which lie in epochs floor(t*B / L_i) onwards: which agents
    cross a boundary is a function of t, B and the shard sizes, all known to the host, so the host
    decides which rows to regenerate without reading device memory. The device keeps the current
    and the next epoch's permutation of every agent as padded (N, Lmax) tensors; B > L_i works (a
    batch then spans several whole epochs of a tiny shard, each a fresh permutation).
    """

    def __init__(self, partition: Partition, batch_size: int, seed: int, device: str | torch.device = "cpu"):
        sizes = [len(i) for i in partition.indices]
        if not _is_int(batch_size) or batch_size < 1:
            raise ConfigError(f"batch_size must be an integer >= 1, got {batch_size!r}")
        if not sizes:
            raise ConfigError("the partition has no agents")
        if min(sizes) == 0:
            raise ConfigError(f"agent {sizes.index(0)} has an empty shard; every agent needs at least one "
                              "sample")
        self.n, self.batch_size, self.device, self.t = len(sizes), int(batch_size), torch.device(device), 0
        self._sizes = np.array(sizes, dtype=np.int64)  # (N,) on the host: epochs never need the device
        self._len = torch.as_tensor(self._sizes).to(self.device)  # (N,)
        self._shard = torch.nn.utils.rnn.pad_sequence(
            [i.to(torch.int64) for i in partition.indices], batch_first=True).to(self.device)  # (N, Lmax)
        self._cols = torch.arange(self._shard.shape[1], device=self.device)  # (Lmax,)
        self._steps = torch.arange(batch_size, device=self.device)  # (B,)
        self._gen = torch.Generator(device=self.device)
        self._gen.manual_seed(seed)
        perms = self._permutations(torch.arange(self.n, device=self.device).repeat(2))
        self._cur, self._nxt = perms[:self.n], perms[self.n:]  # (N, Lmax) each: epochs e_i and e_i + 1

    def _permutations(self, rows: torch.Tensor) -> torch.Tensor:
        """(R, Lmax): for each agent in rows, its shard in a fresh random order, padding last."""
        keys = torch.rand(len(rows), len(self._cols), dtype=torch.float64, generator=self._gen,
                          device=self.device)  # float64: ties (and so bias) are negligible
        keys.masked_fill_(self._cols >= self._len[rows, None], 2.0)
        return self._shard[rows].gather(1, keys.argsort(dim=1, stable=True))

    def _to_device(self, *arrays: np.ndarray) -> list[torch.Tensor]:
        # One copy for all of them; non_blocking because a blocking copy waits for the stream.
        flat = torch.from_numpy(np.concatenate(arrays).astype(np.int64)).to(self.device, non_blocking=True)
        return list(flat.split([len(a) for a in arrays]))

    def sample(self, t: int) -> torch.Tensor:
        """(N, B) int64 indices into the train set for round t; call with t = 0, 1, 2, ... in order."""
        if t != self.t:
            raise ValueError(f"Sampler.sample: expected round {self.t} (rounds go in order), got {t}")
        b, start = self.batch_size, t * self.batch_size
        first = start // self._sizes  # (N,) epoch of this round's first sample, on the host
        crossed = (start + b) // self._sizes - first  # (N,) epoch ends reached by this batch
        span = int(((start + b - 1) // self._sizes - first).max())  # epochs past `first` that are read
        pos = start + self._steps  # (B,) stream positions
        d = pos // self._len[:, None] - (start // self._len)[:, None]  # (N, B) epoch offset from `first`
        o = pos % self._len[:, None]  # (N, B) position inside that epoch
        idx = torch.where(d == 0, self._cur.gather(1, o), self._nxt.gather(1, o))  # (N, B)
        wrap = np.flatnonzero(crossed)
        if len(wrap):
            k = crossed[wrap]
            # Fresh epochs first+2 .. first+k+1 of each wrapping agent: any the batch reads past
            # `nxt` (only when B > L_i), then the ones that become the new cur and nxt.
            base = np.cumsum(k) - k  # row of each wrapping agent's epoch first+2 in `fresh`
            row0 = np.zeros(self.n if span >= 2 else 0, dtype=np.int64)  # (N,) needed only if B > L_i
            if span >= 2:
                row0[wrap] = base  # an agent that reads past `nxt` has wrapped at least twice
            rows, w, one, cur_row, nxt_row, row0 = self._to_device(
                np.repeat(wrap, k), wrap, k == 1, np.maximum(base + k - 2, 0), base + k - 1, row0)
            fresh = self._permutations(rows)  # (M, Lmax)
            if span >= 2:
                deep = fresh[(row0[:, None] + d - 2).clamp(0, len(fresh) - 1), o]  # (N, B)
                idx = torch.where(d >= 2, deep, idx)
            new_cur = torch.where(one[:, None].bool(), self._nxt[w], fresh[cur_row])
            self._nxt[w] = fresh[nxt_row]
            self._cur[w] = new_cur
        self.t += 1
        return idx

    __call__ = sample

    def state_dict(self) -> dict:
        """Everything needed to continue the same draws (a host sync: call at checkpoints only)."""
        return {"t": self.t, "batch_size": self.batch_size, "sizes": torch.from_numpy(self._sizes.copy()),
                "cur": self._cur.to("cpu", copy=True), "nxt": self._nxt.to("cpu", copy=True),  # sample() writes in
                "generator": self._gen.get_state()}

    def load_state_dict(self, d: dict, fallback_seed: int = 0) -> bool:
        """Continue the draws of a state_dict(); False if its generator's state was another kind of device's
        (a run moved from CPU to GPU): the draws then go on from fallback_seed."""
        sizes = torch.as_tensor(d["sizes"]).numpy()
        if d["batch_size"] != self.batch_size or not np.array_equal(sizes, self._sizes):
            raise ConfigError(f"the checkpoint's sampler had batch_size {d['batch_size']} and {len(sizes)} "
                              f"shards of sizes {sizes.min()}..{sizes.max()}; this run has batch_size "
                              f"{self.batch_size} and {self.n} shards of sizes "
                              f"{self._sizes.min()}..{self._sizes.max()}")
        self.t = int(d["t"])
        self._cur = d["cur"].to(self.device).clone()
        self._nxt = d["nxt"].to(self.device).clone()
        return load_stream(self._gen, d["generator"], fallback_seed)


def load_stream(gen: torch.Generator, state: torch.Tensor, fallback_seed: int) -> bool:
    """Continue gen from a saved state; a state saved on another kind of device (a CPU generator's is not a CUDA
    generator's) cannot be, and gen starts afresh from fallback_seed instead: returns whether it continued."""
    try:
        gen.set_state(state)
        return True
    except RuntimeError:
        gen.manual_seed(fallback_seed)
        return False


# --------------------------------------------------------------------------------------------------
# augmentation


def augment(xb: torch.Tensor, generator: torch.Generator, *, pad: int = 4, flip: bool = True) -> torch.Tensor:
    """Random crop (zero padding `pad`) and horizontal flip of each image of xb (N, B, C, H, W).

    Independent per sample, drawn from `generator` (on xb's device), one gather for the batch. The engine
    augments uint8 images before normalizing them, so the padding is black, as in the usual CIFAR recipe
    (torchvision's RandomCrop(32, padding=4) before ToTensor and Normalize).
    """
    if not _is_int(pad) or pad < 0:
        raise ConfigError(f"augment pad must be an integer >= 0, got {pad!r}")
    n, b, c, h, w = xb.shape
    m, dev = n * b, xb.device
    x = F.pad(xb.reshape(m, c, h, w), (pad, pad, pad, pad)) if pad else xb.reshape(m, c, h, w)
    hp, wp = h + 2 * pad, w + 2 * pad
    rows = torch.arange(h, device=dev).expand(m, h)  # (m, H)
    cols = torch.arange(w, device=dev).expand(m, w)  # (m, W)
    if pad:
        rows = rows + torch.randint(0, 2 * pad + 1, (m, 1), generator=generator, device=dev)
        cols = cols + torch.randint(0, 2 * pad + 1, (m, 1), generator=generator, device=dev)
    if flip:
        mirror = torch.randint(0, 2, (m, 1), generator=generator, device=dev).bool()
        cols = torch.where(mirror, cols.flip(1), cols)
    at = (rows[:, :, None] * wp + cols[:, None, :]).view(m, 1, h * w).expand(m, c, h * w)  # (m, C, H*W)
    return x.reshape(m, c, hp * wp).gather(2, at).view(n, b, c, h, w)
