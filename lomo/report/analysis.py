"""Helpers for the notebooks in analysis/: read run folders, compare methods on the same
examples, write tables (CSV + LaTeX), figures (PNG + PDF) and claim verdicts.

Nothing here trains or measures; the notebooks call these on files the workflow wrote.
"""

import csv
import io
import json
from pathlib import Path

import numpy as np
import pandas as pd
from scipy.stats import binomtest, t

from lomo.io import read_yaml, write_atomic
from lomo.report import tables
from lomo.report.tables import NOT_SETTINGS, PAPER_METHOD_NAMES, PAPER_MODEL_SIZES, wilson_interval
from tasks.superglue.metrics import gold_nll_per_token

CLAIM_COLUMNS = ["claim", "verdict", "evidence"]
RUN_COLUMNS = ["model", "method", "task", "seed", "protocol", "template", "lora_r", "n"]
RUN_COLUMNS += ["accuracy", "ci_low", "ci_high", "gold_nll", "train_gold_nll", "grid_points"]
RUN_COLUMNS += ["chosen", "run"]
PAIRED_CELLS = ["both", "a_only", "b_only", "neither"]
# The paper's Table 3 setting: 1000/1000 examples sampled with random.seed(0), best epoch on
# the evaluation set (`lomo finetune --protocol paper`), the official LOMO prompts.
PAPER_PROTOCOL = "paper"
PAPER_TEMPLATE = "lomo"
PAPER_LORA_R = 2  # Table 3's LoRA rank
FIGURE3_MODEL, FIGURE3_HF_MODEL = "LLaMA-13B", "huggyllama/llama-13b"
FIGURE3_METHODS = {"lora": "LoRA", "lora+lomo": "LoRA+LOMO", "lomo": "LOMO"}  # ours: paper's


def load_runs(results_dir: str | Path, paths: list[str] | None = None) -> pd.DataFrame:
    """One row per fine-tuning cell (model, method, task, seed, data protocol, prompt template,
    LoRA rank): n, accuracy (reported epoch), its 95% Wilson interval and the run folder.
    Where a cell holds several runs (the points of an lr x warmup grid), the one the protocol's
    rule selects (`lomo.report.tables.select_grid`, as the workflow's tables), with the number of
    points and the chosen settings. `lora_r` is None for methods without LoRA."""
    if paths is None:  # every run under results_dir (a workflow passes its own runs)
        paths = sorted(Path(results_dir).glob("superglue/*/*/*/seed*/metrics.json"))
    runs = [tables.load_run(path) for path in tables.unique_paths([str(p) for p in paths])]
    runs = [r for r in runs if "accuracy" in r["metrics"]["reported"]["eval"]]  # not ReCoRD
    rows = []
    for run in tables.select_grid(runs, grid_keys(runs)):
        metrics, config = run["metrics"], run["config"]
        accuracy = metrics["reported"]["eval"]["accuracy"]
        low, high = wilson_interval(accuracy, metrics["n_eval"])
        rows.append(
            {
                "model": metrics["model"],
                "method": metrics["method"],
                "task": metrics["task"],
                "seed": metrics["seed"],
                "protocol": metrics.get("protocol", config.get("protocol")),
                "template": metrics.get("template", config.get("template")),
                "lora_r": config.get("lora_r") if "lora" in metrics["method"] else None,
                "n": metrics["n_eval"],
                "accuracy": accuracy,
                "ci_low": low,
                "ci_high": high,
                "gold_nll": metrics["reported"]["eval"].get("gold_nll"),
                "train_gold_nll": metrics.get("train_end", {}).get("gold_nll"),
                "grid_points": run["grid_points"],
                "chosen": run["chosen"],
                "run": str(Path(run["path"]).parent),
            }
        )
    return pd.DataFrame(rows, columns=RUN_COLUMNS)


