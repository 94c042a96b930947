"""The memory census against byte counts worked out by hand.

tiny_llama (tests/tiny_models.py): vocab 128, hidden 32, MLP 64, 2 layers, 4 heads of 8, 2 KV
heads (k/v projections 32 -> 16), untied embedding and head. Parameters:
  embedding 128*32 = 4096, head 4096, final norm 32;
  per layer: q 32*32 = 1024, k 512, v 512, o 1024, gate 2048, up 2048, down 2048, 2 norms 64
  = 9280; total 8192 + 32 + 2*9280 = 26784 elements in 21 tensors (9 per layer + 3).
"""

import pytest
import torch
from tiny_models import tiny_llama, token_batches
from torch import nn
from transformers import LlamaForCausalLM

from lomo.measure.census import MemoryCensus, ProcessPeak, proc_status_bytes
from lomo.measure.workloads import MasterWeightOptimizer, make_step, optimizer_state_tensors

N_PARAMS = 26784
N_TENSORS = 21
EMBEDDING = 128 * 32  # the largest single parameter (the head has the same size)


def measure(
    name: str,
    dtype: torch.dtype,
    ac: bool = False,
    seq_len: int = 12,
    model: nn.Module | None = None,
    chunked_loss: bool = True,
) -> MemoryCensus:
    torch.set_num_threads(1)
    model = model if model is not None else tiny_llama(dtype=dtype)
    model.config.use_cache = False
    if ac:
        model.activation_checkpointing_enable({"use_reentrant": True})
    tokens = token_batches(1, seq_len=seq_len)[0]
    census = MemoryCensus(model)
    step, optimizer = make_step(
        name, False, model, tokens, master_weights=True, chunked_loss=chunked_loss
    )
    step()  # warm-up: optimizer state appears
    census.track_state(optimizer_state_tensors(optimizer))
    with census:
        step()
    return census


def test_adamw_fp32_params_grads_and_two_moments():
    peak = measure("adamw", torch.float32).category_peak
    assert peak["parameters"] == 4 * N_PARAMS == 107136
    assert peak["gradients"] == 4 * N_PARAMS
    # exp_avg + exp_avg_sq in fp32, plus one fp32 scalar `step` per tensor
    assert peak["optimizer_states"] == 8 * N_PARAMS + 4 * N_TENSORS == 214356


def test_mixed_precision_sgd_and_adamw_keep_fp32_master_weights():
    sgd = measure("sgd", torch.bfloat16).category_peak
    assert sgd["parameters"] == 2 * N_PARAMS
    assert sgd["gradients"] == 2 * N_PARAMS
    assert sgd["optimizer_states"] == 4 * N_PARAMS  # master weights only (no momentum)
    adamw = measure("adamw", torch.bfloat16).category_peak
    assert adamw["optimizer_states"] == 12 * N_PARAMS + 4 * N_TENSORS  # 6x the bf16 params


def test_lomo_holds_only_the_largest_gradient():
    for name in ("lomo", "lomo-optim"):
        peak = measure(name, torch.bfloat16).category_peak
        assert peak["gradients"] == 2 * EMBEDDING, name
        assert peak["optimizer_states"] == 0, name


def test_adalomo_factored_state():
    # Row + column second moments (fp32) per matrix, a full one per vector:
    # embedding/head 128+32 each; per layer q 32+32, k 16+32, v 16+32, o 32+32, gate 64+32,
    # up 64+32, down 32+64, norms 32+32 = 576; final norm 32.
    peak = measure("adalomo", torch.float32).category_peak
    assert peak["optimizer_states"] == 4 * (2 * 160 + 2 * 576 + 32) == 6016
    assert peak["gradients"] == 4 * EMBEDDING


def head_heavy_llama(dtype: torch.dtype) -> LlamaForCausalLM:
    """Embedding and head of 8192 x 32 dominate: the step's peak is at their update."""
    return tiny_llama(dtype=dtype, vocab=8192)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_adalomo_update_needs_no_more_memory_than_lomo_optims(monkeypatch, dtype):
    """Peak of a step whose peak is the update of an 8192 x 32 matrix. lomo-optim's AdaLomo
    holds three fp32 copies of it at once (gradient, update, and the weight's fp32 copy or a
    second update); ours two (fp32 gradient, then the squares or the weight's fp32 copy): at
    most one more than LOMO, whose fp32 update needs none besides the gradient."""
    monkeypatch.setattr(torch.Tensor, "cuda", lambda self, *args, **kwargs: self)
    matrix = 8192 * 32
    peaks = {
        name: measure(name, dtype, seq_len=4, model=head_heavy_llama(dtype)).peak
        for name in ("lomo", "adalomo", "adalomo-optim")
    }
    # Factored state: 8192 + 32 values per matrix, and small vectors, all fp32.
    assert peaks["adalomo"] <= peaks["lomo"] + 4 * matrix + 4 * 2 * (8192 + 32) + 4 * 2**12
    # lomo-optim: one fp32 copy of the matrix more (small tensors aside)
    assert peaks["adalomo-optim"] >= peaks["adalomo"] + 4 * matrix - 4 * 2**12


def test_saved_activations_of_a_two_layer_mlp():
    # Linear(8,16) saves its input x (4x8 fp32), tanh saves its output (4x16), which is also
    # what the second Linear saves; the weights it saves are parameters.
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 16, bias=False), nn.Tanh(), nn.Linear(16, 1, bias=False))
    x = torch.randn(4, 8)
    census = MemoryCensus(model)
    with census:
        model(x).sum().backward()
    assert census.category_peak["activations"] == 4 * (4 * 8 + 4 * 16)
    assert census.category_peak["parameters"] == 4 * (8 * 16 + 16)
    assert census.category_peak["gradients"] == 4 * (8 * 16 + 16)  # .grad stays alive
    assert sum(census.at_peak.values()) == census.peak


def test_freed_tensors_leave_the_count():
    model = nn.Linear(2, 2, bias=False)
    census = MemoryCensus(model)
    with census:
        temporary = torch.empty(1000, dtype=torch.float32)
        assert census.current["other"] == 4000
        del temporary
        assert census.current["other"] == 0
    assert census.category_peak["other"] == 4000
    assert census.peak == 4000 + 4 * 4


def test_activation_checkpointing_lowers_saved_activations():
    without = measure("lomo", torch.float32, seq_len=32).category_peak["activations"]
    with_ac = measure("lomo", torch.float32, ac=True, seq_len=32).category_peak["activations"]
    assert 0 < with_ac < without


def test_master_weight_sgd_step_by_hand():
    param = nn.Parameter(torch.tensor([1.0, -2.0], dtype=torch.bfloat16))
    optimizer = MasterWeightOptimizer(torch.optim.SGD([param], lr=0.5))
    param.grad = torch.tensor([0.25, 1.0], dtype=torch.bfloat16)
    optimizer.step()
    assert param.tolist() == [0.875, -2.5]
    assert optimizer.masters[0].dtype == torch.float32
    assert optimizer.masters[0].tolist() == [0.875, -2.5]


def test_process_peak_sees_a_touched_allocation():
    baseline = proc_status_bytes("VmRSS")
    with ProcessPeak(torch.device("cpu"), baseline) as process:
        block = torch.ones(64 * 2**20, dtype=torch.uint8)  # 64 MiB, written so it is resident
        del block
    assert process.peak >= 0.9 * 64 * 2**20  # other pages of the process may shrink meanwhile
