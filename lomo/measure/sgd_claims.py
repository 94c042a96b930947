"""`lomo sgd-claims`: measure the paper's section 3.1 arguments for plain SGD, write one JSON.

The paper argues that SGD suffices for fine-tuning LLMs because (1) the loss surface is
smooth, (2) a local optimum near the pretrained weights suffices and (4) sequential SGD
steps act like one step on a larger batch. Nothing in the paper measures these directly;
this module does, on real training examples, for each model given (`name`, or `name:random`
for the same architecture with random weights):

- implicit batch: for pairs (a, b) and each lr, two sequential SGD steps (a, then b) against
  one step on the pair with the same total lr. gap = |theta_seq - theta_batch|
  = lr |g_b(theta_0 - lr g_a) - g_b(theta_0)|, relative to the update lr |g_a + g_b|;
- smoothness: the loss change along random directions whose norm, per tensor, is a fixed
  fraction epsilon of that tensor's norm; and, like for like on the same model, the loss
  along the clipped SGD step of each lr and along a random direction of the same norm, both
  ways, which gives the step's first-order decrease and its curvature term;
- sharpness: the top Hessian eigenvalue by power iteration on Hessian-vector products
  (plain SGD with lr is stable along that direction only while lr < 2 / eigenvalue);
- distance travelled (`--distance-runs`): a finished workflow fine-tuning run's final weights
  (saved by `lomo finetune --save-model`) against the weights it started from: per tensor
  |theta_T - theta_0| and |theta_0|.

Everything is fp32 with eager attention (double backward through SDPA is not supported on
every backend).
"""

import argparse
import json
import random
import re
from collections.abc import Callable, Iterable
from pathlib import Path

import torch
from torch import Tensor, nn
from transformers import (
    AutoConfig,
    AutoModelForCausalLM,
    PreTrainedModel,
    PreTrainedTokenizerBase,
)

from lomo import argtypes
from lomo.io import write_atomic
from lomo.train.config import FinetuneConfig, load_config
from lomo.train.evaluate import encode_train_example
from lomo.train.finetune import collate
from lomo.train.models import TINY_LLAMA, load_model, load_tokenizer, resolve
from lomo.train.run_folder import SAVED_MODEL
from tasks.superglue import get_task, get_template, load_split

Closure = Callable[[], Tensor]
RANDOM_SUFFIX = ":random"


# --- models and data -------------------------------------------------------------------------


def load_subject(spec: str, seed: int = 0) -> PreTrainedModel:
    """`name` loads the model as usual; `name:random` builds its architecture with random
    weights (seeded). tiny-llama is random-init either way."""
    name = spec.removesuffix(RANDOM_SUFFIX)
    if not spec.endswith(RANDOM_SUFFIX) or name == TINY_LLAMA:
        return load_model(name, torch.float32, attn_implementation="eager")
    config = AutoConfig.from_pretrained(resolve(name))
    config._attn_implementation = "eager"
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    return model


def trainable(model: nn.Module) -> list[nn.Parameter]:
    """Trainable parameters, tied weights once."""
    return [p for p in model.parameters() if p.requires_grad]


def load_examples(
    task_name: str,
    data_dir: str | None,
    source: str,
    tokenizer: PreTrainedTokenizerBase,
    n: int,
    max_length: int,
    seed: int,
) -> list[dict[str, list[int]]]:
    """`n` encoded training examples of the task (prompt masked), shuffled by `seed`."""
    task, template = get_task(task_name), get_template("lomo")
    examples = load_split(task.name, "train", source, data_dir)
    random.Random(seed).shuffle(examples)
    if len(examples) < n:
        raise ValueError(f"{task_name} has {len(examples)} training examples, {n} needed")
    return [encode_train_example(task, ex, template, tokenizer, max_length) for ex in examples[:n]]


