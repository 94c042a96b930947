"""The method declarations (lomo.train.methods): a new in-backward optimizer is its update rule
plus one `Method`, declared here in a test and run by `lomo finetune` and the workflow's config
check with no other change."""

import copy
import csv
import importlib
import json

import pytest
import torch
import yaml
from paths import DATA_DIR, ROOT
from tiny_models import lm_loss, tiny_llama, token_batches

from lomo.cli import main
from lomo.optim import FusedOptimizer, param_groups
from lomo.train.methods import METHODS, Method, clip_kwargs, fused_step
from lomo.workflow import check_config

SCHEMA = ROOT / "config/schemas/config.schema.yaml"


class SignSGD(FusedOptimizer):
    """signSGD (Bernstein et al., 2018) inside backward: p -= lr * sign(g) (fp32 weights)."""

    def __init__(self, model, lr, clip_grad_norm=None, sync=None, params=None):
        super().__init__(
            model,
            param_groups(model, params),
            dict(lr=lr),
            clip_grad_norm=clip_grad_norm,
            clip_grad_value=None,
            loss_scaler=None,
            sync=sync,
        )

    def _update(self, param, grad, group):
        grad = self._unscale_and_clip(grad)
        self.sync.shard(param).add_(grad.sign(), alpha=-group["lr"])


def sign_sgd_optimizers(config, model, sync) -> list:
    return [SignSGD(model, config.lr, clip_kwargs(config)["clip_grad_norm"], sync)]


SIGN_SGD = Method(
    name="sign-sgd",
    fused=True,
    zero3=True,
    lora=False,
    trains_base=True,
    optimizers=sign_sgd_optimizers,
    step=fused_step,
)


@pytest.fixture
def sign_sgd(monkeypatch):
    monkeypatch.setitem(METHODS, SIGN_SGD.name, SIGN_SGD)


def test_the_toy_update_rule_is_sign_sgd():
    """Against autograd's gradient and the rule by hand, on a copy of the model."""
    model = tiny_llama()
    reference = copy.deepcopy(model)
    (tokens,) = token_batches(1)
    SignSGD(model, lr=0.01).step(lambda: lm_loss(model, tokens))
    lm_loss(reference, tokens).backward()
    with torch.no_grad():
        for p in reference.parameters():
            p.sub_(0.01 * p.grad.sign())
    for ours, expected in zip(model.parameters(), reference.parameters(), strict=True):
        assert torch.equal(ours, expected)


def test_a_method_declared_in_a_test_runs_in_lomo_finetune(sign_sgd, tmp_path, capsys):
    flags = ["--model", "tiny-llama", "--method", "sign-sgd", "--task", "rte", "--epochs", "2"]
    flags += ["--data-dir", str(DATA_DIR), "--protocol", "val-split", "--train-size", "8"]
    flags += ["--test-size", "4", "--max-length", "64", "--global-batch", "4", "--micro-batch", "4"]
    main(["finetune", *flags, "--lr", "1e-3", "--out", str(tmp_path)])
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert metrics["method"] == "sign-sgd" and len(metrics["per_epoch"]) == 2
    with open(tmp_path / "train_log.csv") as f:
        log = list(csv.DictReader(f))
    assert [int(row["step"]) for row in log] == [1, 2, 3, 4]
    assert all(float(row["grad_norm"]) > 0 for row in log)  # the norm pass ran (clip_mode norm)


def test_a_fused_method_cannot_accumulate_micro_batches(sign_sgd):
    from lomo.train.config import FinetuneConfig

    with pytest.raises(ValueError, match="sign-sgd updates the weights inside backward"):
        FinetuneConfig(method="sign-sgd", global_batch=16, micro_batch=4).validate()


def test_the_workflow_config_takes_its_method_names_from_the_declarations(sign_sgd):
    config = yaml.safe_load((ROOT / "config/ci.yaml").read_text())
    config.update(methods=["sign-sgd", "lomo"], method_settings={"sign-sgd": {"lr": 0.01}})
    check_config(config, SCHEMA)
    config["methods"] = ["sign-sgd", "sgdx"]
    with pytest.raises(ValueError, match=r"config: methods.1: 'sgdx' is not one of \[.*'sign-sgd'"):
        check_config(config, SCHEMA)
    # ... and its measurements' optimizer names: the methods measured, then lomo-optim's.
    config["methods"] = ["sign-sgd", "lomo"]
    config["memory"][0]["optimizers"] = ["sign-sgd", "lomo-optim"]
    check_config(config, SCHEMA)
    config["memory"][0]["optimizers"] = ["lora"]  # trains adapters: not measured
    with pytest.raises(ValueError, match=r"memory.0.optimizers.0: 'lora' is not one of .*sign-sgd"):
        check_config(config, SCHEMA)


def test_a_method_declared_in_a_test_is_measured_by_lomo_memory_and_throughput(
    sign_sgd, monkeypatch, tmp_path
):
    """`lomo memory` and `lomo throughput` take the declared method by name. Their workers run
    in this process here, where the test's METHODS is (the commands start a fresh process per
    configuration)."""
    from lomo.measure import memory, throughput

    def measure_here(module: str, spec: dict, env: dict | None = None) -> dict:
        return importlib.import_module(module).run_worker(spec)

    monkeypatch.setattr(memory, "run_worker_process", measure_here)
    monkeypatch.setattr(throughput, "run_worker_process", measure_here)
    flags = ["--model", "tiny-llama", "--dtype", "fp32", "--attn", "sdpa", "--seq", "16"]
    flags += ["--batch", "2", "--optimizers", "sign-sgd", "lomo"]
    main(["memory", *flags, "--ac", "off", "--raw", str(tmp_path / "raw.json")])
    sign, lomo = json.loads((tmp_path / "raw.json").read_text())
    assert (sign["optimizer"], lomo["optimizer"]) == ("sign-sgd", "lomo")
    # In backward like LOMO: one gradient at a time, no optimizer state.
    assert sign["category_peak"]["gradients"] == lomo["category_peak"]["gradients"] > 0
    assert sign["category_peak"]["optimizer_states"] == 0
    main(["throughput", *flags, "--warmup", "1", "--steps", "2", "--csv", str(tmp_path / "t.csv")])
    with open(tmp_path / "t.csv") as f:
        rows = list(csv.DictReader(f))
    assert [row["optimizer"] for row in rows] == ["sign-sgd", "lomo"]
    assert all(float(row["tgs_median"]) > 0 for row in rows)
