"""`lomo sgd-claims` against independent hand computations on tiny models."""

import copy
import json
import math

import pytest
import torch
from paths import DATA_DIR
from safetensors.torch import load_file
from torch import nn

from lomo.cli import main as lomo_main
from lomo.measure import sgd_claims as sc
from lomo.train import finetune as ft
from lomo.train.models import load_model
from tests.tiny_models import lm_loss, tiny_llama, token_batches


def flat(model: nn.Module) -> torch.Tensor:
    return torch.cat([p.detach().flatten() for p in model.parameters()])


@pytest.mark.parametrize("lr", [1e-3, 1e-1])
def test_implicit_batch_gap_matches_plain_torch_sgd(lr):
    # float64: at small lr the gap is far below fp32 rounding of the weights themselves.
    model = tiny_llama(seed=0, dtype=torch.float64)
    a, b = token_batches(2, batch_size=2, seq_len=8)
    before = flat(model)
    rows = sc.implicit_batch_gap(
        sc.trainable(model), lambda: lm_loss(model, a), lambda: lm_loss(model, b), [lr]
    )
    assert torch.equal(flat(model), before), "the parameters must be restored"

    sequential = copy.deepcopy(model)
    opt = torch.optim.SGD(sequential.parameters(), lr=lr)
    for tokens in (a, b):
        opt.zero_grad()
        lm_loss(sequential, tokens).backward()
        opt.step()
    batch = copy.deepcopy(model)
    opt = torch.optim.SGD(batch.parameters(), lr=lr)
    (lm_loss(batch, a) + lm_loss(batch, b)).backward()  # one step, same total lr
    opt.step()

    (row,) = rows
    gap = (flat(sequential) - flat(batch)).norm().item()
    update = (flat(batch) - before).norm().item()
    assert row["gap"] == pytest.approx(gap, rel=1e-6)
    assert row["update_norm"] == pytest.approx(update, rel=1e-6)
    assert row["relative_gap"] == pytest.approx(gap / update, rel=1e-6)
    assert row["relative_step"] == pytest.approx(update / before.norm().item(), rel=1e-6)
    with torch.no_grad():
        assert row["pair_loss_sequential"] == pytest.approx(
            (lm_loss(sequential, a) + lm_loss(sequential, b)).item(), rel=1e-5
        )
        assert row["pair_loss_batch"] == pytest.approx(
            (lm_loss(batch, a) + lm_loss(batch, b)).item(), rel=1e-5
        )


def test_implicit_batch_gap_grows_with_lr():
    model = tiny_llama(seed=0)
    a, b = token_batches(2, batch_size=2, seq_len=8)
    rows = sc.implicit_batch_gap(
        sc.trainable(model), lambda: lm_loss(model, a), lambda: lm_loss(model, b), [1e-3, 1e-2]
    )
    # To first order the gap is lr^2 |H_b g_a| and the update lr |g_a + g_b|.
    ratio = rows[1]["relative_gap"] / rows[0]["relative_gap"]
    assert 5 < ratio < 20


class TinyMLP(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.net = nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 2))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


def test_hessian_top_eigenvalue_matches_full_hessian():
    model = TinyMLP()
    x, y = torch.randn(8, 3, generator=torch.Generator().manual_seed(1)), torch.arange(8) % 2
    params = sc.trainable(model)
    names = [n for n, _ in model.named_parameters()]
    shapes = [p.shape for p in params]

    def loss_of(vector: torch.Tensor) -> torch.Tensor:
        pieces = torch.split(vector, [math.prod(s) for s in shapes])
        weights = {n: v.view(s) for n, v, s in zip(names, pieces, shapes, strict=True)}
        return nn.functional.cross_entropy(torch.func.functional_call(model, weights, (x,)), y)

    hessian = torch.autograd.functional.hessian(loss_of, flat(model))
    eigenvalues = torch.linalg.eigvalsh(hessian)
    expected = eigenvalues[eigenvalues.abs().argmax()].item()

    def loss() -> torch.Tensor:
        return nn.functional.cross_entropy(model(x), y)

    result = sc.hessian_top_eigenvalue(params, loss, iterations=300, seed=0)
    assert result["eigenvalue"] == pytest.approx(expected, rel=1e-3)
    assert result["loss"] == pytest.approx(loss().item())
    assert len(result["history"]) == 300


