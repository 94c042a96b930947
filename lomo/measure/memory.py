"""`lomo memory`: the paper's Table 1 by measurement, for LOMO, AdaLomo, SGD and AdamW (and any
method declared in lomo.train.methods that trains the base weights without adapters).

Each configuration (optimizer x activation checkpointing x depth) runs in a fresh subprocess.
There, after warm-up steps (one for optimizers whose state appears in the first step), one
training step runs under `MemoryCensus` (live tensor bytes by category, see lomo/measure/census.py)
and `ProcessPeak` (the allocator's peak: CUDA max_memory_allocated, or on CPU the process's
resident high-water mark above the bare process). Reported per configuration:

- parameters, gradients, optimizer states, activations: each category's maximum over the step
  (activations = tensors saved for backward, the paper's "growth across the forward");
- census peak: the largest total of live tensor bytes at any moment (the measured "Total");
- process peak: the allocator's peak, and its difference to the census peak.

On CPU the workers run with glibc's mmap threshold fixed at 64 KiB (`WORKER_ENV`). By default
glibc raises that threshold to the size of each large block it frees, up to 32 MiB, after which
blocks of that size come from the heap and stay resident when freed; the resident high-water
mark then depends on the order of allocations, not on the memory the step needs (it put
0.2-0.5 GB above the census peak at SmolLM2 size and ranked optimizers by their temporaries'
sizes). With the threshold fixed, a freed block goes back to the system, so the CPU process
peak counts live allocations plus the process's other memory, like CUDA's
max_memory_allocated, which does not count the caching allocator's free blocks.

LLaMA shapes (`--model llama-7b`, ...) are measured at a few depths (`--layers 1 2`: that
many decoder layers plus embedding, final norm and LM head) and extrapolated linearly in depth
to the real model; the output says so. SGD and AdamW keep fp32 master weights when the model
is fp16/bf16 (`MasterWeightOptimizer`), as mixed-precision training does.
"""

import argparse
import csv
import io
import json
import os
import sys
from pathlib import Path

import torch

from lomo import argtypes
from lomo.io import write_atomic
from lomo.measure.census import MemoryCensus, ProcessPeak, proc_status_bytes
from lomo.measure.workloads import (
    SIZED_MODELS,
    add_workload_arguments,
    build_model,
    check_model,
    display_name,
    full_depth,
    make_step,
    optimizer_names,
    optimizer_state_tensors,
    run_worker_process,
    warmup_steps,
)
from lomo.train.models import DTYPES

CELLS = ("parameters", "gradients", "optimizer_states", "activations")
COMPARED = (*((cell, cell) for cell in CELLS), ("census_peak", "total"))  # ours, Table 1 column
REFERENCE = Path(__file__).resolve().parents[2] / "paper" / "reference" / "table1_memory.csv"
PAPER_SETTING = dict(model="llama-7b", seq=512, batch=8)  # Table 1: fp16, GB = GiB
GIB = 2**30
WORKER_ENV = {"MALLOC_MMAP_THRESHOLD_": str(64 * 2**10)}  # see the module docstring


def build_workload(spec: dict) -> tuple[torch.device, int, torch.nn.Module, torch.Tensor]:
    """The measured model and its token batch; `baseline` is the bare process's RSS (CPU)."""
    device = torch.device(spec["device"])
    baseline = proc_status_bytes("VmRSS") if device.type == "cpu" else 0
    model = build_model(spec["model"], DTYPES[spec["dtype"]], spec["attn"], spec["layers"])
    model.to(device)
    if spec["ac"]:
        # Reentrant, as in the paper's time; the census sees the recomputed activations.
        model.activation_checkpointing_enable({"use_reentrant": True})
    generator = torch.Generator().manual_seed(0)
    tokens = torch.randint(
        0, model.config.vocab_size, (spec["batch"], spec["seq"]), generator=generator
    ).to(device)
    return device, baseline, model, tokens


def run_worker(spec: dict) -> dict:
    """Measure one configuration in this (fresh) process."""
    torch.manual_seed(0)
    device, baseline, model, tokens = build_workload(spec)
    census = MemoryCensus(model)  # before the optimizer: its gradient hooks must run first
    step, optimizer = make_step(
        spec["optimizer"],
        spec["clip"],
        model,
        tokens,
        master_weights=True,
        chunked_loss=spec["chunked_loss"],
    )
    for _ in range(warmup_steps(spec["optimizer"])):
        step()
    census.track_state(optimizer_state_tensors(optimizer))
    with ProcessPeak(device, baseline) as process, census:
        step()
    params = [p for p in model.parameters() if p.requires_grad]
    return {
        **spec,
        "num_params": sum(p.numel() for p in params),
        "param_bytes": sum(p.numel() * p.element_size() for p in params),
        "largest_grad_bytes": max(p.numel() * p.element_size() for p in params),
        "category_peak": census.category_peak,
        "at_peak": census.at_peak,
        "census_peak": census.peak,
        "process_peak": process.peak,
        "malloc_mmap_threshold": os.environ.get("MALLOC_MMAP_THRESHOLD_"),
    }


