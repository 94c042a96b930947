"""Every collective takes tensors on its process group's device. NCCL serves CUDA tensors only,
so a tensor made on the CPU for a collective crashes the first GPU job; gloo on CPU accepts it,
so the multi-process tests cannot see it. Two checks stand in for a GPU:

- a fake CUDA-only backend (the meta device stands in for CUDA: nothing else exists here) runs
  each site that reduces Python numbers and refuses any tensor not on its device;
- a scan of the source: a collective call outside the reviewed sites (gradients, parameters and
  their partitions, which live on the model's device) fails until it is reviewed, so a new
  `dist.all_reduce(torch.tensor(...))` cannot slip in.
"""

import ast
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
from paths import ROOT
from torch import nn

from lomo import loss, sync
from lomo.train import distributed

FAKE_GPU = torch.device("meta")  # holds no values: the fake backend stops at the collective
COLLECTIVES = ("all_reduce", "broadcast", "reduce_scatter_tensor", "all_gather_into_tensor")


class CollectiveReached(Exception):
    """The fake backend accepted the tensor (it cannot compute on meta tensors: stop here)."""


@pytest.fixture
def cuda_only_backend(monkeypatch):
    """One rank of a process group whose backend, like NCCL, takes tensors of one device only."""

    def refuse_other_devices(tensor, *args, **kwargs):
        if tensor.device != FAKE_GPU:
            raise RuntimeError(f"the backend takes {FAKE_GPU} tensors only, got {tensor.device}")
        raise CollectiveReached

    for name in COLLECTIVES:
        monkeypatch.setattr(dist, name, refuse_other_devices)
    monkeypatch.setattr(dist, "is_initialized", lambda: True)
    monkeypatch.setattr(dist, "get_world_size", lambda group=None: 1)
    monkeypatch.setattr(dist, "get_rank", lambda group=None: 0)
    monkeypatch.setattr(sync, "collective_device", lambda group=None: FAKE_GPU)


def sum_a_number():
    distributed.all_sum(3.0)


def balance_forward_counts():  # sharded ZeRO-3 evaluation evens out the ranks' forwards
    model = nn.Linear(2, 2)
    distributed.evaluate_sharded(model, [{"i": 0}], lambda shard: [{"pred": 0}], None, zero3=True)


def agree_on_loss_chunks():  # the chunked loss under a ZeRO-3 partitioned head
    head = nn.Linear(4, 8, bias=False)
    head.weight.ds_id, head.weight.ds_process_group = 0, None
    loss._zero3_chunk_count(head, 3)


@pytest.mark.parametrize("site", [sum_a_number, balance_forward_counts, agree_on_loss_chunks])
def test_collectives_on_numbers_take_the_groups_device(cuda_only_backend, site):
    with pytest.raises(CollectiveReached):
        site()


@pytest.mark.parametrize(
    ("backend", "expected"),
    [("nccl", "cuda:3"), ("cpu:gloo,cuda:nccl", "cuda:3"), ("gloo", "cpu")],
)
def test_collective_device_follows_the_backend(monkeypatch, backend, expected):
    monkeypatch.setattr(dist, "get_backend", lambda group=None: backend)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 3)
    assert sync.collective_device() == torch.device(expected)


def test_numbers_are_reduced_on_a_real_group(monkeypatch):
    """The helper on a real (one-process, gloo) group returns the reduced Python numbers."""
    monkeypatch.setenv("MASTER_ADDR", "127.0.0.1")
    monkeypatch.setenv("MASTER_PORT", str(29_400 + torch.randint(0, 500, ()).item()))
    dist.init_process_group("gloo", rank=0, world_size=1)
    try:
        assert sync.all_reduce_numbers([2.5, 7]) == [2.5, 7.0]
        assert distributed.all_sum(4.0) == 4.0
    finally:
        dist.destroy_process_group()


# Collective calls whose tensors are gradients, parameters or their partitions (on the model's
# device by construction), and the one helper that makes tensors from Python numbers.
REVIEWED = {
    ("lomo/sync.py", "ReplicatedSync.sum_over_ranks"): 1,
    ("lomo/sync.py", "ZeRO3Sync.sum_over_ranks"): 2,
    (
        "lomo/sync.py",
        "ZeRO3Sync.sum_over_shards",
    ): 1,  # a sum of squares made on the parameter's device
    ("lomo/sync.py", "refresh_persistent"): 1,
    ("lomo/sync.py", "all_reduce_numbers"): 1,
    ("lomo/train/runtime.py", "Runtime.sum_gradients"): 1,
    ("lomo/train/distributed.py", "broadcast_parameters"): 1,
}


def collective_calls(path: Path) -> dict[tuple[str, str], int]:
    """(file, Class.function or function) -> the number of tensor collectives called in it."""
    counts: dict[tuple[str, str], int] = {}
    tree = ast.parse(path.read_text())
    functions = [(node.name, node) for node in tree.body if isinstance(node, ast.FunctionDef)]
    for cls in (node for node in tree.body if isinstance(node, ast.ClassDef)):
        methods = (node for node in cls.body if isinstance(node, ast.FunctionDef))
        functions += [(f"{cls.name}.{method.name}", method) for method in methods]
    for name, function in functions:
        for node in ast.walk(function):
            is_call = isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
            if is_call and node.func.attr in COLLECTIVES + ("reduce", "all_gather", "scatter"):
                key = (path.relative_to(ROOT).as_posix(), name)
                counts[key] = counts.get(key, 0) + 1
    return counts


def test_every_collective_call_is_reviewed():
    found: dict[tuple[str, str], int] = {}
    for folder in ("lomo", "tasks", "scripts"):
        for path in sorted((ROOT / folder).rglob("*.py")):
            found |= collective_calls(path)
    unreviewed = {site: n for site, n in found.items() if REVIEWED.get(site) != n}
    assert not unreviewed, (
        f"collective calls outside the reviewed sites: {unreviewed}. A tensor made from Python "
        "numbers must go through lomo.sync.all_reduce_numbers (NCCL takes CUDA tensors only); a "
        "gradient or parameter collective is added to REVIEWED"
    )
    assert found == REVIEWED  # and no reviewed site has gone