@pytest.mark.parametrize(
    ("clip", "expected"),
    [
        # L = (2 x^2 + 4 y^2) / 2 at (1, 1): L0 = 3, g = (2, 4), |g|^2 = 20, g.A.g = 72.
        # lr 0.1 clipped to norm 1: scale = 0.1 / sqrt(20), d = -scale g, |d| = 0.1,
        # g.d = -scale 20 = -0.447214, d.A.d = scale^2 72 = 0.036, L(+d) = 3 - 0.447214 + 0.018.
        (
            1.0,
            {
                "first_order": -0.447214,
                "curvature": 0.036,
                "curvature_ratio": 0.040249,
                "loss_step": 2.570786,
                "step_norm": 0.1,
            },
        ),
        # unclipped: d = -(0.2, 0.4), L(0.8, 0.6) = (1.28 + 1.44) / 2, g.d = -2, d.A.d = 0.72
        (
            100.0,
            {
                "first_order": -2.0,
                "curvature": 0.72,
                "curvature_ratio": 0.18,
                "loss_step": 1.36,
                "step_norm": math.sqrt(0.2),
            },
        ),
    ],
)
def test_sgd_step_losses_on_a_quadratic_by_hand(clip, expected):
    theta = nn.Parameter(torch.tensor([1.0, 1.0], dtype=torch.float64))
    curvatures = torch.tensor([2.0, 4.0], dtype=torch.float64)

    def loss():
        return 0.5 * (curvatures * theta**2).sum()

    (row,) = sc.sgd_step_losses([theta], loss, [0.1], clip_norm=clip, seed=0)
    assert torch.equal(theta.detach(), torch.tensor([1.0, 1.0], dtype=torch.float64))
    assert row["loss_start"] == pytest.approx(3.0)
    for key, value in expected.items():
        assert row[key] == pytest.approx(value, abs=1e-6), key
    # a random direction of the same norm: its curvature r.A.r lies in [2, 4] |r|^2
    assert 2 * row["step_norm"] ** 2 <= row["random_curvature"] <= 4 * row["step_norm"] ** 2 + 1e-12


def test_random_directions_have_the_given_relative_norm():
    # At the minimum of sum |theta - theta*|^2 the loss change is exactly |d|^2, and
    # |d_p| = epsilon |theta*_p| for each tensor, so delta = epsilon^2 |theta*|^2.
    model = TinyMLP()
    params = sc.trainable(model)
    target = [p.detach().clone() for p in params]

    def loss() -> torch.Tensor:
        return sum(((p - t) ** 2).sum() for p, t in zip(params, target, strict=True))

    rows = sc.random_direction_losses(params, loss, [1e-3, 1e-1], n_directions=2, seed=0)
    squared_norm = sum(t.square().sum().item() for t in target)
    assert len(rows) == 4
    for row in rows:
        assert row["loss_start"] == 0.0
        assert row["delta"] == pytest.approx(row["epsilon"] ** 2 * squared_norm, rel=1e-4)
    assert all(torch.equal(p, t) for p, t in zip(params, target, strict=True))


def test_layer_of():
    assert sc.layer_of("model.layers.12.self_attn.q_proj.weight") == "layers.12"
    assert sc.layer_of("model.embed_tokens.weight") == "embed_tokens"
    assert sc.layer_of("model.norm.weight") == "norm"
    assert sc.layer_of("lm_head.weight") == "lm_head"


def test_parameter_distances_sum_to_the_whole_distance():
    start, end = tiny_llama(seed=0), tiny_llama(seed=1)
    rows = sc.parameter_distances(start, end)
    assert sum(r["numel"] for r in rows) == sum(p.numel() for p in start.parameters())
    total = (flat(end) - flat(start)).norm().item()
    assert math.sqrt(sum(r["distance"] ** 2 for r in rows)) == pytest.approx(total, rel=1e-5)
    assert sc.parameter_distances(start, start)[0]["distance"] == 0.0


def test_random_subject_has_the_architecture_and_new_weights(tmp_path):
    tiny_llama(seed=3).save_pretrained(tmp_path)  # load_subject seeds random weights with 0
    saved, random = sc.load_subject(str(tmp_path)), sc.load_subject(f"{tmp_path}:random")
    assert [p.shape for p in saved.parameters()] == [p.shape for p in random.parameters()]
    assert torch.equal(flat(saved), flat(tiny_llama(seed=3)))
    assert not torch.equal(flat(saved), flat(random))
    assert torch.equal(flat(random), flat(sc.load_subject(f"{tmp_path}:random")))  # seeded