def grid_keys(runs: list[dict]) -> list[str]:
    """The settings that differ between runs of one cell (model, method, task, seed,
    protocol, template, LoRA rank): the grid the selection rule chooses over."""
    cells = {}
    for run in runs:
        config = run["config"]
        lora_r = config.get("lora_r") if "lora" in config["method"] else None
        cell = (config["model"], config["method"], config["task"], config["seed"])
        cells.setdefault((*cell, config["protocol"], config.get("template"), lora_r), []).append(
            config
        )
    keys = set()
    for configs in cells.values():
        for key in set().union(*configs) - NOT_SETTINGS:
            if len({json.dumps(c.get(key), sort_keys=True) for c in configs}) > 1:
                keys.add(key)
    return sorted(keys)


def read_measurements(paths: list[str] | None, default: str) -> pd.DataFrame:
    """The `lomo memory` or `lomo throughput` CSVs at `paths` (None: every file matching the
    glob `default`, e.g. the published paper/tables/memory_*.csv), one frame with each row's
    source file; empty when there is none."""
    files = sorted(Path().glob(default)) if paths is None else [Path(p) for p in paths]
    frames = [pd.read_csv(path).assign(source=str(path)) for path in files]
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()


def predictions(run_dir: str | Path) -> dict[str, dict]:
    """Example id -> the run's prediction row of its reported epoch."""
    lines = (Path(run_dir) / "predictions.jsonl").read_text().splitlines()
    records = [json.loads(line) for line in lines]
    return {json.dumps(r["idx"], sort_keys=True): r for r in records}


def correctness(run_dir: str | Path) -> dict[str, bool]:
    """Example id -> whether the run's reported epoch predicted it correctly."""
    return {key: r["pred"] == r["gold"] for key, r in predictions(run_dir).items()}


def gold_nll_by_example(run_dir: str | Path) -> dict[str, float]:
    """Example id -> the gold answer's negative log-likelihood per token at the reported
    epoch (the run's score reduction, as metrics.json's `gold_nll`)."""
    config = read_yaml(Path(run_dir) / "config.yaml")
    reduction = config.get("reduction", "sum")
    return {key: gold_nll_per_token(r, reduction) for key, r in predictions(run_dir).items()}


def one_lora_rank(runs: pd.DataFrame, rank: int = PAPER_LORA_R) -> pd.DataFrame:
    """`runs` with one LoRA rank per (model, method, task, seed, protocol, template): where a
    cell holds several ranks (Figure 3's sweep), only the paper's Table 3 rank `rank`."""
    cell = ["model", "method", "task", "seed", "protocol", "template"]
    ranks = runs.groupby(cell, dropna=False).lora_r.transform("nunique")
    return runs[(ranks <= 1) | (runs.lora_r == rank)]


def paired_runs(
    runs: pd.DataFrame, model: str, method_a: str, method_b: str
) -> list[tuple[tuple, str, str]]:
    """(task, seed, protocol, template) and the two run folders, for every cell that both
    methods ran on `model`: their evaluation examples can be paired."""
    runs = runs[runs["model"] == model]
    cell = ["task", "seed", "protocol", "template"]
    a = runs[runs["method"] == method_a].set_index(cell)
    b = runs[runs["method"] == method_b].set_index(cell)
    for method, frame in ((method_a, a), (method_b, b)):
        if frame.index.duplicated().any():
            raise ValueError(
                f"several {method} runs of {model} on one (task, seed, protocol, template), e.g. "
                f"{list(frame.index[frame.index.duplicated()][0])}: pass the runs of one setting"
            )
    keys = sorted(set(a.index) & set(b.index), key=str)
    return [(key, a.loc[key, "run"], b.loc[key, "run"]) for key in keys]


def paired_counts(runs: pd.DataFrame, model: str, method_a: str, method_b: str) -> pd.DataFrame:
    """One row per (task, seed) that both methods ran on `model` with the same protocol and
    template: the paired 2x2 table over the examples both evaluated (`both` right, `a_only`,
    `b_only`, `neither`)."""
    rows = []
    for key, run_a, run_b in paired_runs(runs, model, method_a, method_b):
        right_a, right_b = correctness(run_a), correctness(run_b)
        shared = right_a.keys() & right_b.keys()
        ra = [right_a[example] for example in shared]
        rb = [right_b[example] for example in shared]
        table = {
            "both": sum(x and y for x, y in zip(ra, rb, strict=True)),
            "a_only": sum(x and not y for x, y in zip(ra, rb, strict=True)),
            "b_only": sum(y and not x for x, y in zip(ra, rb, strict=True)),
            "neither": sum(not (x or y) for x, y in zip(ra, rb, strict=True)),
        }
        rows.append({"task": key[0], "seed": key[1], **table})
    return pd.DataFrame(rows, columns=["task", "seed", *PAIRED_CELLS])