def row_values(raw: dict) -> dict[str, float]:
    """The numbers of one measured configuration, in bytes."""
    values = {cell: float(raw["category_peak"][cell]) for cell in CELLS}
    values["sum_of_parts"] = sum(values[cell] for cell in CELLS)
    values["census_peak"] = float(raw["census_peak"])
    values["process_peak"] = float(raw["process_peak"])
    values["param_bytes"] = float(raw["param_bytes"])
    values["largest_grad_bytes"] = float(raw["largest_grad_bytes"])
    values["other_at_peak"] = float(raw["at_peak"]["other"])
    return values


def extrapolate(by_layers: dict[int, dict[str, float]], depth: int) -> dict[str, float]:
    """Linear in depth through the two shallowest measurements: v(n1) + (depth - n1) * slope."""
    if len(by_layers) < 2:
        raise ValueError("extrapolating in depth needs measurements at two depths")
    (n1, v1), (n2, v2) = sorted(by_layers.items())[:2]
    return {key: v1[key] + (depth - n1) * (v2[key] - v1[key]) / (n2 - n1) for key in v1}


def summarise(raw_rows: list[dict]) -> list[dict]:
    """One row per (optimizer, AC): measured, or extrapolated in depth for LLaMA shapes."""
    groups: dict[tuple, dict[int, dict]] = {}
    for raw in raw_rows:
        key = (raw["model"], raw["dtype"], raw["optimizer"], raw["ac"], raw["chunked_loss"])
        groups.setdefault(key, {})[raw["layers"] or 0] = raw
    rows = []
    for (model, dtype, optimizer, ac, chunked_loss), by_layers in groups.items():
        first = next(iter(by_layers.values()))
        row = dict(
            model=model,
            dtype=dtype,
            optimizer=optimizer,
            ac=ac,
            chunked_loss=chunked_loss,
            attn=first["attn"],
            seq=first["seq"],
            batch=first["batch"],
            device=first["device"],
            clip=first["clip"],
        )
        if model in SIZED_MODELS:
            depth = full_depth(model)
            values = {n: row_values(raw) for n, raw in by_layers.items()}
            row["layers"] = depth
            row["measured_layers"] = " ".join(str(n) for n in sorted(by_layers))
            row.update(extrapolate(values, depth))
        else:
            row["layers"] = "all"
            row["measured_layers"] = "all"
            row.update(row_values(first))
        rows.append(row)
    return rows


def load_reference(path: Path) -> dict[tuple[str, bool], dict[str, float]]:
    with open(path) as f:
        return {
            (r["optimizer"], r["ac"] == "yes"): {
                "parameters": float(r["params_gb"]),
                "gradients": float(r["gradients_gb"]),
                "optimizer_states": float(r["optimizer_states_gb"]),
                "activations": float(r["activations_gb"]),
                "total": float(r["total_gb"]),
            }
            for r in csv.DictReader(f)
        }


def paper_comparable(row: dict) -> bool:
    """Table 1 is LLaMA-7B, fp16 (bf16 has the same bytes), sequence 512, batch 8."""
    return all(row[k] == v for k, v in PAPER_SETTING.items()) and row["dtype"] in ("fp16", "bf16")


def table_rows(rows: list[dict], reference: dict) -> list[dict]:
    """Rows for the CSV: GiB values, with the paper's value and ours/paper where comparable."""
    out = []
    for row in rows:
        paper = reference.get((row["optimizer"], row["ac"])) if paper_comparable(row) else None
        line = {
            k: row[k]
            for k in (
                "model",
                "layers",
                "measured_layers",
                "dtype",
                "attn",
                "seq",
                "batch",
                "device",
                "optimizer",
            )
        }
        line["ac"] = "yes" if row["ac"] else "no"
        line["loss"] = "chunked" if row["chunked_loss"] else "hf"
        for cell, paper_cell in COMPARED:
            ours = row[cell] / GIB
            line[f"{cell}_gb"] = round(ours, 3)
            line[f"paper_{paper_cell}_gb"] = paper[paper_cell] if paper else ""
            ratio = ours / paper[paper_cell] if paper and paper[paper_cell] else ""
            line[f"ratio_{paper_cell}"] = round(ratio, 3) if ratio != "" else ""
        line["sum_of_parts_gb"] = round(row["sum_of_parts"] / GIB, 3)
        line["process_peak_gb"] = round(row["process_peak"] / GIB, 3)
        line["process_minus_census_gb"] = round((row["process_peak"] - row["census_peak"]) / GIB, 3)
        line["largest_grad_gb"] = round(row["largest_grad_bytes"] / GIB, 3)
        line["other_at_peak_gb"] = round(row["other_at_peak"] / GIB, 3)
        out.append(line)
    return out


