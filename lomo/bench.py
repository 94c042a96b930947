"""`lomo bench optimizer`: step time and peak tensor memory of LOMO/AdaLomo against their peers.

Every configuration runs in a fresh subprocess (no allocator or cache state shared between
them); the parent prints one table with the ratios measured side by side in this run.
Peak memory is the high-water mark of live tensor storage seen by
`torch.distributed._tools.mem_tracker.MemTracker` during one tracked step (it works on CPU,
where no allocator statistics exist); step time is the median of the untracked steps.
"""

import argparse
import json
import statistics
import subprocess
import sys
import time
from collections.abc import Callable

import torch
from torch import nn

from lomo.workloads import make_step, random_llama_100m
from tasks.superglue.data import write_atomic

OPTIMIZERS = ("lomo", "lomo-optim", "adalomo", "adalomo-optim", "sgd", "adamw")
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}


def load_bench_model(name: str, dtype: torch.dtype) -> nn.Module:
    if name == "random-100m":
        model = random_llama_100m()
    else:
        from lomo.models import load_model

        model = load_model(name)
    return model.to(dtype).train()


def peak_bytes(fn: Callable, model: nn.Module) -> int:
    from torch.distributed._tools.mem_tracker import MemTracker

    tracker = MemTracker()
    tracker.track_external(model)
    with tracker:
        fn()
    return sum(stats["Total"] for stats in tracker.get_tracker_snapshot("peak").values())


def run_worker(spec: dict) -> dict:
    torch.manual_seed(0)
    model = load_bench_model(spec["model"], DTYPES[spec["dtype"]])
    generator = torch.Generator().manual_seed(0)
    vocab = model.config.vocab_size
    tokens = torch.randint(0, vocab, (spec["batch"], spec["seq"]), generator=generator)
    params = list(model.parameters())
    result = {
        **spec,
        "param_bytes": sum(p.numel() * p.element_size() for p in params),
        "largest_grad_bytes": max(p.numel() * p.element_size() for p in params),
    }
    # Activations as the paper defines them: memory growth across the forward pass.
    result["activation_bytes"] = (
        peak_bytes(lambda: model(input_ids=tokens, labels=tokens).loss, model)
        - result["param_bytes"]
    )

    step, _ = make_step(spec["optimizer"], spec["clip"], model, tokens)
    step()  # warm-up: first-call allocations, optimizer state creation
    times = []
    for _ in range(spec["steps"]):
        start = time.perf_counter()
        step()
        times.append(time.perf_counter() - start)
    result["step_seconds"] = statistics.median(times)
    result["step_seconds_spread"] = max(times) - min(times)
    result["peak_bytes"] = peak_bytes(step, model)
    return result


def run_config(spec: dict) -> dict:
    command = [sys.executable, "-m", "lomo.bench", "--worker", json.dumps(spec)]
    done = subprocess.run(command, capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"benchmark worker failed for {spec}:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def format_table(rows: list[dict]) -> str:
    by_key = {(r["dtype"], r["clip"], r["optimizer"]): r for r in rows}
    header = (
        f"{'dtype':5} {'clip':4} {'optimizer':14} {'s/step':>7} {'x SGD':>6} {'x peer':>6} "
        f"{'peak MiB':>9} {'x peer':>6} {'x bound':>7}"
    )
    lines = [header, "-" * len(header)]
    mib = 2**20
    for r in rows:
        sgd = by_key.get((r["dtype"], r["clip"], "sgd"))
        peer = by_key.get((r["dtype"], r["clip"], f"{r['optimizer']}-optim"))
        bound = r["param_bytes"] + r["activation_bytes"] + r["largest_grad_bytes"]
        time_vs_sgd = r["step_seconds"] / sgd["step_seconds"] if sgd else float("nan")
        time_vs_peer = r["step_seconds"] / peer["step_seconds"] if peer else float("nan")
        mem_vs_peer = r["peak_bytes"] / peer["peak_bytes"] if peer else float("nan")
        lines.append(
            f"{r['dtype']:5} {'norm' if r['clip'] else '-':4} {r['optimizer']:14} "
            f"{r['step_seconds']:7.2f} {time_vs_sgd:6.2f} {time_vs_peer:6.2f} "
            f"{r['peak_bytes'] / mib:9.1f} {mem_vs_peer:6.2f} {r['peak_bytes'] / bound:7.2f}"
        )
    return "\n".join(lines)


def run_bench(args: argparse.Namespace) -> None:
    rows = []
    for dtype in args.dtypes:
        for clip in (False, True):
            for optimizer in args.optimizers:
                spec = dict(
                    model=args.model,
                    dtype=dtype,
                    clip=clip,
                    optimizer=optimizer,
                    batch=args.batch,
                    seq=args.seq,
                    steps=args.steps,
                )
                print(f"running {spec}", file=sys.stderr, flush=True)
                rows.append(run_config(spec))
    print(
        f"model {args.model}, batch {args.batch} x {args.seq} tokens, "
        f"median of {args.steps} steps after 1 warm-up, torch {torch.__version__}, "
        f"{torch.get_num_threads()} threads"
    )
    print(
        "x SGD / x peer: step time relative to torch.optim.SGD / to lomo-optim's class; "
        "x bound: peak / (params + activations + largest gradient)"
    )
    print(format_table(rows))
    if args.out:
        write_atomic(args.out, json.dumps(rows, indent=1))


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("bench", help="benchmarks that print side-by-side ratios")
    parser.add_argument("what", choices=["optimizer"])
    parser.add_argument(
        "--model", default="smollm2-135m", help="a model name for lomo.models, or random-100m"
    )
    parser.add_argument("--dtypes", nargs="+", default=list(DTYPES), choices=list(DTYPES))
    parser.add_argument("--optimizers", nargs="+", default=list(OPTIMIZERS), choices=OPTIMIZERS)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--seq", type=int, default=128)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--out", help="also write the raw rows as JSON here")
    parser.set_defaults(func=run_bench)


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "--worker":
        print(json.dumps(run_worker(json.loads(sys.argv[2]))))