def newcombe_paired_interval(
    both: int, a_only: int, b_only: int, neither: int, confidence: float = 0.95
) -> tuple[float, float, float]:
    """Difference p_a - p_b of two accuracies measured on the same n examples, and its
    confidence interval by Newcombe's hybrid score method for paired data (method 10 of
    R. G. Newcombe, "Improved confidence intervals for the difference between binomial
    proportions based on paired data", Statistics in Medicine 17:2635-2650, 1998; as in
    Fagerland, Lydersen and Laake, "Statistical Analysis of Contingency Tables", 2017, ch. 8):
    Wilson score limits of each accuracy, combined with the continuity-corrected correlation
    phi of the paired table. Returns (difference, low, high)."""
    n = both + a_only + b_only + neither
    if n == 0:
        raise ValueError("a paired interval needs at least one example")
    right_a, right_b = both + a_only, both + b_only
    p_a, p_b = right_a / n, right_b / n
    l_a, u_a = wilson_interval(p_a, n, confidence)
    l_b, u_b = wilson_interval(p_b, n, confidence)
    margins = right_a * (n - right_a) * right_b * (n - right_b)
    cross = both * neither - a_only * b_only
    if margins == 0 or 0 <= cross <= n / 2:
        phi = 0.0
    else:
        phi = (cross - n / 2 if cross > n / 2 else cross) / np.sqrt(margins)
    below = np.sqrt((p_a - l_a) ** 2 - 2 * phi * (p_a - l_a) * (u_b - p_b) + (u_b - p_b) ** 2)
    above = np.sqrt((u_a - p_a) ** 2 - 2 * phi * (u_a - p_a) * (p_b - l_b) + (p_b - l_b) ** 2)
    diff = p_a - p_b
    return float(diff), float(diff - below), float(diff + above)


def mcnemar_p(a_only: int, b_only: int) -> float:
    """McNemar's exact test of two methods on the same examples: the two-sided binomial test of
    the discordant examples (only A right vs only B right)."""
    return binomtest(a_only, a_only + b_only).pvalue if a_only + b_only else 1.0


def pooled_paired_difference(counts: pd.DataFrame, confidence: float = 0.95) -> dict:
    """Method A minus method B, pooled over tasks and seeds, with a `confidence` interval.

    The estimate is the unweighted mean over tasks (as the paper's Avg. column) of each
    task's mean over seeds of the paired accuracy difference. Its interval is built from the
    Newcombe paired interval of every (task, seed) table (`newcombe_paired_interval`):
    within a task, the seeds' distances from estimate to limit are averaged, which is
    conservative whatever the correlation between seeds (they may evaluate the same examples,
    and the spread of a mean is at most the mean of the spreads); across tasks, whose examples
    are independent, the distances are combined by root sum of squares, the MOVER method of
    G. Y. Zou and A. Donner, "Construction of confidence limits about effect measures: a
    general approach", Statistics in Medicine 27:1693-1702, 2008. With one task and one seed
    this is Newcombe's interval. McNemar's exact test on the pooled discordant examples is
    reported as a secondary statistic (`p_value`); verdicts do not use it.
    """
    if counts.empty:
        return {
            "tasks": [],
            "seeds": [],
            "examples": 0,
            "diff": np.nan,
            "low": np.nan,
            "high": np.nan,
            "a_only": 0,
            "b_only": 0,
            "p_value": np.nan,
        }
    per_cell = [
        newcombe_paired_interval(*(int(r[c]) for c in PAIRED_CELLS), confidence)
        for r in counts.to_dict("records")
    ]
    cells = counts.assign(
        diff=[d for d, _, _ in per_cell],
        below=[d - low for d, low, _ in per_cell],
        above=[high - d for d, _, high in per_cell],
    )
    a_only, b_only = int(counts.a_only.sum()), int(counts.b_only.sum())
    return {
        **pool_cells(cells),
        "examples": int(counts[PAIRED_CELLS].to_numpy().sum()),
        "a_only": a_only,
        "b_only": b_only,
        "p_value": mcnemar_p(a_only, b_only),
    }


