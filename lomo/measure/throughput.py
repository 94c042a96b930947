"""`lomo throughput`: tokens per second per device (TGS) for LOMO and its peers, as in Table 2.

Each optimizer runs in a fresh subprocess: warm-up steps (not timed), then `--steps` timed
training steps. TGS = batch x sequence / step time, one device. Reported: the median TGS, the
spread (slowest and fastest step), the number of timed steps, and the allocator's peak memory
over the timed steps (GPU: max_memory_allocated; CPU: resident high-water mark above the bare
process, with glibc's default allocator, which keeps freed blocks: the timed run is the run a
user makes; `lomo memory` measures memory with freed blocks returned). On CPU only the ratios
between optimizers mean something; on a GPU the absolute TGS can be set beside the paper's
(which used 8 RTX 3090s with ZeRO-3 for SGD and AdamW).
`lomo-optim` 0.1.1 runs in the same table as a peer of our LOMO and AdaLomo.
"""

import argparse
import csv
import json
import statistics
import sys
import time
from pathlib import Path

import torch

from lomo import argtypes
from lomo.io import write_atomic
from lomo.measure.census import ProcessPeak
from lomo.measure.memory import build_workload, to_csv
from lomo.measure.workloads import (
    SIZED_MODELS,
    add_workload_arguments,
    check_model,
    make_step,
    optimizer_names,
    run_worker_process,
)

# Table 2's optimizers, each of ours beside its lomo-optim original
TABLE2 = ("lomo", "lomo-optim", "adalomo", "adalomo-optim", "sgd", "adamw")
REFERENCE = Path(__file__).resolve().parents[2] / "paper" / "reference" / "table2_throughput.csv"
PAPER_SIZES = {"llama-7b": "7B", "llama-13b": "13B", "llama-30b": "30B", "llama-65b": "65B"}
GIB = 2**30


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def run_worker(spec: dict) -> dict:
    torch.manual_seed(0)
    if spec["threads"]:
        # On a shared CPU, 2+ OpenMP threads pay a scheduler time slice at every barrier.
        torch.set_num_threads(spec["threads"])
    device, baseline, model, tokens = build_workload(spec)
    step, _ = make_step(
        spec["optimizer"],
        spec["clip"],
        model,
        tokens,
        master_weights=True,
        chunked_loss=spec["chunked_loss"],
    )
    for _ in range(spec["warmup"]):
        step()
    times = []
    with ProcessPeak(device, baseline) as process:
        for _ in range(spec["steps"]):
            synchronize(device)
            start = time.perf_counter()
            step()
            synchronize(device)
            times.append(time.perf_counter() - start)
    tokens_per_step = spec["batch"] * spec["seq"]
    return {
        **spec,
        "step_seconds": times,
        "tgs_median": tokens_per_step / statistics.median(times),
        "tgs_min": tokens_per_step / max(times),
        "tgs_max": tokens_per_step / min(times),
        "peak_bytes": process.peak,
    }


def load_reference(path: Path) -> dict[tuple[str, str], dict]:
    with open(path) as f:
        return {(r["params"], r["optimizer"]): r for r in csv.DictReader(f)}


def table_rows(results: list[dict], reference: dict) -> list[dict]:
    by_name = {r["optimizer"]: r for r in results}
    size = PAPER_SIZES.get(results[0]["model"])
    lines = []
    for r in results:
        sgd = by_name.get("sgd")
        peer = by_name.get(f"{r['optimizer']}-optim")
        paper = reference.get((size, r["optimizer"])) if size else None
        step_median = statistics.median(r["step_seconds"])
        lines.append(
            {
                "model": r["model"],
                "layers": r["layers"] or "all",
                "dtype": r["dtype"],
                "attn": r["attn"],
                "ac": "yes" if r["ac"] else "no",
                "clip": "yes" if r["clip"] else "no",
                "loss": "chunked" if r["chunked_loss"] else "hf",
                "seq": r["seq"],
                "batch": r["batch"],
                "device": r["device"],
                "optimizer": r["optimizer"],
                "timed_steps": r["steps"],
                "warmup_steps": r["warmup"],
                "tgs_median": round(r["tgs_median"], 3),
                "tgs_min": round(r["tgs_min"], 3),
                "tgs_max": round(r["tgs_max"], 3),
                "step_seconds_median": round(step_median, 4),
                "tgs_vs_sgd": round(r["tgs_median"] / sgd["tgs_median"], 3) if sgd else "",
                "step_time_vs_lomo_optim": (
                    round(step_median / statistics.median(peer["step_seconds"]), 3) if peer else ""
                ),
                "peak_gb": round(r["peak_bytes"] / GIB, 3),
                "peak_vs_lomo_optim": round(r["peak_bytes"] / peer["peak_bytes"], 3)
                if peer
                else "",
                "paper_gpus": paper["gpus"] if paper else "",
                "paper_memory_gb": paper["memory_gb"] if paper else "",
                "paper_tgs": paper["tgs"] if paper else "",
            }
        )
    return lines


