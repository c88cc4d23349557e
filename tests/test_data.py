"""Datasets, readers, partitions, the per-agent sampler and augmentation (gossipsim.sim.data)."""
from __future__ import annotations

import dataclasses
import gzip
import io
import pickle
import struct
from pathlib import Path

import numpy as np
import pytest
import torch

from gossipsim import sim
from gossipsim.errors import ConfigError
from gossipsim.sim import data

FASHION = Path("/usr/share/datasets/fashion-mnist")


def one_line(e: pytest.ExceptionInfo) -> str:
    msg = str(e.value)
    assert msg and "\n" not in msg, msg
    return msg


def random_labels(s: int, classes: int = 10, seed: int = 0) -> torch.Tensor:
    return torch.randint(0, classes, (s,), generator=torch.Generator().manual_seed(seed))


# --------------------------------------------------------------------------------------------------
# partitions


@pytest.mark.parametrize("kind", data.PARTITIONS)
def test_partition_puts_every_sample_in_exactly_one_agent(kind):
    labels = random_labels(1003)
    p = data.partition(labels, 7, kind, alpha=0.3, shards_per_agent=3, seed=1)
    assert len(p.indices) == 7 and all(i.dtype == torch.int64 for i in p.indices)
    assert torch.equal(torch.cat(p.indices).sort().values, torch.arange(1003))
    assert torch.equal(p.sizes(), torch.tensor([len(i) for i in p.indices]))
    hist = p.histogram(labels, 10)  # (N, classes)
    assert torch.equal(hist.sum(1), p.sizes())
    assert torch.equal(hist.sum(0), torch.bincount(labels, minlength=10))


def test_iid_sizes_differ_by_at_most_one():
    sizes = data.partition(random_labels(1003), 10, "iid").sizes()
    assert int(sizes.max() - sizes.min()) <= 1 and int(sizes.sum()) == 1003


def test_shards_give_each_agent_at_most_shards_per_agent_classes():
    labels = torch.arange(10).repeat_interleave(40)  # label-sorted, 40 a class: shards of 10 are pure
    p = data.partition(labels, 20, "shards", shards_per_agent=2, seed=3)
    hist = p.histogram(labels, 10)
    assert int((hist > 0).sum(1).max()) <= 2
    assert torch.equal(p.sizes(), torch.full((20,), 20))


def test_dirichlet_alpha_controls_label_skew():
    labels = random_labels(20000)

    def top_share(alpha):
        hist = data.partition(labels, 10, "dirichlet", alpha=alpha, seed=0).histogram(labels, 10).double()
        return (hist.max(1).values / hist.sum(1)).mean().item()

    assert top_share(1000.0) < 0.13  # near the uniform 0.1
    assert top_share(0.05) > 0.6  # most of an agent's samples come from one class
    p = data.partition(labels, 10, "dirichlet", alpha=0.05, seed=0, min_size=50)
    assert int(p.sizes().min()) >= 50


@pytest.mark.parametrize("kind", data.PARTITIONS)
def test_partition_is_deterministic_in_seed(kind):
    labels = random_labels(500)
    a, b, c = (data.partition(labels, 5, kind, seed=s).indices for s in (4, 4, 5))
    assert all(torch.equal(x, y) for x, y in zip(a, b, strict=True))
    assert not all(torch.equal(x, y) for x, y in zip(a, c, strict=True))


@pytest.mark.parametrize("kw", [dict(kind="bogus"), dict(kind="dirichlet", alpha=0.0),
                                dict(kind="dirichlet", alpha=-1), dict(n=0), dict(n=101),
                                dict(kind="shards", shards_per_agent=0),
                                dict(kind="shards", shards_per_agent=30)])
def test_partition_rejects_bad_arguments_in_one_line(kw):
    kw = {"n": 5, **kw}
    with pytest.raises(ConfigError) as e:
        data.partition(random_labels(100), kw.pop("n"), **kw)
    one_line(e)


def test_describe_reports_sizes_and_histogram():
    labels = random_labels(600)
    text = data.partition(labels, 30, "dirichlet", alpha=0.5).describe(labels, 10)
    lines = text.splitlines()
    assert "30 agents" in lines[0] and "min" in lines[0] and "median" in lines[0] and "max" in lines[0]
    assert len(lines) <= 16  # rows elided past max_rows
    labels100 = random_labels(2000, classes=100)
    assert "top labels" in data.partition(labels100, 4).describe(labels100, 100)