def format_text(lines: list[dict]) -> str:
    header = (
        f"{'optimizer':13} {'AC':3} {'params':>14} {'grads':>14} {'states':>14} "
        f"{'activations':>14} {'total (peak)':>14} {'sum':>7} {'process':>8} {'diff':>7}"
    )
    out = [header, "-" * len(header)]

    def cell(line: dict, ours: str, paper: str) -> str:
        if line[f"paper_{paper}_gb"] == "":
            return f"{line[ours]:14.2f}"
        return f"{line[ours]:6.2f}/{line[f'paper_{paper}_gb']:<7.2f}"

    for line in lines:
        cells = [cell(line, f"{ours}_gb", paper) for ours, paper in COMPARED]
        name = line["optimizer"] + (" (hf)" if line["loss"] == "hf" else "")
        out.append(
            f"{name:13} {line['ac']:3} {' '.join(cells)} "
            f"{line['sum_of_parts_gb']:7.2f} {line['process_peak_gb']:8.2f} "
            f"{line['process_minus_census_gb']:7.2f}"
        )
    return "\n".join(out)


def format_latex(lines: list[dict], caption: str) -> str:
    """Table 1's layout; a cell reads `ours / paper (ratio)` where the paper has a value."""
    out = [
        r"\begin{table}[t]",
        r"\centering",
        r"\small",
        r"\begin{tabular}{llrrrrr}",
        r"\toprule",
        r"Optimizer & AC & Params & Gradients & Optim. states & Activations & Total \\",
        r"\midrule",
    ]
    for line in lines:
        cells = []
        for ours, paper in COMPARED:
            value = f"{line[f'{ours}_gb']:.2f}"
            if line[f"paper_{paper}_gb"] != "":
                ratio = line[f"ratio_{paper}"]
                ratio_text = f"{ratio:.2f}" if ratio != "" else "--"
                value += f" / {line[f'paper_{paper}_gb']:.2f} ({ratio_text})"
            cells.append(value)
        ac = r"\checkmark" if line["ac"] == "yes" else r"\texttimes"
        out.append(
            display_name(line["optimizer"])
            + (" (HF loss)" if line["loss"] == "hf" else "")
            + f" & {ac} & "
            + " & ".join(cells)
            + r" \\"
        )
    out += [r"\bottomrule", r"\end{tabular}", rf"\caption{{{caption}}}", r"\end{table}", ""]
    return "\n".join(out)


def to_csv(lines: list[dict]) -> str:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(lines[0]))
    writer.writeheader()
    writer.writerows(lines)
    return buffer.getvalue()


def lomo_summary(rows: list[dict]) -> str:
    """The checks of the issue: LOMO's peak against its bound, and the ratios to the peers."""
    by_key = {(r["dtype"], r["ac"], r["chunked_loss"], r["optimizer"]): r for r in rows}
    out = []
    for (dtype, ac, chunked, optimizer), row in by_key.items():
        if optimizer != "lomo":
            continue
        bound = row["param_bytes"] + row["activations"] + row["largest_grad_bytes"]
        text = (
            f"{dtype} AC {'on ' if ac else 'off'} {'chunked' if chunked else 'hf'} loss: "
            f"LOMO peak {row['census_peak'] / 2**20:.1f} MiB = "
            f"{row['census_peak'] / bound:.3f} x (params + activations + largest "
            f"gradient = {bound / 2**20:.1f} MiB); other tensors at the peak "
            f"{row['other_at_peak'] / 2**20:.1f} MiB"
        )
        for (other_dtype, other_ac, other_chunked, peer), other in by_key.items():
            if (other_dtype, other_ac, other_chunked) == (dtype, ac, chunked) and peer != "lomo":
                text += f"; LOMO/{peer} {row['census_peak'] / other['census_peak']:.3f}"
        out.append(text)
    return "\n".join(out)