def loss_closure(model: nn.Module, batch: dict[str, Tensor]) -> Closure:
    device = next(model.parameters()).device
    batch = {k: v.to(device) for k, v in batch.items()}
    return lambda: model(**batch).loss


# --- vector helpers on lists of tensors ------------------------------------------------------


def norm(tensors: Iterable[Tensor]) -> float:
    """The 2-norm of tensors taken as one vector (a generator keeps one tensor alive)."""
    return torch.linalg.vector_norm(torch.stack([t.norm() for t in tensors])).item()


def dot(xs: list[Tensor], ys: list[Tensor]) -> float:
    return sum((x * y).sum() for x, y in zip(xs, ys, strict=True)).item()


@torch.no_grad()
def set_params(params: list[Tensor], values: list[Tensor]) -> None:
    for p, v in zip(params, values, strict=True):
        p.copy_(v)


def gradient(loss_fn: Closure, params: list[Tensor]) -> list[Tensor]:
    with torch.enable_grad():
        return list(torch.autograd.grad(loss_fn(), params))


# --- the measurements ------------------------------------------------------------------------


def implicit_batch_gap(
    params: list[Tensor], loss_a: Closure, loss_b: Closure, lrs: list[float]
) -> list[dict]:
    """Two sequential SGD steps (a then b, lr each) against one step on the summed loss
    (lr), per lr. The parameters are restored afterwards. In-place updates keep the memory
    at five copies of the parameters (weights, start, g_a, g_b, g_b after the first step)."""
    start = [p.detach().clone() for p in params]
    param_norm = norm(start)
    grad_a, grad_b = gradient(loss_a, params), gradient(loss_b, params)
    pair_grad_norm = norm(a + b for a, b in zip(grad_a, grad_b, strict=True))
    with torch.no_grad():
        pair_loss_start = (loss_a() + loss_b()).item()
    rows = []
    for lr in lrs:
        with torch.no_grad():
            for p, p0, g in zip(params, start, grad_a, strict=True):
                p.copy_(p0).sub_(g, alpha=lr)
        grad_b_after = gradient(loss_b, params)
        with torch.no_grad():
            gap = lr * norm(g1 - g0 for g1, g0 in zip(grad_b_after, grad_b, strict=True))
            # The pair's loss after either update, to see whether the gap matters to the loss.
            for p, g in zip(params, grad_b_after, strict=True):
                p.sub_(g, alpha=lr)
            del grad_b_after
            loss_sequential = (loss_a() + loss_b()).item()
            for p, p0, ga, gb in zip(params, start, grad_a, grad_b, strict=True):
                p.copy_(p0).sub_(ga, alpha=lr).sub_(gb, alpha=lr)
            loss_batch = (loss_a() + loss_b()).item()
        update = lr * pair_grad_norm
        rows.append(
            {
                "lr": lr,
                "gap": gap,
                "update_norm": update,
                "relative_gap": gap / update,
                "relative_step": update / param_norm,
                "pair_loss_start": pair_loss_start,
                "pair_loss_sequential": loss_sequential,
                "pair_loss_batch": loss_batch,
            }
        )
    set_params(params, start)
    return rows


def random_direction_losses(
    params: list[Tensor], loss_fn: Closure, epsilons: list[float], n_directions: int, seed: int
) -> list[dict]:
    """Loss at theta + d for random Gaussian directions d scaled per tensor to
    |d_p| = epsilon |theta_p| (filter-free version of Li et al. 2018's normalisation)."""
    start = [p.detach().clone() for p in params]
    with torch.no_grad():
        base = loss_fn().item()
        rows = []
        for direction in range(n_directions):
            for epsilon in epsilons:
                generator = torch.Generator().manual_seed(seed * 1000 + direction)
                for p, p0 in zip(params, start, strict=True):
                    d = torch.randn(p0.shape, generator=generator, dtype=p0.dtype).to(p0.device)
                    p.copy_(p0 + d * (epsilon * p0.norm() / d.norm()))
                loss = loss_fn().item()
                rows.append(
                    {
                        "direction": direction,
                        "epsilon": epsilon,
                        "loss_start": base,
                        "loss": loss,
                        "delta": loss - base,
                    }
                )
    set_params(params, start)
    return rows


