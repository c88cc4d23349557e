"""The model zoo: shapes, parameter counts, meta-device builds, and vmap agreement with a per-copy loop."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call, grad, stack_module_state, vmap

from gossipsim.errors import ConfigError
from gossipsim.sim import models

MNIST = {"in_channels": 1, "image_size": 28}
CIFAR = {"in_channels": 3, "image_size": 32}
# Every registered model plus the resnet20 norm variants, so the registry drives the suite.
VARIANTS = [(name, {}) for name in models.names()] + [
    ("resnet20", {"norm": "gn"}),
    ("resnet20", {"norm": "none"}),
]
VARIANT_IDS = [name + "".join(f"-{v}" for v in kw.values()) for name, kw in VARIANTS]


def n_params(m: nn.Module) -> int:
    return sum(p.numel() for p in m.parameters())


@pytest.mark.parametrize("shape", [MNIST, CIFAR], ids=["1x28x28", "3x32x32"])
@pytest.mark.parametrize("name", models.names())
def test_forward_shape(name: str, shape: dict[str, int]) -> None:
    torch.manual_seed(0)
    # 7 classes so that no factory can get away with a hard-coded 10.
    m = models.make(name, num_classes=7, **shape)
    x = torch.randn(2, shape["in_channels"], shape["image_size"], shape["image_size"])  # (B, C, H, W)
    assert m(x).shape == (2, 7)


@pytest.mark.parametrize(
    ("name", "kwargs", "lo", "hi"),
    [
        ("resnet20", {"norm": "bn"}, 260_000, 280_000),
        ("resnet18", {}, 11_100_000, 11_200_000),
        ("mobilenet_v2", {}, 2_200_000, 2_400_000),
    ],
)
def test_param_count_range(name: str, kwargs: dict, lo: int, hi: int) -> None:
    assert lo <= n_params(models.make(name, **kwargs)) <= hi


@pytest.mark.parametrize(
    ("name", "kwargs", "expected"),
    [
        # conv1 1*6*25+6, conv2 6*16*25+16, fc 400*120+120, 120*84+84, 84*10+10
        ("lenet5", MNIST, 156 + 2_416 + 48_120 + 10_164 + 850),
        ("lenet5", CIFAR, 456 + 2_416 + 48_120 + 10_164 + 850),
        ("mlp", MNIST, 199_210),  # the count McMahan et al. report for their 2NN
        ("mlp", {}, 199_210),
        ("resnet20", {}, 272_474),  # 269,722 of option A + two 1x1 conv + BN projections
        ("resnet18", {}, 11_173_962),  # kuangliu/pytorch-cifar ResNet18
        ("mobilenet_v2", {}, 2_296_922),  # kuangliu/pytorch-cifar MobileNetV2
    ],
)
def test_param_count_exact(name: str, kwargs: dict, expected: int) -> None:
    assert n_params(models.make(name, num_classes=10, **kwargs)) == expected


def test_lenet5_classic_count() -> None:
    assert n_params(models.lenet5(in_channels=1, num_classes=10, image_size=28)) == 61_706


def test_gn_groups() -> None:
    groups = {
        m.num_channels: m.num_groups
        for m in models.resnet20(norm="gn").modules()
        if isinstance(m, nn.GroupNorm)
    }
    assert groups == {16: 4, 32: 8, 64: 16}
    fixed = models.resnet20(norm="gn", gn_groups=2).modules()
    assert {m.num_groups for m in fixed if isinstance(m, nn.GroupNorm)} == {2}


@pytest.mark.parametrize(("name", "kwargs"), VARIANTS, ids=VARIANT_IDS)
def test_builds_on_meta(name: str, kwargs: dict) -> None:
    with torch.device("meta"):
        m = models.make(name, **CIFAR, **kwargs)
        out = m(torch.empty(2, 3, 32, 32))
    assert all(t.is_meta for t in [*m.parameters(), *m.buffers()])
    assert out.shape == (2, 10) and out.is_meta
    # Default momentum keeps running statistics an exponential average the engine can carry per agent.
    assert all(b.momentum is not None for b in m.modules() if isinstance(b, nn.modules.batchnorm._BatchNorm))


# Train mode for all (BatchNorm then normalizes by batch statistics and writes running stats, the hard
# case); eval mode once, on the cheapest BatchNorm model, to cover reading batched running stats.
VMAP_CASES = [(name, kw, True) for name, kw in VARIANTS] + [("resnet20", {}, False)]
VMAP_IDS = [f"{i}-train" for i in VARIANT_IDS] + ["resnet20-eval"]


@pytest.mark.parametrize(("name", "kwargs", "train"), VMAP_CASES, ids=VMAP_IDS)
def test_vmap_matches_per_copy_loop(name: str, kwargs: dict, train: bool) -> None:
    """vmap(grad) over 3 stacked copies equals each copy run alone: logits, gradients, BN buffers."""
    copies, size = 3, 16  # 16x16 keeps resnet18/mobilenet_v2 in float64 fast; all models accept it
    shape = {"in_channels": 3, "image_size": size, "num_classes": 5}
    agents = []
    for seed in range(copies):
        torch.manual_seed(seed)
        agents.append(models.make(name, **shape, **kwargs).double().train(train))
    params, buffers = stack_module_state(agents)  # each (copies, *shape)
    with torch.device("meta"):
        template = models.make(name, **shape, **kwargs).train(train)
    torch.manual_seed(100)
    x = torch.randn(copies, 2, 3, size, size, dtype=torch.float64)  # (copies, B, C, H, W)
    y = torch.randint(0, 5, (copies, 2))  # (copies, B)

    def loss_of_one(p: dict, b: dict, xi: torch.Tensor, yi: torch.Tensor):
        # BatchNorm updates running stats in place; the clone keeps the stacked inputs untouched.
        b = {k: v.clone() for k, v in b.items()}
        logits = functional_call(template, (p, b), (xi,))  # (B, classes)
        return F.cross_entropy(logits, yi), (logits, b)

    grads, (logits, new_buffers) = vmap(grad(loss_of_one, has_aux=True))(params, buffers, x, y)

    for i, agent in enumerate(agents):
        ref = copy.deepcopy(agent)
        out = ref(x[i])
        ref_grads = torch.autograd.grad(F.cross_entropy(out, y[i]), list(ref.parameters()))
        torch.testing.assert_close(logits[i], out, atol=1e-10, rtol=0)
        for (key, _), g in zip(ref.named_parameters(), ref_grads, strict=True):
            torch.testing.assert_close(grads[key][i], g, atol=1e-10, rtol=0, msg=f"grad {key}")
        for key, b in ref.named_buffers():
            torch.testing.assert_close(new_buffers[key][i], b, atol=1e-10, rtol=0, msg=f"buffer {key}")
    for key, b in buffers.items():  # the caller's stacked buffers were not written through
        torch.testing.assert_close(b, torch.stack([dict(a.named_buffers())[key] for a in agents]))


def test_unknown_model_name() -> None:
    with pytest.raises(ConfigError, match="'resnet21'.*accepted: lenet5, mlp") as e:
        models.make("resnet21")
    assert "\n" not in str(e.value)


@pytest.mark.parametrize("factory", [models.resnet20, models.resnet18])
def test_bad_norm(factory) -> None:
    with pytest.raises(ConfigError, match="'batch'.*accepted: bn, gn, none") as e:
        factory(norm="batch")
    assert "\n" not in str(e.value)
    with pytest.raises(ConfigError, match="'batch'"):
        models.make(factory.__name__, norm="batch")


@pytest.mark.parametrize(
    ("name", "kwargs", "match"),
    [
        ("mlp", {"depth": 3}, "'depth'"),
        ("mlp", {"in_features": 100, "in_channels": 3, "image_size": 32}, "contradicts"),
        ("lenet5", {"image_size": 8}, "image_size=8"),
        ("resnet20", {"num_classes": 0}, "num_classes"),
        ("resnet20", {"norm": "bn", "gn_groups": 2}, "gn_groups"),
        ("resnet20", {"norm": "gn", "gn_groups": 3}, "divide"),
        ("mobilenet_v2", {"width_mult": 0}, "width_mult"),
    ],
)
def test_bad_arguments(name: str, kwargs: dict, match: str) -> None:
    with pytest.raises(ConfigError, match=match) as e:
        models.make(name, **kwargs)
    assert "\n" not in str(e.value)


def test_registry() -> None:
    assert models.names() == sorted(models.MODELS)
    assert set(models.names()) == {"mlp", "lenet5", "resnet20", "resnet18", "mobilenet_v2"}
    assert isinstance(models.make("mlp", in_channels=1, image_size=28, num_classes=10), nn.Module)


def test_a_registered_factory_gets_the_datasets_shapes(tmp_path, monkeypatch) -> None:
    """A factory gets the arguments its signature names; one with **kwargs gets all three (it got none, and
    built its defaults' head whatever the dataset)."""
    from gossipsim import sim

    seen = {}

    def wrapper(**kw):
        seen["wrapper"] = kw
        return models.mlp(**kw)

    def named(num_classes, image_size):
        seen["named"] = dict(num_classes=num_classes, image_size=image_size)
        return models.mlp(num_classes=num_classes, image_size=image_size)

    monkeypatch.setitem(models.MODELS, "wrapper", wrapper)
    monkeypatch.setitem(models.MODELS, "named", named)
    for name in ("wrapper", "named"):
        sim.build(sim.Config.from_dict(dict(model=name, dataset="synthetic", agents=2, rounds=1, progress=False,
                                            out=str(tmp_path / name))))
    engine_shape = sim.data.load("synthetic", None)[0]
    c, h, _ = engine_shape.shape
    assert seen["wrapper"] == dict(in_channels=c, image_size=h, num_classes=engine_shape.classes)
    assert seen["named"] == dict(num_classes=engine_shape.classes, image_size=h)
