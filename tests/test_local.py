"""LocalSGD against torch.optim.SGD, and the learning-rate schedules against torch's schedulers."""
from __future__ import annotations

import pytest
import torch

from gossipsim import ConfigError
from gossipsim.sim import local


@pytest.mark.parametrize("momentum,nesterov,wd", [(0.0, False, 0.0), (0.9, False, 1e-4), (0.9, True, 5e-4),
                                                  (0.5, True, 0.0)])
def test_local_sgd_equals_torch_sgd_per_row(momentum, nesterov, wd, fresh_seed):
    n, p, lr = 3, 7, 0.05
    x = torch.randn(n, p, dtype=torch.float64)
    opt = local.LocalSGD(momentum, nesterov, wd)
    buf = opt.init(x)
    params = [torch.nn.Parameter(row.clone()) for row in x]
    torch_opts = [torch.optim.SGD([q], lr=lr, momentum=momentum, nesterov=nesterov, weight_decay=wd) for q in params]
    for _ in range(5):
        g = torch.randn(n, p, dtype=torch.float64)
        d, buf = opt.direction(x, g, buf)
        x = x - lr * d
        for q, o, gi in zip(params, torch_opts, g):
            q.grad = gi.clone()
            o.step()
    torch.testing.assert_close(x, torch.stack([q.detach() for q in params]), rtol=1e-12, atol=1e-14,
                               msg=lambda m: f"seed {fresh_seed}: {m}")


def _torch_lrs(make_sched, lr, rounds):
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=lr)
    sched = make_sched(opt)
    out = []
    for _ in range(rounds):
        out.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    return torch.tensor(out, dtype=torch.float64)


def test_multistep_and_cosine_equal_torch_schedulers():
    rounds = 40
    ours = torch.stack([local.multistep(0.1, [10, 25], 0.2)(t) for t in range(rounds)])
    ref = _torch_lrs(lambda o: torch.optim.lr_scheduler.MultiStepLR(o, [10, 25], 0.2), 0.1, rounds)
    torch.testing.assert_close(ours, ref, rtol=1e-12, atol=1e-15)
    ours = torch.stack([local.cosine(0.1, rounds, final=0.001)(t) for t in range(rounds)])
    ref = _torch_lrs(lambda o: torch.optim.lr_scheduler.CosineAnnealingLR(o, rounds, eta_min=0.001), 0.1, rounds)
    torch.testing.assert_close(ours, ref, rtol=1e-10, atol=1e-13)


def test_warmup_and_tensor_rounds():
    s = local.warmup(local.constant(0.4), 4)
    assert [round(float(s(t)), 12) for t in range(6)] == [0.1, 0.2, 0.3, 0.4, 0.4, 0.4]
    for sched in (s, local.multistep(0.1, [3]), local.cosine(0.1, 10)):
        for t in range(6):
            assert sched(torch.tensor(t)).dtype == torch.float64
            assert float(sched(torch.tensor(t))) == float(sched(t))


@pytest.mark.parametrize("bad", [dict(momentum=1.0), dict(momentum=-0.1), dict(weight_decay=-1.0),
                                 dict(nesterov=True)])
def test_bad_optimizer_settings(bad):
    with pytest.raises(ConfigError):
        local.LocalSGD(**bad)


@pytest.mark.parametrize("lr", [0, -0.1, float("nan"), "0.1"])
def test_bad_learning_rates(lr):
    with pytest.raises(ConfigError):
        local.constant(lr)