def sgd_step_losses(
    params: list[Tensor], loss_fn: Closure, lrs: list[float], clip_norm: float, seed: int
) -> list[dict]:
    """Smoothness where SGD moves, compared like with like on the same model: for each lr,
    the step d = -lr * min(1, clip_norm / |g|) * g of clipped SGD (the paper's LOMO, global
    norm clipping), and one random direction r of the same norm (scaled per tensor as in
    `random_direction_losses`). Both are evaluated at theta + d and theta - d (the same for
    r), so that L(+) - L(-) = 2 g.d and L(+) + L(-) - 2 L(0) = d.H.d up to third order.
    `curvature_ratio` = d.H.d / (2 |g.d|): below 1 a step still lowers the loss, near 0 the
    loss is linear over the step (smooth at that scale). The parameters are restored."""
    start = [p.detach().clone() for p in params]
    grad = gradient(loss_fn, params)
    grad_norm, param_norm = norm(grad), norm(start)
    rows = []
    with torch.no_grad():
        base = loss_fn().item()

        def loss_at(direction: list[Tensor], sign: float) -> float:
            for p, p0, d in zip(params, start, direction, strict=True):
                p.copy_(p0).add_(d, alpha=sign)
            return loss_fn().item()

        for lr in lrs:
            scale = lr * min(1.0, clip_norm / grad_norm)
            step = [-scale * g for g in grad]
            step_norm = scale * grad_norm
            generator = torch.Generator().manual_seed(seed)
            noise = [
                torch.randn(p0.shape, generator=generator, dtype=p0.dtype).to(p0.device)
                for p0 in start
            ]
            # per tensor |r_p| = (|d| / |theta|) |theta_p|, so |r| = |d|
            random = [
                r * (step_norm / param_norm * p0.norm() / r.norm())
                for r, p0 in zip(noise, start, strict=True)
            ]
            losses = {
                name: (loss_at(d, 1.0), loss_at(d, -1.0))
                for name, d in (("step", step), ("random", random))
            }
            first_order = -scale * grad_norm**2  # g.d
            plus, minus = losses["step"]
            random_plus, random_minus = losses["random"]
            rows.append(
                {
                    "lr": lr,
                    "step_norm": step_norm,
                    "relative_step": step_norm / param_norm,
                    "grad_norm": grad_norm,
                    "loss_start": base,
                    "loss_step": plus,
                    "loss_back": minus,
                    "first_order": first_order,
                    "curvature": plus + minus - 2 * base,
                    "curvature_ratio": (plus + minus - 2 * base) / (2 * abs(first_order)),
                    "random_loss_plus": random_plus,
                    "random_loss_minus": random_minus,
                    "random_curvature": random_plus + random_minus - 2 * base,
                }
            )
    set_params(params, start)
    return rows


def hessian_top_eigenvalue(
    params: list[Tensor], loss_fn: Closure, iterations: int, seed: int
) -> dict:
    """The Hessian eigenvalue of largest magnitude, by power iteration on exact
    Hessian-vector products (double backward); the estimate is the Rayleigh quotient v.Hv."""
    generator = torch.Generator().manual_seed(seed)
    # drawn on the CPU generator, so a CUDA run starts from the same vector
    v = [torch.randn(p.shape, generator=generator, dtype=p.dtype).to(p.device) for p in params]
    scale = norm(v)
    v = [x / scale for x in v]
    with torch.enable_grad():
        loss = loss_fn()
        grads = torch.autograd.grad(loss, params, create_graph=True)
        history = []
        for _ in range(iterations):
            hv = torch.autograd.grad(grads, params, grad_outputs=v, retain_graph=True)
            history.append(dot(v, hv))
            scale = norm(hv)
            v = [x.detach() / scale for x in hv]
    return {"loss": loss.item(), "eigenvalue": history[-1], "history": history}