def run_folder(tmp_path, epochs: int, save_model: bool = True):
    config = ft.FinetuneConfig(
        model="tiny-llama",
        method="lomo",
        task="rte",
        data_dir=str(DATA_DIR),
        protocol="val-split",
        train_size=8,
        test_size=4,
        max_length=64,
        epochs=epochs,
        global_batch=4,
        micro_batch=4,
        lr=1e-2,
        eval_batch=8,
        save_model=save_model,
    )
    out = tmp_path / f"run{epochs}"
    ft.finetune(config, out)
    return out


def test_cli_writes_every_section(tmp_path):
    run = run_folder(tmp_path, epochs=1)
    out = tmp_path / "claims.json"
    lomo_main(
        [
            "sgd-claims",
            "--models",
            "tiny-llama",
            "--data-dir",
            str(DATA_DIR),
            "--max-length",
            "48",
            "--pairs",
            "2",
            "--lrs",
            "0.001",
            "0.01",
            "--batch-size",
            "2",
            "--epsilons",
            "0.01",
            "--directions",
            "2",
            "--power-iterations",
            "3",
            "--distance-runs",
            str(run),
            "--out",
            str(out),
        ]
    )
    result = json.loads(out.read_text())
    (model,) = result["models"]
    assert model["model"] == "tiny-llama" and not model["pretrained"]
    assert len(model["implicit_batch"]) == 2 * 2
    assert len(model["smoothness"]) == 2
    assert [row["lr"] for row in model["sgd_steps"]] == [0.001, 0.01]
    assert len(model["hessian"]["history"]) == 3
    (distance,) = result["distance"]
    assert distance["method"] == "lomo" and distance["epochs"] == 1
    metrics = json.loads((run / "metrics.json").read_text())
    assert distance["reported"] == metrics["reported"]["eval"]
    assert {t["layer"] for t in distance["tensors"]} >= {"layers.0", "layers.1", "embed_tokens"}
    assert all(t["distance"] > 0 for t in distance["tensors"] if "layers" in t["layer"])
    assert not list(tmp_path.glob(".claims.json*")), "no temporary file left behind"


def test_distance_is_the_runs_own_final_weights(tmp_path):
    """Each tensor's |theta_T - theta_0|: the safetensors file the run wrote, read here
    directly, against the model it started from; the tied embedding counted once."""
    run = run_folder(tmp_path, epochs=1)
    final = load_file(run / "model" / "model.safetensors")
    start = load_model("tiny-llama", torch.float32)
    rows = sc.distance_travelled(run)["tensors"]
    assert [r["parameter"] for r in rows] == [n for n, _ in start.named_parameters()]
    for row in rows:
        p0 = start.get_parameter(row["parameter"]).detach()
        expected = (final[row["parameter"]].float() - p0).norm().item()
        assert row["distance"] == pytest.approx(expected, rel=1e-6)
        assert row["norm"] == pytest.approx(p0.norm().item(), rel=1e-6)
        assert row["numel"] == p0.numel()
    assert any(row["distance"] > 0 for row in rows)


def test_distance_needs_the_runs_own_saved_weights(tmp_path):
    """A run without --save-model has no weights to measure, even where the run before it in
    the same folder saved some (Snakemake deletes metrics.json, then reruns the job there)."""
    run = run_folder(tmp_path, epochs=1)
    assert (run / "model" / "model.safetensors").exists()
    assert not (run / ".model.partial").exists(), "written aside, then renamed"
    (run / "metrics.json").unlink()
    run_folder(tmp_path, epochs=1, save_model=False)
    assert not (run / "model").exists()
    with pytest.raises(
        ValueError, match=r"no saved final weights in .*model: rerun .*--save-model"
    ):
        sc.distance_travelled(run)
    (run / "metrics.json").unlink()
    with pytest.raises(ValueError, match="not a finished run"):
        sc.distance_travelled(run)


def test_distance_runs_are_checked_before_the_measurements(tmp_path, monkeypatch):
    """A distance run without saved weights stops the command at once, not after minutes of
    curvature measurements, and no results file is written."""
    unsaved = run_folder(tmp_path, epochs=1, save_model=False)
    monkeypatch.setattr(sc, "measure_model", lambda *_: pytest.fail("measured first"))
    out = tmp_path / "claims.json"
    flags = ["--models", "tiny-llama", "--data-dir", str(DATA_DIR), "--out", str(out)]
    with pytest.raises(SystemExit, match=f"{unsaved}: no saved final weights"):
        lomo_main(["sgd-claims", *flags, "--distance-runs", str(unsaved)])
    assert not out.exists()