def pool_cells(cells: pd.DataFrame) -> dict:
    """Pool per-(task, seed) differences `diff` with their interval distances `below` and
    `above` (limit = diff - below, diff + above): the mean over tasks of each task's mean over
    seeds; within a task the seeds' distances are averaged (conservative whatever their
    correlation), across tasks combined by root sum of squares (MOVER; see
    `pooled_paired_difference`)."""
    tasks = cells.groupby("task")[["diff", "below", "above"]].mean()
    diff = tasks["diff"].mean()
    return {
        "tasks": sorted(tasks.index),
        "seeds": sorted(cells.seed.unique().tolist()),
        "diff": float(diff),
        "low": float(diff - np.sqrt((tasks.below**2).sum()) / len(tasks)),
        "high": float(diff + np.sqrt((tasks.above**2).sum()) / len(tasks)),
    }


def claim_setting(runs: pd.DataFrame, model: str, methods: list[str]) -> str:
    """What a claim comparing `methods` on `model` names: the model and the one data protocol
    of their runs (a claim is per protocol)."""
    cells = runs[(runs.model == model) & runs.method.isin(methods)]
    protocols = sorted(set(cells.protocol.dropna()))
    if len(protocols) > 1:
        raise ValueError(f"runs of several protocols {protocols}: one claim per protocol")
    return f"{model}, {protocols[0]} protocol" if protocols else model


def paired_nll_differences(
    runs: pd.DataFrame, model: str, method: str, baseline: str, confidence: float = 0.95
) -> pd.DataFrame:
    """One row per (task, seed) that both ran on `model`: over the examples both evaluated,
    the mean of baseline's minus method's gold-answer NLL per token (positive: `method`
    gives the gold answer more probability), the two means, and the paired t interval's
    distances (`below`, `above`)."""
    rows = []
    for key, run_method, run_baseline in paired_runs(runs, model, method, baseline):
        ours, base = gold_nll_by_example(run_method), gold_nll_by_example(run_baseline)
        shared = sorted(ours.keys() & base.keys())
        gains = np.array([base[k] - ours[k] for k in shared])
        n = len(gains)
        half = (
            t.ppf((1 + confidence) / 2, n - 1) * gains.std(ddof=1) / np.sqrt(n) if n > 1 else np.inf
        )
        rows.append(
            {
                "task": key[0],
                "seed": key[1],
                "n": n,
                "baseline_nll": float(np.mean([base[k] for k in shared])),
                "method_nll": float(np.mean([ours[k] for k in shared])),
                "diff": float(gains.mean()),
                "below": float(half),
                "above": float(half),
            }
        )
    columns = ["task", "seed", "n", "baseline_nll", "method_nll", "diff", "below", "above"]
    return pd.DataFrame(rows, columns=columns)


def nll_claim(runs: pd.DataFrame, model: str, method: str, baseline: str, settings: dict) -> dict:
    """The claim "`method` learns: it lowers the held-out gold-answer NLL below `baseline`
    (zero-shot)" on `model` under one protocol, decided like a superiority claim
    (`claim_verdict`, boundary 0) on the pooled paired interval of the NLL reduction
    (`paired_nll_differences`, pooled by `pool_cells`). NLL moves long before accuracy does
    at small scale; accuracy has its own claim."""
    confidence = settings["confidence"]
    setting = claim_setting(runs, model, [method, baseline])
    claim = f"{method} lowers the held-out gold-answer NLL below {baseline} ({setting})"
    differences = paired_nll_differences(runs, model, method, baseline, confidence)
    if differences.empty:
        return {"claim": claim, "verdict": "not measured", "evidence": "no paired runs"}
    c = pool_cells(differences)
    verdict = claim_verdict(c["low"], c["high"], None)
    evidence = (
        f"{len(c['tasks'])} task(s) ({' '.join(c['tasks'])}), {len(c['seeds'])} seed(s), "
        f"{int(differences.n.sum())} paired examples: NLL per answer token "
        f"{differences.baseline_nll.mean():.3f} ({baseline}) -> "
        f"{differences.method_nll.mean():.3f} ({method}), reduction {c['diff']:+.3f} nats, "
        f"{100 * confidence:g}% CI [{c['low']:+.3f}, {c['high']:+.3f}] (paired t per task and "
        "seed, MOVER over tasks); supported if the lower limit > 0"
    )
    return {"claim": claim, "verdict": verdict, "evidence": evidence, **c}