def layer_of(name: str) -> str:
    """'model.layers.3.self_attn.q_proj.weight' -> 'layers.3'; other tensors keep their module
    name ('model.embed_tokens.weight' -> 'embed_tokens')."""
    match = re.search(r"layers\.(\d+)\.", name)
    if match:
        return f"layers.{match.group(1)}"
    return name.removeprefix("model.").removesuffix(".weight").removesuffix(".bias")


def parameter_distances(start: nn.Module, end: nn.Module) -> list[dict]:
    """Per trainable tensor of `start`: |end - start|, |start|, and its layer."""
    final = dict(end.named_parameters())
    rows = []
    for name, p0 in start.named_parameters():
        p1 = final[name].detach().float()
        rows.append(
            {
                "parameter": name,
                "layer": layer_of(name),
                "numel": p0.numel(),
                "distance": (p1 - p0.detach().float()).norm().item(),
                "norm": p0.detach().float().norm().item(),
            }
        )
    return rows


FULL_PARAMETER_METHODS = ("lomo", "adalomo", "sgd", "adamw")


def finished_run(run_dir: Path) -> tuple[FinetuneConfig, dict, Path]:
    """The config, metrics and saved final weights (`model/`) of the finished full-parameter
    run in `run_dir`; raises naming what is missing."""
    config = load_config(str(run_dir / "config.yaml"), {})
    if config.method not in FULL_PARAMETER_METHODS:
        raise ValueError(f"{run_dir}: distance needs a full-parameter method, not {config.method}")
    metrics_path, saved = run_dir / "metrics.json", run_dir / SAVED_MODEL
    if not metrics_path.exists():
        raise ValueError(f"{run_dir}: not a finished run (no metrics.json)")
    if not (saved / "config.json").exists():
        raise ValueError(
            f"{run_dir}: no saved final weights in {saved}: rerun the run with --save-model "
            "(the workflow passes it to its distance runs)"
        )
    return config, json.loads(metrics_path.read_text()), saved


def distance_travelled(run_dir: str | Path) -> dict:
    """How far each tensor of the finished run in `run_dir` moved from its initial value: the
    final weights it saved (`model/`, `lomo finetune --save-model`; gathered from the ranks
    under ZeRO-3) against its config.yaml's model loaded afresh. The run itself, not a rerun:
    nothing depends on this process matching the run's threads or ranks."""
    run_dir = Path(run_dir)
    config, metrics, saved = finished_run(run_dir)
    tuned = AutoModelForCausalLM.from_pretrained(saved, dtype=torch.float32)
    rows = parameter_distances(load_model(config.model, torch.float32), tuned)
    return {
        "run": str(run_dir),
        "model": config.model,
        "method": config.method,
        "task": config.task,
        "seed": config.seed,
        "lr": config.lr,
        "epochs": config.epochs,
        "n_train": metrics["n_train"],
        "reported": metrics["reported"]["eval"],
        "tensors": rows,
    }


# --- the command -----------------------------------------------------------------------------


