import os
from pathlib import Path

import pytest
import torch

if not torch.cuda.is_available():  # Triton kernels run on the CPU through the interpreter (set before any import)
    os.environ.setdefault("TRITON_INTERPRET", "1")

if os.environ.get("PYTEST_XDIST_WORKER") and os.cpu_count() and os.cpu_count() <= 2:
    # pytest -n 2 on two cores: one thread per worker process, not two workers fighting over both cores
    torch.set_num_threads(1)


REPO_RUNS = Path(__file__).resolve().parents[1] / "runs"


@pytest.fixture(autouse=True)
def writes_no_runs_into_the_tree(request):
    """A test that builds an engine without out= would leave a default run directory in the checkout's runs/."""
    before = set(REPO_RUNS.iterdir()) if REPO_RUNS.is_dir() else set()
    yield
    after = set(REPO_RUNS.iterdir()) if REPO_RUNS.is_dir() else set()
    assert after <= before, f"{request.node.nodeid} wrote {sorted(p.name for p in after - before)} into {REPO_RUNS}"


@pytest.fixture
def fresh_seed(request) -> int:
    """A fresh random seed for every check, reported in the test id on failure via the assertion message."""
    seed = int.from_bytes(os.urandom(4), "little")
    torch.manual_seed(seed)
    return seed


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)