def claim_verdict(low: float, high: float, margin: float | None) -> str:
    """The verdict on a comparative claim from the confidence interval [low, high] of the
    difference A - B (same units as `margin`).

    The claim "A beats B" (superiority, `margin` None) holds where the difference is > 0;
    "A is not worse than B" (non-inferiority, `margin` m > 0) holds where it is > -m. With
    that boundary b (0 or -m): "supported" when low > b (the whole interval lies where the
    claim holds); "not supported" when high <= b (the interval excludes the claim);
    "inconclusive" otherwise, i.e. low <= b < high (the interval straddles the boundary: the
    data cannot tell). A missing interval (no paired runs) is "not measured".
    """
    if np.isnan(low) or np.isnan(high):
        return "not measured"
    if margin is not None and margin <= 0:
        raise ValueError(f"a non-inferiority margin must be > 0, got {margin}")
    boundary = 0.0 if margin is None else -margin
    if low > boundary:
        return "supported"
    if high <= boundary:
        return "not supported"
    return "inconclusive"


def method_claim(
    runs: pd.DataFrame,
    model: str,
    method_a: str,
    method_b: str,
    settings: dict,
    noninferiority: bool,
    label: str = "",
) -> dict:
    """The claim "method_a beats method_b" (or, with `noninferiority`, "method_a is not worse
    than method_b by more than the margin") on `model` under one data protocol (`runs` of one
    protocol; the claim names it), from the paired runs: verdict by `claim_verdict` on the
    pooled interval (`pooled_paired_difference`), with `settings` the config's `claims` block
    (confidence, noninferiority_margin_points); evidence names the tasks, seeds and examples."""
    confidence, margin_points = settings["confidence"], settings["noninferiority_margin_points"]
    setting = claim_setting(runs, model, [method_a, method_b])
    claim = (
        f"{method_a} not worse than {method_b} (margin {margin_points:g} points, {setting})"
        if noninferiority
        else f"{method_a} beats {method_b} ({setting})"
    )
    claim = f"{label}{claim}"
    counts = paired_counts(runs, model, method_a, method_b)
    c = pooled_paired_difference(counts, confidence)
    if not c["tasks"]:
        return {"claim": claim, "verdict": "not measured", "evidence": "no paired runs"}
    margin = margin_points / 100 if noninferiority else None
    verdict = claim_verdict(c["low"], c["high"], margin)
    boundary = f"-{margin_points:g}" if noninferiority else "0"
    evidence = (
        f"{len(c['tasks'])} task(s) ({' '.join(c['tasks'])}), "
        f"{len(c['seeds'])} seed(s), {c['examples']} paired examples: {method_a} - {method_b} = "
        f"{100 * c['diff']:+.1f} points, {100 * confidence:g}% CI [{100 * c['low']:+.1f}, "
        f"{100 * c['high']:+.1f}] (Newcombe paired per task and seed, MOVER over tasks); "
        f"supported if the lower limit > {boundary}; secondary: only {method_a} right on "
        f"{c['a_only']}, only {method_b} on {c['b_only']} (McNemar p = {c['p_value']:.2g})"
    )
    return {"claim": claim, "verdict": verdict, "evidence": evidence, **c}


def claim_settings(profile: str, config_dir: str | Path = "config") -> dict:
    """The `claims` block (confidence, noninferiority_margin_points, ...) declared for
    `profile` before its runs: config/{profile}.yaml's (config/config.yaml is the laptop
    profile); keys it lacks, or a profile without a file of its own (a renamed copy such as
    `--config profile=rehearsal-test`), take config/config.yaml's."""
    config_dir = Path(config_dir)
    settings = dict(read_yaml(config_dir / "config.yaml").get("claims") or {})
    profile_file = config_dir / f"{profile}.yaml"
    if profile_file.exists():
        settings.update(read_yaml(profile_file).get("claims") or {})
    missing = {"confidence", "noninferiority_margin_points"} - set(settings)
    if missing:
        raise ValueError(
            f"config: the claims block for profile {profile!r} lacks {sorted(missing)}"
        )
    return settings