def format_text(lines: list[dict]) -> str:
    header = (
        f"{'optimizer':14} {'TGS':>9} {'min-max':>17} {'s/step':>8} {'x SGD':>6} "
        f"{'time x lomo-optim':>17} {'peak GiB':>9} {'peak x lomo-optim':>17} "
        f"{'paper TGS':>9} {'paper GB':>8}"
    )
    out = [header, "-" * len(header)]

    def fmt(value: object, spec: str) -> str:
        return format(value, spec) if value != "" else "-"

    for line in lines:
        out.append(
            f"{line['optimizer']:14} {line['tgs_median']:9.2f} "
            f"{line['tgs_min']:8.2f}-{line['tgs_max']:<8.2f} {line['step_seconds_median']:8.3f} "
            f"{fmt(line['tgs_vs_sgd'], '.2f'):>6} "
            f"{fmt(line['step_time_vs_lomo_optim'], '.2f'):>17} "
            f"{line['peak_gb']:9.2f} {fmt(line['peak_vs_lomo_optim'], '.2f'):>17} "
            f"{line['paper_tgs'] or '-':>9} {line['paper_memory_gb'] or '-':>8}"
        )
    return "\n".join(out)


def format_latex(lines: list[dict], caption: str) -> str:
    out = [
        r"\begin{table}[t]",
        r"\centering",
        r"\small",
        r"\begin{tabular}{lrrrrr}",
        r"\toprule",
        r"Optimizer & TGS (median) & TGS (min--max) & Peak (GB) & Paper TGS & Paper GB \\",
        r"\midrule",
    ]
    for line in lines:
        out.append(
            f"{line['optimizer']} & {line['tgs_median']:.2f} & {line['tgs_min']:.2f}--"
            f"{line['tgs_max']:.2f} & {line['peak_gb']:.2f} & {line['paper_tgs'] or '--'} & "
            f"{line['paper_memory_gb'] or '--'} \\\\"
        )
    out += [r"\bottomrule", r"\end{tabular}", rf"\caption{{{caption}}}", r"\end{table}", ""]
    return "\n".join(out)


def run_throughput(args: argparse.Namespace) -> None:
    if args.steps < 1 or args.warmup < 0:
        raise ValueError("--steps must be >= 1 and --warmup >= 0")
    if args.layers is not None and args.model not in SIZED_MODELS:
        raise ValueError(
            f"--layers is only for LLaMA shapes and named sizes ({', '.join(SIZED_MODELS)})"
        )
    if args.device == "cuda" and not torch.cuda.is_available():
        raise ValueError("--device cuda: no CUDA device is available")
    check_model(args.model)
    results = []
    for optimizer in args.optimizers:
        spec = dict(
            model=args.model,
            layers=args.layers,
            dtype=args.dtype,
            attn=args.attn,
            ac=args.ac == "on",
            clip=args.clip,
            chunked_loss=args.chunked_loss,
            optimizer=optimizer,
            seq=args.seq,
            batch=args.batch,
            warmup=args.warmup,
            steps=args.steps,
            device=args.device,
            threads=args.threads,
        )
        print(f"timing {spec}", file=sys.stderr, flush=True)
        results.append(run_worker_process("lomo.measure.throughput", spec))
    lines = table_rows(results, load_reference(Path(args.reference)))
    depth = f", {args.layers} layers" if args.layers else ""
    note = (
        f"model {args.model}{depth}, {args.dtype}, batch {args.batch} x sequence {args.seq}, "
        f"attention {args.attn}, activation checkpointing {args.ac}, gradient clipping "
        f"{'on (norm 1.0)' if args.clip else 'off'}, "
        f"{'chunked' if args.chunked_loss else 'whole-batch'} logits in the loss, "
        f"device {args.device} "
        f"({args.threads or torch.get_num_threads()} threads), {args.warmup} warm-up + "
        f"{args.steps} timed steps per optimizer, torch {torch.__version__}. "
        "TGS = tokens per device per second."
    )
    if args.device == "cpu":
        note += " CPU: compare the ratios, not the absolute TGS, with the paper's GPUs."
    print(note)
    print(format_text(lines))
    if args.csv:
        write_atomic(args.csv, to_csv(lines))
    if args.tex:
        write_atomic(args.tex, format_latex(lines, note.replace("_", r"\_")))


def add_parser(subparsers: argparse._SubParsersAction, summary: str) -> None:
    parser = subparsers.add_parser("throughput", help=summary)
    add_workload_arguments(parser, attn="sdpa", seq=1024, batch=1, clip=True)
    parser.add_argument(
        "--layers", type=argtypes.positive_int, help="decoder layers of a LLaMA shape (default all)"
    )
    parser.add_argument("--optimizers", nargs="+", default=list(TABLE2), choices=optimizer_names())
    parser.add_argument(
        "--ac",
        default="on",
        choices=["off", "on"],
        help="activation checkpointing (on in the paper's runs)",
    )
    parser.add_argument("--warmup", type=argtypes.nonnegative_int, default=2)
    parser.add_argument("--steps", type=argtypes.positive_int, default=5)
    parser.add_argument(
        "--threads", type=argtypes.positive_int, help="CPU threads per worker (default: torch's)"
    )
    parser.add_argument("--reference", default=str(REFERENCE), help="the paper's Table 2 (CSV)")
    parser.add_argument("--csv", help="write the table here (CSV)")
    parser.add_argument("--tex", help="write the table here (LaTeX)")
    parser.set_defaults(func=run_throughput)


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "--worker":
        print(json.dumps(run_worker(json.loads(sys.argv[2]))))