# --------------------------------------------------------------------------------------------------
# sampler


def custom_partition(sizes: list[int], seed: int = 0) -> data.Partition:
    perm = torch.randperm(sum(sizes), generator=torch.Generator().manual_seed(seed))
    return data.Partition(list(perm.split(sizes)))


def streams(sampler: data.Sampler, rounds: int) -> torch.Tensor:
    return torch.cat([sampler.sample(t) for t in range(rounds)], dim=1)  # (N, rounds * B)


@pytest.mark.parametrize("sizes, b", [([7, 10, 13], 4), ([3, 5, 50], 8), ([4, 8, 9], 4), ([1, 2, 17], 5),
                                      ([6, 6, 6], 6)])
def test_sampler_epochs_cover_each_shard_exactly_once(sizes, b):
    part = custom_partition(sizes)
    rounds = 3 * max(sizes) // b + 4
    s = streams(data.Sampler(part, b, seed=0, device="cpu"), rounds)
    assert s.shape == (3, rounds * b) and s.dtype == torch.int64
    for i, shard in enumerate(part.indices):
        L = len(shard)
        epochs = s[i, : (s.shape[1] // L) * L].view(-1, L)  # every complete epoch of agent i
        assert len(epochs) >= 3
        for e in epochs:
            assert torch.equal(e.sort().values, shard.sort().values)
        if L >= 6:  # a fresh permutation each epoch (a repeat has chance 1/720 or less)
            assert not any(torch.equal(e, f) for e, f in zip(epochs[:-1], epochs[1:], strict=True))


def test_sampler_batch_crosses_epoch_boundary():
    part = custom_partition([5])
    sampler = data.Sampler(part, 3, seed=0, device="cpu")
    b0, b1 = sampler.sample(0)[0], sampler.sample(1)[0]  # b1 = last 2 of epoch 0, first of epoch 1
    epoch0 = torch.cat([b0, b1[:2]])
    assert torch.equal(epoch0.sort().values, part.indices[0].sort().values)
    assert int(b1[2]) in part.indices[0].tolist()


def test_sampler_batch_larger_than_shard():
    part = custom_partition([2, 3])
    s = data.Sampler(part, 7, seed=1, device="cpu").sample(0)  # (2, 7): 3.5 and 2.33 epochs
    for i, L in enumerate((2, 3)):
        for e in s[i, : (7 // L) * L].view(-1, L):
            assert torch.equal(e.sort().values, part.indices[i].sort().values)


def test_sampler_is_deterministic_in_seed():
    part = custom_partition([11, 20, 9])
    a, b, c = (streams(data.Sampler(part, 6, seed=s, device="cpu"), 12) for s in (3, 3, 4))
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_sampler_state_dict_round_trip_continues_identically():
    part = custom_partition([11, 20, 9, 2])
    ref = data.Sampler(part, 6, seed=3, device="cpu")
    for t in range(5):
        ref.sample(t)
    buf = io.BytesIO()
    torch.save(ref.state_dict(), buf)
    buf.seek(0)
    other = data.Sampler(part, 6, seed=99, device="cpu")
    other.load_state_dict(torch.load(buf, weights_only=True))
    for t in range(5, 20):
        assert torch.equal(ref.sample(t), other.sample(t))
    with pytest.raises(ConfigError) as e:
        data.Sampler(part, 5, seed=3, device="cpu").load_state_dict(ref.state_dict())
    one_line(e)


def test_sampler_rejects_misuse():
    part = custom_partition([4, 4])
    sampler = data.Sampler(part, 2, seed=0, device="cpu")
    with pytest.raises(ValueError):
        sampler.sample(1)  # rounds go in order
    with pytest.raises(ConfigError) as e:
        data.Sampler(part, 0, seed=0, device="cpu")
    one_line(e)
    with pytest.raises(ConfigError) as e:
        data.Sampler(data.Partition([torch.arange(3), torch.arange(0)]), 2, seed=0, device="cpu")
    assert "agent 1" in one_line(e)


# --------------------------------------------------------------------------------------------------
# the built-in dataset


@pytest.fixture(scope="module")
def synthetic():
    return data.load("synthetic")


def test_synthetic_shape_dtype_and_determinism(synthetic):
    train, test = synthetic
    assert (len(train), len(test)) == (12000, 2000)
    assert train.shape == (1, 28, 28) and train.classes == 10
    assert train.x.dtype == torch.uint8 and train.y.dtype == torch.int64
    assert torch.equal(torch.bincount(train.y, minlength=10) > 900, torch.ones(10, dtype=torch.bool))
    again, _ = data.synthetic()
    assert torch.equal(again.x, train.x) and torch.equal(again.y, train.y)
    other, _ = data.synthetic(seed=1)
    assert not torch.equal(other.x, train.x)
    assert train.mean == data.channel_stats(train.x)[0]


def test_normalize_matches_the_formula(synthetic):
    train, _ = synthetic
    xb = train.x[:64].view(4, 16, 1, 28, 28)
    for dtype in (torch.float32, torch.float64):
        z = train.normalize(xb, dtype)
        assert z.shape == xb.shape and z.dtype == dtype
        ref = (xb.double() / 255 - train.mean[0]) / train.std[0]
        torch.testing.assert_close(z.double(), ref, rtol=1e-5, atol=1e-5)
    z = train.normalize(train.x).double()
    assert abs(z.mean().item()) < 1e-3 and abs(z.std().item() - 1) < 1e-3
    moved = train.to("cpu")
    assert moved.x is not None and len(moved) == len(train)


# --------------------------------------------------------------------------------------------------
# readers on tiny files


def write_idx(path: Path, arr: np.ndarray) -> None:
    header = bytes([0, 0, 0x08, arr.ndim]) + struct.pack(f">{arr.ndim}I", *arr.shape)
    raw = header + arr.astype(np.uint8).tobytes()
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix == ".gz":
        with gzip.open(path, "wb") as f:
            f.write(raw)
    else:
        path.write_bytes(raw)


@pytest.mark.parametrize("ext", [".gz", ""])
def test_idx_reader_round_trip(tmp_path, ext):
    rng = np.random.default_rng(0)
    arrays = {"train-images-idx3-ubyte": rng.integers(0, 256, (6, 28, 28)), "train-labels-idx1-ubyte":
              rng.integers(0, 10, 6), "t10k-images-idx3-ubyte": rng.integers(0, 256, (3, 28, 28)),
              "t10k-labels-idx1-ubyte": rng.integers(0, 10, 3)}
    for stem, arr in arrays.items():
        write_idx(tmp_path / "MNIST" / "raw" / (stem + ext), arr)
    assert np.array_equal(data.read_idx(tmp_path / "MNIST" / "raw" / ("t10k-labels-idx1-ubyte" + ext)),
                          arrays["t10k-labels-idx1-ubyte"])
    train, test = data.load("mnist", data_dir=tmp_path)
    assert (len(train), len(test), train.shape) == (6, 3, (1, 28, 28))
    assert train.x.dtype == torch.uint8 and train.y.dtype == torch.int64
    assert np.array_equal(train.x[:, 0].numpy(), arrays["train-images-idx3-ubyte"])
    assert np.array_equal(test.y.numpy(), arrays["t10k-labels-idx1-ubyte"])
    assert train.mean == data.STATS["mnist"][0]
    (tmp_path / "bad").write_bytes(b"\x01\x02\x03\x04")
    with pytest.raises(ConfigError) as e:
        data.read_idx(tmp_path / "bad")
    one_line(e)


def test_cifar_pickle_reader(tmp_path):
    rng = np.random.default_rng(0)
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    written = {}
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        d = {b"data": rng.integers(0, 256, (2, 3072)).astype(np.uint8), b"labels": [int(v) for v in
             rng.integers(0, 10, 2)], b"batch_label": b"x"}
        written[name] = d
        with open(folder / name, "wb") as f:
            pickle.dump(d, f)
    train, test = data.load("cifar10", data_dir=tmp_path)
    assert (len(train), len(test), train.shape, train.classes) == (10, 2, (3, 32, 32), 10)
    assert np.array_equal(train.x[2:4].reshape(2, -1).numpy(), written["data_batch_2"][b"data"])
    assert test.y.tolist() == written["test_batch"][b"labels"]
    # CIFAR-100: 'train' / 'test' with fine labels
    folder = tmp_path / "cifar-100-python"
    folder.mkdir()
    for name, n in (("train", 4), ("test", 2)):
        with open(folder / name, "wb") as f:
            pickle.dump({b"data": np.zeros((n, 3072), np.uint8), b"fine_labels": list(range(90, 90 + n)),
                         b"coarse_labels": [0] * n}, f)
    train, test = data.load("cifar100", data_dir=tmp_path)
    assert train.classes == 100 and train.y.tolist() == [90, 91, 92, 93] and len(test) == 2


def write_mnist(folder: Path, ext: str = ".gz", **replace: np.ndarray) -> None:
    """Four small idx files (6 train, 3 test), any of them replaced by the array given for its stem."""
    rng = np.random.default_rng(0)
    arrays = {"train_images": rng.integers(0, 256, (6, 28, 28)), "train_labels": rng.integers(0, 10, 6),
              "t10k_images": rng.integers(0, 256, (3, 28, 28)), "t10k_labels": rng.integers(0, 10, 3)}
    for stem, arr in {**arrays, **replace}.items():
        split, kind = stem.split("_")
        write_idx(folder / f"{split}-{kind}-idx{3 if kind == 'images' else 1}-ubyte{ext}", arr)


@pytest.mark.parametrize("damage, needle", [
    (dict(train_labels=np.zeros(5)), "6 images ... labels"),  # fewer labels than images: samples dropped
    (dict(t10k_labels=np.full(3, 12)), "labels range over 12..12; mnist has classes 0..9"),
    (dict(train_images=np.zeros(6)), "train-images-idx3-ubyte.gz holds an array of shape (6,); expected 3"),
    ("cut", "cannot be read as gzip"),
    ("not gzip", "cannot be read as gzip"),
    ("header", "train-labels-idx1-ubyte.gz is truncated: cut inside its header of 1 dimensions"),
    ("float labels", "train-labels-idx1-ubyte.gz holds float32 values; expected integer labels"),
    (dict(t10k_images=np.zeros((3, 32, 32))), "train images are (1, 28, 28) (C, H, W), test images (1, 32, 32)"),
])
def test_broken_idx_files_are_one_line(damage, needle, tmp_path, monkeypatch):
    monkeypatch.setattr(data, "_SYSTEM_DIR", tmp_path / "nowhere")
    write_mnist(tmp_path, **(damage if isinstance(damage, dict) else {}))
    labels = tmp_path / "train-labels-idx1-ubyte.gz"
    if damage == "cut":
        labels.write_bytes(labels.read_bytes()[:-9])
    elif damage == "not gzip":
        labels.write_bytes(b"hello, not gzip")
    elif damage == "header":  # cut inside the dimensions
        labels.write_bytes(gzip.compress(bytes([0, 0, 0x08, 1, 0, 0])))
    elif damage == "float labels":
        labels.write_bytes(gzip.compress(bytes([0, 0, 0x0D, 1]) + struct.pack(">I", 6)
                                         + np.arange(6, dtype=">f4").tobytes()))
    with pytest.raises(ConfigError) as e:
        data.load("mnist", data_dir=tmp_path)
    msg = one_line(e)
    if "..." in needle:
        assert "(6, 1, 28, 28) images and (5,) labels" in msg and str(tmp_path) in msg, msg
    else:
        assert needle in msg, msg


class _Corrupt:
    """Pickles to a call that raises LookupError on loading: a corrupt pickle can raise almost anything."""

    def __reduce__(self):
        import codecs
        return codecs.decode, (b"x", "no-such-encoding")


@pytest.mark.parametrize("damage, needle", [
    ("cut", "data_batch_3 is not a readable pickle"),
    ("list", "data_batch_3 is not a CIFAR pickle with 'data' and 'labels'"),
    ("labels", "data_batch_3: data of shape (2, 3072) (uint8) and (3,) labels"),
    ("width", "data_batch_3: data of shape (2, 3000)"),
    ("missing", "cifar-10-batches-py lacks test_batch"),
    ("lookup", "data_batch_3 is not a readable pickle (LookupError)"),
])
def test_broken_cifar_files_are_one_line(damage, needle, tmp_path):
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        bad = damage if name == "data_batch_3" else None
        d = {b"data": np.zeros((2, 3000 if bad == "width" else 3072), np.uint8),
             b"labels": [1, 2, 3] if bad == "labels" else [1, 2]}
        raw = pickle.dumps(_Corrupt() if bad == "lookup" else [d] if bad == "list" else d)
        if not (damage == "missing" and name == "test_batch"):
            (folder / name).write_bytes(raw[:len(raw) // 2] if bad == "cut" else raw)
    with pytest.raises(ConfigError) as e:
        data.load("cifar10", data_dir=tmp_path)
    assert needle in one_line(e)


def test_a_data_dir_that_is_not_a_folder_is_refused(tmp_path):
    with pytest.raises(ConfigError) as e:
        data.load("fashion-mnist", data_dir=tmp_path / "typo")
    assert "data_dir" in one_line(e) and "is not a directory" in str(e.value)
    data.load("synthetic", data_dir=tmp_path / "typo")  # the built-in dataset reads no files
    # a folder without the files is looked in alone: never a quiet fall back on the system's copy
    for name in ("fashion-mnist", "cifar10"):
        with pytest.raises(ConfigError, match=f"dataset '{name}' not found") as e:
            data.load(name, data_dir=tmp_path)
        assert "/usr/share/datasets" not in str(e.value)


def test_imagefolder_decodes_once_then_hits_the_cache(tmp_path, monkeypatch):
    from PIL import Image

    colors = {"cat": (255, 0, 0), "dog": (0, 0, 255)}
    for split, count in (("train", 3), ("val", 1)):
        for c, rgb in colors.items():
            (tmp_path / split / c).mkdir(parents=True)
            for k in range(count):
                Image.new("RGB", (30 + 7 * k, 20 + 3 * k), rgb).save(tmp_path / split / c / f"{k}.png")
    train, test = data.load("imagefolder", data_dir=tmp_path, image_size=16)
    assert (len(train), len(test), train.shape, train.classes) == (6, 2, (3, 16, 16), 2)
    assert train.x.dtype == torch.uint8 and train.y.tolist() == [0, 0, 0, 1, 1, 1]
    red = torch.tensor([255, 0, 0], dtype=torch.uint8).view(3, 1, 1).expand(3, 16, 16)
    assert torch.equal(train.x[0], red)  # resized, cropped, colour kept
    assert train.mean == pytest.approx((0.5, 0.0, 0.5))
    assert list(tmp_path.glob(".gossipsim-cache-16px.pt"))

    def no_decoding(*args):
        raise AssertionError("decoded although the cache is valid")

    monkeypatch.setattr(data, "_decode_image", no_decoding)
    again, again_test = data.load("imagefolder", data_dir=tmp_path, image_size=16)
    assert torch.equal(again.x, train.x) and torch.equal(again_test.y, test.y)
    with pytest.raises(AssertionError):  # another size is another cache
        data.load("imagefolder", data_dir=tmp_path, image_size=8)


def test_an_imagefolder_test_split_is_shuffled_once_so_its_first_images_span_the_classes(tmp_path):
    from PIL import Image

    for split in ("train", "val"):
        for c in range(5):
            (tmp_path / split / f"c{c}").mkdir(parents=True)
            for k in range(4):
                Image.new("RGB", (8, 8), (50 * c, 0, 0)).save(tmp_path / split / f"c{c}" / f"{k}.png")
    train, test = data.load("imagefolder", data_dir=tmp_path, image_size=8)
    assert train.y.tolist() == sorted(train.y.tolist())  # the train split keeps the folders' order
    assert sorted(test.y.tolist()) == [c for c in range(5) for _ in range(4)]
    assert len(set(test.y[:8].tolist())) >= 3  # eval_samples=8 would have scored classes 0 and 1 only
    assert torch.equal(test.x[:, 0, 0, 0], (50 * test.y).to(torch.uint8))  # images moved with their labels
    _, again = data.load("imagefolder", data_dir=tmp_path, image_size=8)  # from the cache: the same order
    assert torch.equal(again.y, test.y)


def test_imagefolder_size_from_the_command_line(tmp_path, capsys):
    from PIL import Image

    from gossipsim.sim.cli import main

    for split, count in (("train", 4), ("val", 2)):
        for c in ("a", "b"):
            (tmp_path / split / c).mkdir(parents=True)
            for k in range(count):
                Image.new("RGB", (40, 30), (40 * k, 0, 200)).save(tmp_path / split / c / f"{k}.png")
    args = ["run", "--dataset=imagefolder", f"--data_dir={tmp_path}", "--image_size=12", "--agents=2",
            "--rounds=1", "--batch_size=2", "--progress=false", f"--out={tmp_path / 'run'}"]
    assert main(args) == 0
    assert "data: imagefolder from" in capsys.readouterr().err
    assert "8 train and 4 test images of 3x12x12, 2 classes" in (tmp_path / "run" / "partition.txt").read_text()
    assert main(["run", "--dataset=mnist", "--image_size=12"]) == 2
    assert "image_size=12 is for dataset imagefolder" in capsys.readouterr().err


def test_imagefolder_errors(tmp_path):
    with pytest.raises(ConfigError) as e:
        data.load("imagefolder")
    one_line(e)
    with pytest.raises(ConfigError) as e:
        data.load("imagefolder", data_dir=tmp_path)
    assert "train/" in one_line(e)
    from PIL import Image

    for split in ("train", "val"):
        (tmp_path / split / "cat").mkdir(parents=True)
        Image.new("RGB", (8, 8)).save(tmp_path / split / "cat" / "0.png")
    (tmp_path / "train" / "empty").mkdir()  # would be a class with no sample
    with pytest.raises(ConfigError) as e:
        data.load("imagefolder", data_dir=tmp_path, image_size=8)
    assert "class folder(s) empty in" in one_line(e)


@pytest.mark.skipif(not FASHION.is_dir(), reason="needs the Debian package dataset-fashion-mnist")
def test_real_fashion_mnist():
    train, test = data.load("fashion-mnist")
    assert (len(train), len(test)) == (60000, 10000)
    assert train.shape == (1, 28, 28) and train.x.dtype == torch.uint8 and train.y.dtype == torch.int64
    assert torch.equal(torch.bincount(train.y), torch.full((10,), 6000))
    assert train.mean == (0.2860,) and train.std == (0.3530,)


def test_missing_and_unknown_datasets_fail_in_one_line(tmp_path, monkeypatch):
    monkeypatch.setattr(data, "_SYSTEM_DIR", tmp_path / "nowhere")
    with pytest.raises(ConfigError) as e:
        data.load("fashion-mnist", data_dir=tmp_path)
    msg = one_line(e)
    assert str(tmp_path) in msg and "apt-get install dataset-fashion-mnist" in msg
    for name in ("mnist", "cifar10", "cifar100"):
        with pytest.raises(ConfigError) as e:
            data.load(name, data_dir=tmp_path)
        assert str(tmp_path) in one_line(e)
    with pytest.raises(ConfigError) as e:
        data.load("imagenet")
    assert all(n in one_line(e) for n in data.DATASETS)
    with pytest.raises(ConfigError) as e:
        data.load("synthetic", image_size=3)
    one_line(e)


# --------------------------------------------------------------------------------------------------
# augmentation


def test_augment_flip_only_mirrors_or_keeps_each_sample():
    xb = torch.randn(3, 8, 2, 5, 6, generator=torch.Generator().manual_seed(0))
    out = data.augment(xb, torch.Generator().manual_seed(1), pad=0, flip=True)
    assert out.shape == xb.shape and out.dtype == xb.dtype
    same = (out == xb).flatten(2).all(2)  # (N, B)
    mirrored = (out == xb.flip(-1)).flatten(2).all(2)
    assert bool((same | mirrored).all()) and bool(same.any()) and bool(mirrored.any())
    assert torch.equal(data.augment(xb, torch.Generator().manual_seed(0), pad=0, flip=False), xb)


def test_the_engine_pads_augmented_crops_black(tmp_path):
    from tests.test_engine import tiny

    engine = sim.build(tiny(tmp_path, augment=True))
    engine.train = dataclasses.replace(engine.train, x=torch.full_like(engine.train.x, 255))  # all white
    xb, _ = engine._inputs(torch.zeros(4, 64, dtype=torch.long))
    mean, std = engine.train.mean[0], engine.train.std[0]
    white, black = (1 - mean) / std, (0 - mean) / std
    assert xb.unique().tolist() == pytest.approx([black, white], rel=1e-6)  # not 0, the mean colour


def test_augment_crop_is_a_shift_of_the_zero_padded_image():
    xb = torch.randn(2, 10, 3, 4, 5, generator=torch.Generator().manual_seed(0))
    out = data.augment(xb, torch.Generator().manual_seed(2), pad=1, flip=True)
    padded = torch.nn.functional.pad(xb, (1, 1, 1, 1))
    shifts = set()
    for n in range(2):
        for b in range(10):
            crops = {(dy, dx): padded[n, b, :, dy:dy + 4, dx:dx + 5] for dy in range(3) for dx in range(3)}
            hits = [at for at, c in crops.items()
                    if torch.equal(out[n, b], c) or torch.equal(out[n, b], c.flip(-1))]
            assert hits, (n, b)
            shifts.add(hits[0])
    assert len(shifts) > 3  # the offsets vary per sample
    again = data.augment(xb, torch.Generator().manual_seed(2), pad=1, flip=True)
    assert torch.equal(out, again)