def paper_counterpart(model: str) -> tuple[str, str]:
    """(size, name) of the paper's LLaMA that a run's numbers are set beside: the model itself
    for huggyllama/llama-*, else LLaMA-7B, the nearest size."""
    size = PAPER_MODEL_SIZES.get(model)
    return (size, f"LLaMA-{size}") if size else ("7B", "LLaMA-7B")


def unlike_paper(
    model: str, protocol: str | None, template: str | None, paper_model: str | None = None
) -> str:
    """What makes a run unlike the paper's number it is set beside ('' when like for like):
    another model than `paper_model` (default: any of the paper's LLaMAs), another data
    protocol than the paper's 1000/1000 sampling with the best epoch, or another prompt
    template than the official LOMO one (quirks allowed)."""
    differs = []
    if (model != paper_model) if paper_model else (model not in PAPER_MODEL_SIZES):
        differs.append(f"model {model}")
    if protocol != PAPER_PROTOCOL:
        differs.append(f"protocol {protocol}")
    if template is None or template.split("+")[0] != PAPER_TEMPLATE:
        differs.append(f"template {template}")
    return ", ".join(differs)


def pool_seeds(runs: pd.DataFrame, keys: list[str]) -> pd.DataFrame:
    """Runs grouped by `keys` with their seeds pooled: seeds, n, correct, accuracy (correct
    over evaluated examples) and its 95% Wilson interval."""
    pooled = (
        runs.assign(correct=runs.accuracy * runs.n)
        .groupby(keys, as_index=False)
        .agg(seeds=("seed", "count"), n=("n", "sum"), correct=("correct", "sum"))
    )
    pooled["accuracy"] = pooled.correct / pooled.n
    intervals = [wilson_interval(a, n) for a, n in zip(pooled.accuracy, pooled.n, strict=True)]
    pooled["ci_low"], pooled["ci_high"] = zip(*intervals, strict=True)
    return pooled


def superglue_comparison(runs: pd.DataFrame, reference: pd.DataFrame) -> pd.DataFrame:
    """Our accuracy per (model, protocol, template, method, task), seeds pooled (correct over
    evaluated examples, 95% Wilson interval), beside the paper's Table 3 value (`reference`:
    size, method, task, accuracy in percent) of the named LLaMA. `ours_minus_paper` is filled
    only where the run is like for like (the paper's model, protocol and template); elsewhere
    `unlike_paper` says what differs. `avg` rows: the unweighted mean over the tasks the
    paper reports (else all tasks run), the same task set for every method of a model."""
    keys = ["model", "protocol", "template", "method", "task"]
    paper_value = {
        (r.size, r.method, r.task): r.accuracy / 100 for r in reference.itertuples(index=False)
    }
    runs = runs.assign(
        protocol=runs.protocol.fillna("unknown"), template=runs.template.fillna("unknown")
    )
    pooled = pool_seeds(runs, keys)
    # the spread of the runs' accuracies over seeds (NaN for one seed)
    pooled["seed_sd"] = (
        runs.groupby(keys).accuracy.std().reindex(pd.MultiIndex.from_frame(pooled[keys])).to_numpy()
    )
    pooled["paper_model"] = [paper_counterpart(m)[1] for m in pooled.model]
    pooled["paper"] = [
        paper_value.get((paper_counterpart(m)[0], PAPER_METHOD_NAMES.get(meth), t), np.nan)
        for m, meth, t in zip(pooled.model, pooled.method, pooled.task, strict=True)
    ]
    paper_tasks = set(reference.task) - {"avg"}
    averages = []
    for key, group in pooled.groupby(keys[:4]):
        shared = group[group.task.isin(paper_tasks)]
        part = shared if len(shared) else group
        # per seed, the mean over the averaged tasks; their spread over seeds
        cell = runs.set_index(keys[:4]).loc[[key]]
        per_seed = cell[cell.task.isin(part.task)].groupby("seed").accuracy.mean()
        averages.append(
            {
                **dict(zip(keys[:4], key, strict=True)),
                "task": "avg",
                "seeds": group.seeds.max(),
                "n": part.n.sum(),
                "accuracy": part.accuracy.mean(),
                "seed_sd": per_seed.std(),
                "paper_model": group.paper_model.iloc[0],
                "paper": shared.paper.mean()
                if len(shared) and shared.paper.notna().all()
                else np.nan,
            }
        )
    table = pd.concat([pooled.drop(columns="correct"), pd.DataFrame(averages)], ignore_index=True)
    table["paper_protocol"] = PAPER_PROTOCOL
    table["unlike_paper"] = [
        unlike_paper(m, p, t)
        for m, p, t in zip(table.model, table.protocol, table.template, strict=True)
    ]
    like = (table.unlike_paper == "") & table.paper.notna()
    table["ours_minus_paper"] = (table.accuracy - table.paper).where(like)
    columns = [*keys, "seeds", "n", "accuracy", "ci_low", "ci_high", "seed_sd", "paper_model"]
    columns += ["paper_protocol", "paper", "unlike_paper", "ours_minus_paper"]
    return table[columns].sort_values(keys, ignore_index=True)


