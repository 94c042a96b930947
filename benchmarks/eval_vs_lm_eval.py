"""Evaluation throughput side by side: lm-evaluation-harness, our scorer before prompt sharing,
and our scorer now, on the same model, data, threads and batch size.

    python benchmarks/eval_vs_lm_eval.py --lm-eval-python /work/venvs/lmeval/bin/python \\
        --old-commit bcad334 --tasks rte wic

Each system runs in its own process (lm-eval from its own virtual environment), one after the
other for each task, in an order that rotates between rounds; the time is that of the
evaluation call only (tokenisation, forwards, scoring, metrics), not of loading the model.
Our two scorers use the `lm-eval` template, which renders lm-eval's default SuperGLUE prompts,
and lm-eval reads the same validation examples, written in the hub layout to a local json file.
The old scorer is `lomo/` and `tasks/` of `--old-commit`, extracted with `git archive`.
The table (markdown) and every measurement (json) are written to `--out`.

A long benchmark can run in parts (`--systems`, each part with its own `--out`) and be
tabulated together: `--merge A/eval_vs_lm_eval.json B/eval_vs_lm_eval.json --out C`. A ratio
needs both systems measured on the same items (a `--limit` run is its own task row).
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# lm-eval's SuperGLUE task names for ours.
LM_EVAL_TASKS = {"rte": "sglue_rte", "wic": "wic", "multirc": "multirc"}
SYSTEMS = ("lm-eval", "ours-old", "ours-new")


# --- workers: one evaluation, timed, in a fresh process ---------------------------------------


def run_ours(args: argparse.Namespace) -> dict:
    import torch

    import lomo

    # An --old-commit from before lomo/train/: test for the folder, since importing
    # lomo.train would find ours through the editable install and mix the two versions.
    if (Path(lomo.__file__).parent / "train").is_dir():
        from lomo.train.evaluate import evaluate
        from lomo.train.models import load_model, load_tokenizer
    else:
        from lomo.evaluate import evaluate
        from lomo.models import load_model, load_tokenizer
    from tasks.superglue import get_task, get_template, load_split

    torch.set_num_threads(args.threads)
    task, template = get_task(args.task), get_template("lm-eval")
    examples = load_split(task.name, "val", "local", args.data_dir)[: args.limit]
    tokenizer, model = load_tokenizer(args.model), load_model(args.model)
    start, cpu_start = time.perf_counter(), time.process_time()
    metrics, rows = evaluate(model, tokenizer, task, examples, template, args.batch_size, "sum")
    seconds, cpu_seconds = time.perf_counter() - start, time.process_time() - cpu_start
    chosen = [
        task.render(example, template).candidates[row["pred"]].strip()
        for example, row in zip(examples, rows, strict=True)
    ]
    return {
        "seconds": seconds,
        "cpu_seconds": cpu_seconds,
        "accuracy": metrics["accuracy"],
        "chosen": chosen,
    }


def run_lm_eval(args: argparse.Namespace) -> dict:
    import torch
    from lm_eval.evaluator import evaluate
    from lm_eval.models.huggingface import HFLM
    from lm_eval.tasks import TaskManager, get_task_dict

    torch.set_num_threads(args.threads)
    name = f"local_{LM_EVAL_TASKS[args.task]}"
    lm = HFLM(pretrained=args.model, batch_size=args.batch_size, device="cpu", dtype="float32")
    task_dict = get_task_dict([name], TaskManager(include_path=args.lm_eval_tasks))
    start, cpu_start = time.perf_counter(), time.process_time()
    results = evaluate(lm, task_dict, limit=args.limit, log_samples=True, verbosity="WARNING")
    seconds, cpu_seconds = time.perf_counter() - start, time.process_time() - cpu_start
    chosen = []
    for sample in sorted(results["samples"][name], key=lambda s: s["doc_id"]):
        loglikelihoods = [float(resp[0]) for resp in sample["filtered_resps"]]
        best = max(range(len(loglikelihoods)), key=loglikelihoods.__getitem__)
        chosen.append(sample["arguments"][best][1].strip())
    return {
        "seconds": seconds,
        "cpu_seconds": cpu_seconds,
        "accuracy": results["results"][name]["acc,none"],
        "chosen": chosen,
    }


# --- driver ----------------------------------------------------------------------------------


def prepare_lm_eval_tasks(
    tasks: list[str], data_dir: Path, lm_eval_python: str, work: Path
) -> None:
    """lm-eval's own task configs (prompt, choices, metric) reading our local validation split."""
    from tasks.superglue import load_split
    from tasks.superglue.data import to_jsonl

    folder = subprocess.run(
        [lm_eval_python, "-c", "import lm_eval; print(lm_eval.__path__[0])"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    for name in tasks:
        data = work / f"{name}-validation.jsonl"
        data.write_text(to_jsonl(load_split(name, "val", "local", data_dir)))
        lm_eval_name = LM_EVAL_TASKS[name]
        (work / f"local_{lm_eval_name}.yaml").write_text(
            f"include: {folder}/tasks/super_glue/{name}/default.yaml\n"
            f"task: local_{lm_eval_name}\n"
            "tag: []\n"
            "dataset_path: json\n"
            "dataset_name: null\n"
            f"dataset_kwargs:\n  data_files:\n    validation: {data}\n"
            "training_split: null\n"
        )


def load_average() -> float:
    return os.getloadavg()[0]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--worker", choices=SYSTEMS, help=argparse.SUPPRESS)
    parser.add_argument("--task", help=argparse.SUPPRESS)
    parser.add_argument("--lm-eval-tasks", help=argparse.SUPPRESS)
    parser.add_argument("--tasks", nargs="+", choices=list(LM_EVAL_TASKS), default=["rte", "wic"])
    parser.add_argument("--model", default=str(Path("~/.cache/lomo-repro/models/smollm2-135m")))
    parser.add_argument("--data-dir", type=Path, default=ROOT.parent / "shared" / "superglue")
    parser.add_argument("--lm-eval-python", default="/work/venvs/lmeval/bin/python")
    parser.add_argument("--old-commit", default="bcad334", help="the scorer before the change")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--limit", type=int, help="only the first N examples (smoke runs)")
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--systems", nargs="+", choices=SYSTEMS, default=list(SYSTEMS))
    parser.add_argument("--merge", nargs="+", type=Path, help="tabulate these results, run none")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    args = parser.parse_args()
    args.model = str(Path(args.model).expanduser())
    if args.worker:
        result = run_lm_eval(args) if args.worker == "lm-eval" else run_ours(args)
        print("RESULT " + json.dumps(result))
        return

    from lomo.io import write_atomic

    if args.merge:
        runs = [run for path in args.merge for run in json.loads(path.read_text())["runs"]]
        table = summarize(runs)
        write_atomic(args.out / "eval_vs_lm_eval.md", table)
        print(table)
        return
    with tempfile.TemporaryDirectory(prefix="eval-bench-") as tmp:
        work = Path(tmp)
        old_code = work / "old"
        old_code.mkdir()
        archive = subprocess.run(
            ["git", "-C", str(ROOT), "archive", args.old_commit, "lomo", "tasks"],
            capture_output=True,
            check=True,
        ).stdout
        subprocess.run(["tar", "-x", "-C", str(old_code)], input=archive, check=True)
        prepare_lm_eval_tasks(args.tasks, args.data_dir, args.lm_eval_python, work)
        python = {"lm-eval": args.lm_eval_python, "ours-old": sys.executable}
        python["ours-new"] = sys.executable
        code = {"lm-eval": work, "ours-old": old_code, "ours-new": ROOT}
        runs = []
        for round_ in range(args.rounds):
            for name in args.tasks:
                for k in range(len(args.systems)):
                    system = args.systems[(k + round_) % len(args.systems)]
                    command = [python[system], __file__, "--worker", system, "--task", name]
                    command += ["--model", args.model, "--data-dir", str(args.data_dir)]
                    command += ["--threads", str(args.threads)]
                    command += ["--batch-size", str(args.batch_size), "--lm-eval-tasks", tmp]
                    if args.limit:
                        command += ["--limit", str(args.limit)]
                    env = {
                        **os.environ,
                        "PYTHONPATH": str(code[system]),
                        "OMP_NUM_THREADS": str(args.threads),
                        # Idle OpenMP threads sleep instead of spinning, so CPU time counts
                        # work, not waiting for a core on a loaded machine.
                        "OMP_WAIT_POLICY": "PASSIVE",
                        "MKL_NUM_THREADS": str(args.threads),
                        "HF_DATASETS_OFFLINE": "1",
                        "HF_HUB_OFFLINE": "1",
                        "TOKENIZERS_PARALLELISM": "false",
                    }
                    load_before = load_average()
                    done = subprocess.run(command, env=env, capture_output=True, text=True)
                    if done.returncode != 0:
                        raise SystemExit(f"{system} on {name} failed:\n{done.stderr[-4000:]}")
                    line = next(x for x in done.stdout.splitlines() if x.startswith("RESULT "))
                    result = json.loads(line.removeprefix("RESULT "))
                    result.update(
                        task=name if not args.limit else f"{name}[:{args.limit}]",
                        system=system,
                        round=round_,
                        load_before=load_before,
                        load_after=load_average(),
                    )
                    runs.append(result)
                    print(
                        f"{name} {system}: {result['seconds']:.1f} s, "
                        f"cpu {result['cpu_seconds']:.1f} s, accuracy "
                        f"{result['accuracy']:.4f}, load {load_before:.1f}",
                        flush=True,
                    )
    args.out.mkdir(parents=True, exist_ok=True)
    table = summarize(runs)
    settings = {k: str(v) for k, v in vars(args).items() if k not in ("worker", "task")}
    write_atomic(
        args.out / "eval_vs_lm_eval.json", json.dumps({"settings": settings, "runs": runs}) + "\n"
    )
    write_atomic(args.out / "eval_vs_lm_eval.md", table)
    print(table)


def agreement(chosen: dict[str, list[str]], a: str, b: str) -> str:
    """How many of the two systems' predictions agree ('-' unless both were measured)."""
    if a not in chosen or b not in chosen:
        return "-"
    same = sum(x == y for x, y in zip(chosen[a], chosen[b], strict=True))
    return f"{same}/{len(chosen[a])}"


def summarize(runs: list[dict]) -> str:
    """Per task and clock (wall, CPU of the process): items, seconds of each system (median
    over rounds; '-' if not measured), the two ratios, and how many predictions (the chosen
    answer's text) agree."""
    import statistics

    lines = [
        "| task | clock | items | lm-eval s | ours-old s | ours-new s | ours-new / lm-eval "
        "| ours-old / ours-new | new = lm-eval | new = old | accuracy lm-eval / old / new "
        "| load avg |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name in dict.fromkeys(r["task"] for r in runs):
        measured = {s: [r for r in runs if (r["task"], r["system"]) == (name, s)] for s in SYSTEMS}
        measured = {s: rs for s, rs in measured.items() if rs}
        chosen = {s: rs[0]["chosen"] for s, rs in measured.items()}
        n = len(next(iter(chosen.values())))
        agree = agreement(chosen, "ours-new", "lm-eval"), agreement(chosen, "ours-new", "ours-old")
        accuracy = " / ".join(
            f"{measured[s][0]['accuracy']:.4f}" if s in measured else "-" for s in SYSTEMS
        )
        loads = [r["load_before"] for r in runs if r["task"] == name]
        for clock, key in (("wall", "seconds"), ("cpu", "cpu_seconds")):
            t = {s: statistics.median(r[key] for r in rs) for s, rs in measured.items()}
            cells = [f"{t[s]:.1f}" if s in t else "-" for s in SYSTEMS]
            ratios = [
                f"{t[a] / t[b]:.2f}" if a in t and b in t else "-"
                for a, b in (("ours-new", "lm-eval"), ("ours-old", "ours-new"))
            ]
            lines.append(
                f"| {name} | {clock} | {n} | {' | '.join(cells)} | {' | '.join(ratios)} "
                f"| {' | '.join(agree)} | {accuracy} | {min(loads):.1f}-{max(loads):.1f} |"
            )
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