def measure_model(spec: str, args: argparse.Namespace) -> dict:
    name = spec.removesuffix(RANDOM_SUFFIX)
    model = load_subject(spec, seed=args.seed).to(args.device)
    model.eval()  # no dropout: the losses are deterministic functions of the weights
    params = trainable(model)
    tokenizer = load_tokenizer(name)
    examples = load_examples(
        args.task,
        args.data_dir,
        args.source,
        tokenizer,
        max(2 * args.pairs, args.batch_size),
        args.max_length,
        args.seed,
    )
    print(f"[sgd-claims] {spec}: {sum(p.numel() for p in params):,} parameters", flush=True)
    implicit = []
    for pair in range(args.pairs):
        a, b = (collate([ex], tokenizer.pad_token_id) for ex in examples[2 * pair : 2 * pair + 2])
        loss_a, loss_b = loss_closure(model, a), loss_closure(model, b)
        for row in implicit_batch_gap(params, loss_a, loss_b, args.lrs):
            implicit.append({"pair": pair, **row})
    batch_loss = loss_closure(model, collate(examples[: args.batch_size], tokenizer.pad_token_id))
    smooth = random_direction_losses(params, batch_loss, args.epsilons, args.directions, args.seed)
    steps = sgd_step_losses(params, batch_loss, args.lrs, args.clip_norm, args.seed)
    hessian = hessian_top_eigenvalue(params, batch_loss, args.power_iterations, args.seed)
    print(f"[sgd-claims] {spec}: top Hessian eigenvalue {hessian['eigenvalue']:.4g}", flush=True)
    return {
        "model": spec,
        "pretrained": not spec.endswith(RANDOM_SUFFIX) and name != TINY_LLAMA,
        "parameters": sum(p.numel() for p in params),
        "param_norm": norm(p.detach() for p in params),
        "implicit_batch": implicit,
        "smoothness": smooth,
        "sgd_steps": steps,
        "hessian": hessian,
    }


def run(args: argparse.Namespace) -> dict:
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    for run_dir in args.distance_runs:  # before the measurements, which take minutes
        finished_run(Path(run_dir))
    result = {
        "settings": {k: v for k, v in vars(args).items() if k not in ("func", "out", "command")},
        "models": [measure_model(spec, args) for spec in args.models],
        "distance": [distance_travelled(run_dir) for run_dir in args.distance_runs],
    }
    write_atomic(args.out, json.dumps(result, indent=1) + "\n")
    return result


def add_parser(subparsers: argparse._SubParsersAction, summary: str) -> None:
    parser = subparsers.add_parser(
        "sgd-claims",
        help=summary,
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--models",
        nargs="+",
        default=["smollm2-135m", "smollm2-135m:random", TINY_LLAMA],
        help="models to measure; NAME:random = NAME's architecture with random weights",
    )
    parser.add_argument("--task", default="rte")
    parser.add_argument("--source", default="local", choices=["local", "hub"])
    parser.add_argument("--data-dir", help="SuperGLUE folder (official layout)")
    parser.add_argument(
        "--max-length", type=argtypes.positive_int, default=128, help="tokens per example"
    )
    parser.add_argument(
        "--pairs", type=argtypes.positive_int, default=4, help="example pairs (implicit batch)"
    )
    parser.add_argument(
        "--lrs", type=argtypes.positive_float, nargs="+", default=[1e-4, 1e-3, 1e-2, 3e-2]
    )
    parser.add_argument(
        "--batch-size",
        type=argtypes.positive_int,
        default=4,
        help="examples in the smoothness/Hessian batch",
    )
    parser.add_argument(
        "--epsilons", type=argtypes.positive_float, nargs="+", default=[1e-3, 1e-2, 5e-2]
    )
    parser.add_argument(
        "--clip-norm",
        type=argtypes.positive_float,
        default=1.0,
        help="global norm clipping of the SGD steps",
    )
    parser.add_argument(
        "--directions", type=argtypes.positive_int, default=3, help="random directions"
    )
    parser.add_argument("--power-iterations", type=argtypes.positive_int, default=10)
    parser.add_argument(
        "--distance-runs",
        nargs="*",
        default=[],
        help="finished full-parameter fine-tuning run folders whose final weights were saved "
        "(lomo finetune --save-model): the distance travelled",
    )
    parser.add_argument("--seed", type=argtypes.seed, default=0)
    parser.add_argument("--device", default="cpu", help="cpu, or cuda for the paper's models")
    parser.add_argument("--threads", type=argtypes.positive_int, default=1)
    parser.add_argument("--out", required=True, help="JSON file to write")
    parser.set_defaults(func=run)