def describe(rows: list[dict]) -> str:
    first = rows[0]
    text = (
        f"model {first['model']}, {first['dtype']}, batch {first['batch']} x sequence "
        f"{first['seq']}, attention {first['attn']}, device {first['device']}, gradient "
        f"clipping {'on (norm 1.0)' if first['clip'] else 'off'}, torch {torch.__version__}."
    )
    losses = {row["chunked_loss"] for row in rows}
    if losses == {True}:
        text += " Loss: chunked linear + cross-entropy (lomo.loss), no whole-batch logits."
    elif losses == {False}:
        text += " Loss: model(...).loss, whole-batch logits."
    else:
        text += " Loss: chunked (lomo.loss) or whole-batch logits (hf), per row."
    if first["model"] in SIZED_MODELS:
        text += (
            f" Measured with {first['measured_layers']} decoder layer(s) plus embedding and"
            f" head; every value extrapolated linearly in depth to {first['layers']} layers."
        )
    if first["dtype"] == "bf16" and paper_comparable(first):
        text += " Paper: fp16; we measured bf16 (same bytes per element)."
    text += " GB = GiB (2^30 bytes), as in the paper."
    return text


def run_memory(args: argparse.Namespace) -> None:
    if args.from_raw:
        with open(args.from_raw) as f:
            raw_rows = json.load(f)
    else:
        if args.model in SIZED_MODELS and len(args.layers) < 2:
            raise ValueError("--layers needs two depths (e.g. 1 2) to extrapolate a named size")
        if args.model not in SIZED_MODELS and args.layers:
            raise ValueError(
                f"--layers is only for LLaMA shapes and named sizes ({', '.join(SIZED_MODELS)})"
            )
        if args.device == "cuda" and not torch.cuda.is_available():
            raise ValueError("--device cuda: no CUDA device is available")
        check_model(args.model)
        raw_rows = []
        for ac in args.ac:
            for optimizer in args.optimizers:
                for layers in args.layers or [None]:
                    spec = dict(
                        model=args.model,
                        layers=layers,
                        dtype=args.dtype,
                        attn=args.attn,
                        ac=ac == "on",
                        optimizer=optimizer,
                        seq=args.seq,
                        batch=args.batch,
                        clip=args.clip,
                        chunked_loss=args.chunked_loss,
                        device=args.device,
                    )
                    print(f"measuring {spec}", file=sys.stderr, flush=True)
                    raw_rows.append(run_worker_process("lomo.measure.memory", spec, WORKER_ENV))
        if args.raw:
            write_atomic(args.raw, json.dumps(raw_rows, indent=1))
    rows = summarise(raw_rows)
    lines = table_rows(rows, load_reference(Path(args.reference)))
    note = describe(rows)
    print(note)
    print(
        "cells: ours/paper in GB; total = measured census peak; sum = sum of the four "
        "category maxima; process = allocator peak (CPU: resident high-water mark, glibc mmap "
        "threshold fixed at 64 KiB); diff = process - census peak"
    )
    print(format_text(lines))
    print(lomo_summary(rows))
    if args.csv:
        write_atomic(args.csv, to_csv(lines))
    if args.tex:
        write_atomic(args.tex, format_latex(lines, note.replace("_", r"\_")))


def add_parser(subparsers: argparse._SubParsersAction, summary: str) -> None:
    parser = subparsers.add_parser("memory", help=summary)
    add_workload_arguments(parser, attn="eager", seq=512, batch=8, clip=False)
    parser.add_argument(
        "--layers",
        nargs="*",
        type=argtypes.positive_int,
        default=[],
        help="depths to measure a LLaMA shape at, for extrapolation (e.g. 1 2)",
    )
    parser.add_argument(
        "--optimizers",
        nargs="+",
        default=["adamw", "sgd", "lomo", "adalomo"],  # Table 1's rows, in its order
        choices=optimizer_names(),
    )
    parser.add_argument(
        "--ac",
        nargs="+",
        default=["off", "on"],
        choices=["off", "on"],
        help="activation checkpointing",
    )
    parser.add_argument("--reference", default=str(REFERENCE), help="the paper's Table 1 (CSV)")
    parser.add_argument("--raw", help="write the per-configuration measurements here (JSON)")
    parser.add_argument("--from-raw", help="render the tables from a --raw file, measure nothing")
    parser.add_argument("--csv", help="write the table here (CSV)")
    parser.add_argument("--tex", help="write the table here (LaTeX, Table 1 layout)")
    parser.set_defaults(func=run_memory)


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "--worker":
        print(json.dumps(run_worker(json.loads(sys.argv[2]))))