def figure3_comparison(runs: pd.DataFrame, reference: pd.DataFrame) -> pd.DataFrame:
    """The paper's Figure 3 (LoRA and LoRA+LOMO by rank r, and LOMO alone, LLaMA-13B, BoolQ
    and MultiRC; `reference`: model, task, method, lora_r, accuracy in percent) beside our runs
    of those methods and tasks on any model: LoRA runs need a `lora_r` in their config.yaml.
    Seeds pooled; `ours_minus_paper` only where the run is like for like (LLaMA-13B, the
    paper's protocol and template), else `unlike_paper` says what differs. Empty when no run
    matches."""
    runs = runs[runs.method.isin(list(FIGURE3_METHODS)) & runs.task.isin(set(reference.task))]
    runs = runs[(runs.method == "lomo") | runs.lora_r.notna()]
    keys = ["model", "protocol", "template", "method", "task", "lora_r"]
    columns = [*keys, "seeds", "n", "accuracy", "ci_low", "ci_high", "paper_model", "paper"]
    columns += ["unlike_paper", "ours_minus_paper"]
    if runs.empty:
        return pd.DataFrame(columns=columns)
    runs = runs.assign(lora_r=runs.lora_r.fillna(0).astype(int))  # 0: LOMO alone, no LoRA
    pooled = pool_seeds(runs, keys)
    paper = {
        (r.task, r.method, 0 if pd.isna(r.lora_r) else int(r.lora_r)): r.accuracy / 100
        for r in reference.itertuples(index=False)
    }
    pooled["paper_model"] = FIGURE3_MODEL
    pooled["paper"] = [
        paper.get((t, FIGURE3_METHODS[m], r), np.nan)
        for t, m, r in zip(pooled.task, pooled.method, pooled.lora_r, strict=True)
    ]
    pooled["unlike_paper"] = [
        unlike_paper(m, p, t, FIGURE3_HF_MODEL)
        for m, p, t in zip(pooled.model, pooled.protocol, pooled.template, strict=True)
    ]
    like = (pooled.unlike_paper == "") & pooled.paper.notna()
    pooled["ours_minus_paper"] = (pooled.accuracy - pooled.paper).where(like)
    return pooled[columns].sort_values(keys, ignore_index=True)


def inference_memory_claims(memory: pd.DataFrame, paper_overhead: float) -> list[dict]:
    """'LOMO memory ~ inference memory', one claim per LOMO row of the memory tables: what
    training adds to a forward pass (gradients + optimizer states) relative to the parameters,
    supported below 10%, with AdamW's overhead at the same model, dtype and AC as contrast."""
    if memory.empty or "lomo" not in set(memory.optimizer):
        evidence = f"no memory table with a LOMO row; paper: +{100 * paper_overhead:.1f}%"
        return [
            {
                "claim": "lomo memory ~ inference memory",
                "verdict": "not measured",
                "evidence": evidence,
            }
        ]
    claims = []
    for row in memory[memory.optimizer == "lomo"].to_dict("records"):
        attention = f", {row['attn']} attention" if "attn" in row else ""
        setting = f"{row['model']}, {row['dtype']}{attention}, AC {row['ac']}"
        trained = row["gradients_gb"] + row["optimizer_states_gb"]
        overhead = trained / row["parameters_gb"]
        same_setting = (memory.model == row["model"]) & (memory.dtype == row["dtype"])
        same_setting &= memory.ac == row["ac"]
        if "attn" in row:
            same_setting &= memory.attn == row["attn"]
        adamw = memory[same_setting & (memory.optimizer == "adamw")]
        contrast = ""
        if len(adamw):
            a = adamw.iloc[0]
            contrast = (
                f"; AdamW +{100 * (a.gradients_gb + a.optimizer_states_gb) / a.parameters_gb:.0f}%"
            )
        claims.append(
            {
                "claim": f"lomo memory ~ inference memory ({setting})",
                "verdict": "supported" if overhead < 0.1 else "not supported",
                "evidence": (
                    f"{row['dtype']}, seq {row['seq']}, batch {row['batch']}: gradients + "
                    f"optimizer states = {trained:.3f} GB on {row['parameters_gb']:.3f} GB of "
                    f"parameters (+{100 * overhead:.1f}%, threshold 10%){contrast}; "
                    f"paper +{100 * paper_overhead:.1f}%"
                ),
            }
        )
    return claims


def latex_table(df: pd.DataFrame, float_format: str = "{:.3g}") -> str:
    """A booktabs tabular of `df` (numbers formatted with `float_format`)."""

    def cell(value: object) -> str:
        if isinstance(value, float):
            return "-" if pd.isna(value) else float_format.format(value)
        return str(value).replace("_", r"\_").replace("%", r"\%").replace("&", r"\&")

    lines = [
        r"\begin{tabular}{" + "l" * len(df.columns) + "}",
        r"\toprule",
        " & ".join(cell(c) for c in df.columns) + r" \\",
        r"\midrule",
        *(" & ".join(cell(v) for v in row) + r" \\" for row in df.itertuples(index=False)),
        r"\bottomrule",
        r"\end{tabular}",
    ]
    return "\n".join(lines) + "\n"


def save_table(df: pd.DataFrame, out_dir: str | Path, name: str) -> list[Path]:
    """`out_dir/tables/name.csv` and `.tex`; returns the paths."""
    tables = Path(out_dir) / "tables"
    csv_path, tex_path = tables / f"{name}.csv", tables / f"{name}.tex"
    write_atomic(csv_path, df.to_csv(index=False))
    write_atomic(tex_path, latex_table(df))
    return [csv_path, tex_path]


def save_figure(fig, out_dir: str | Path, name: str) -> list[Path]:
    """`out_dir/figures/name.png` (150 dpi) and `.pdf`; returns the paths."""
    paths = []
    for suffix in ("png", "pdf"):
        buffer = io.BytesIO()
        # no creation date in the PDF: an unchanged figure reruns to identical bytes
        metadata = {"CreationDate": None} if suffix == "pdf" else None
        fig.savefig(buffer, format=suffix, dpi=150, bbox_inches="tight", metadata=metadata)
        path = Path(out_dir) / "figures" / f"{name}.{suffix}"
        write_atomic(path, buffer.getvalue())
        paths.append(path)
    return paths


def save_claims(rows: list[dict], out_dir: str | Path, name: str) -> Path:
    """`out_dir/tables/claims_{name}.csv` (claim, verdict, evidence), read by
    `lomo readme-results`; also prints each verdict."""
    text = io.StringIO()
    writer = csv.DictWriter(text, fieldnames=CLAIM_COLUMNS, lineterminator="\n")
    writer.writeheader()
    writer.writerows({k: row[k] for k in CLAIM_COLUMNS} for row in rows)
    path = Path(out_dir) / "tables" / f"claims_{name}.csv"
    write_atomic(path, text.getvalue())
    for row in rows:
        print(f"- {row['claim']}: {row['verdict'].upper()}. {row['evidence']}")
    return path
