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
from scipy.special import log_softmax
from scipy.stats import binomtest, t

from lomo.io import read_yaml, write_atomic
from lomo.report import tables
from lomo.report.tables import NOT_SETTINGS, PAPER_METHOD_NAMES, PAPER_MODEL_SIZES, wilson_interval
from tasks.superglue.metrics import gold_nll_per_token

CLAIM_COLUMNS = ["claim", "verdict", "evidence"]
RUN_COLUMNS = ["model", "method", "task", "seed", "protocol", "template", "lora_r", "n"]
RUN_COLUMNS += ["accuracy", "ci_low", "ci_high", "gold_nll", "train_gold_nll", "grid_points"]
RUN_COLUMNS += ["chosen", "flags", "run"]
# The paper's Table 3 setting: 1000/1000 examples sampled with random.seed(0), best epoch on
# the evaluation set (`lomo finetune --protocol paper`), the official LOMO prompts.
PAPER_PROTOCOL = "paper"
PAPER_TEMPLATE = "lomo"
PAPER_LORA_R = 2  # Table 3's LoRA rank
FIGURE3_MODEL, FIGURE3_HF_MODEL = "LLaMA-13B", "huggyllama/llama-13b"
FIGURE3_METHODS = {"lora": "LoRA", "lora+lomo": "LoRA+LOMO", "lomo": "LOMO"}  # ours: paper's


def load_runs(results_dir: str | Path, paths: list[str] | None = None) -> pd.DataFrame:
    """One row per fine-tuning cell (model, method, task, seed, data protocol, prompt template,
    LoRA rank): n, accuracy (reported epoch), its 95% Wilson interval, the run's health flags
    (`flags`, '; '-joined, '' when none) and the run folder.
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
                # `lomo finetune`'s warnings on the reported predictions, e.g. one class
                "flags": "; ".join(metrics.get("flags", [])),
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


def score_reduction(run_dir: str | Path) -> str:
    """How the run scored an option: "sum" or "mean" of its tokens' log-probabilities."""
    config = read_yaml(Path(run_dir) / "config.yaml")
    return config.get("reduction", "sum")


def gold_nll_by_example(run_dir: str | Path) -> dict[str, float]:
    """Example id -> the gold answer's raw negative log-likelihood per answer token at the
    reported epoch (as metrics.json's `gold_nll`). It falls when the model learns the answer
    strings, whichever option is right."""
    reduction = score_reduction(run_dir)
    return {key: gold_nll_per_token(r, reduction) for key, r in predictions(run_dir).items()}


def gold_nll_among_options_by_example(run_dir: str | Path) -> dict[str, float]:
    """Example id -> -log P(gold | options): minus the log-softmax, at the gold option, of the
    options' total log-likelihoods (summed over each option's tokens). It falls only when the
    gold answer gains on the other options, which is what the prediction uses."""
    reduction = score_reduction(run_dir)
    nll = {}
    for key, r in predictions(run_dir).items():
        totals = np.asarray(r["scores"], dtype=float)
        if reduction == "mean":  # scores are per token: back to totals
            totals = totals * np.asarray(r["n_tokens"])
        nll[key] = float(-log_softmax(totals)[r["gold"]])
    return nll


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


def paired_examples(
    runs: pd.DataFrame, model: str, method_a: str, method_b: str, per_example
) -> pd.DataFrame:
    """One row per (task, seed, example id) that both methods evaluated on `model` with the same
    protocol and template: `a` and `b`, each run's value `per_example(run_dir)[example]` (e.g.
    `correctness`). Seeds may evaluate the same example: `example` says which."""
    rows = []
    for (task, seed, *_), run_a, run_b in paired_runs(runs, model, method_a, method_b):
        values_a, values_b = per_example(run_a), per_example(run_b)
        for example in sorted(values_a.keys() & values_b.keys()):
            rows.append(
                {
                    "task": task,
                    "seed": seed,
                    "example": example,
                    "a": float(values_a[example]),
                    "b": float(values_b[example]),
                }
            )
    return pd.DataFrame(rows, columns=["task", "seed", "example", "a", "b"])


def clustered_variance_of_mean(values: np.ndarray, clusters: np.ndarray) -> float:
    """Variance of the mean of `values` when values of one cluster may be correlated and
    clusters are independent: the cluster-robust (sandwich) variance of a mean, with the small
    sample factor G / (G - 1) for G clusters, G / (G - 1) * sum_g (sum of u in g)^2 / N^2 for
    deviations u from the mean over N values. With every value its own cluster this is the
    usual s^2 / N (sample variance, ddof 1)."""
    values = np.asarray(values, dtype=float)
    deviations = pd.Series(values - values.mean())
    cluster_sums = deviations.groupby(np.asarray(clusters)).sum().to_numpy()
    groups, n = len(cluster_sums), len(values)
    if groups < 2:
        return np.inf
    return float(groups / (groups - 1) * (cluster_sums**2).sum() / n**2)


def design_effect(values: np.ndarray, clusters: np.ndarray) -> float:
    """How much clustering inflates the variance of the mean of `values` (the design effect of
    L. Kish, "Survey Sampling", 1965): the cluster-robust variance over the variance that
    treats every value as independent; 1 for a single value or values that do not vary."""
    if len(values) < 2:
        return 1.0
    independent = clustered_variance_of_mean(values, np.arange(len(values)))
    if independent == 0:
        return 1.0
    return clustered_variance_of_mean(values, clusters) / independent


def task_accuracy_differences(pairs: pd.DataFrame, confidence: float = 0.95) -> pd.DataFrame:
    """Per task, accuracy of A minus B over the (seed, example) pairs of `paired_examples` with
    `correctness` values, seeds pooled, and its interval distances `below`, `above`.

    The interval is Newcombe's paired interval (`newcombe_paired_interval`) of the task's
    pooled 2x2 table, widened by the square root of the design effect of clustering the pairs
    by example id (`design_effect`): seeds whose test sets overlap evaluate the same examples,
    which are not independent evidence. With one seed, or seeds on disjoint examples, the
    design effect is 1 and this is Newcombe's interval."""
    rows = []
    for task, group in pairs.groupby("task"):
        right_a, right_b = group.a.astype(bool), group.b.astype(bool)
        table = {
            "both": int((right_a & right_b).sum()),
            "a_only": int((right_a & ~right_b).sum()),
            "b_only": int((right_b & ~right_a).sum()),
            "neither": int((~right_a & ~right_b).sum()),
        }
        diff, low, high = newcombe_paired_interval(*table.values(), confidence)
        widen = np.sqrt(design_effect((group.a - group.b).to_numpy(), group.example.to_numpy()))
        rows.append(
            {
                "task": task,
                "seeds": group.seed.nunique(),
                "pairs": len(group),
                "examples": group.example.nunique(),
                **table,
                "diff": diff,
                "below": widen * (diff - low),
                "above": widen * (high - diff),
            }
        )
    return pd.DataFrame(rows)


def task_nll_differences(pairs: pd.DataFrame, confidence: float = 0.95) -> pd.DataFrame:
    """Per task, the mean NLL reduction b - a (positive: method `a` gives the gold answer more
    probability than baseline `b`) over the (seed, example) pairs of `paired_examples` with
    NLL values, seeds pooled, and its t interval's distances: standard error by
    `clustered_variance_of_mean` over example ids (seeds whose test sets overlap evaluate the
    same examples), t with (unique examples - 1) degrees of freedom. With one seed this is the
    paired t interval."""
    rows = []
    for task, group in pairs.groupby("task"):
        gains = (group.b - group.a).to_numpy()
        examples = group.example.nunique()
        se = np.sqrt(clustered_variance_of_mean(gains, group.example.to_numpy()))
        half = t.ppf((1 + confidence) / 2, examples - 1) * se if examples > 1 else np.inf
        rows.append(
            {
                "task": task,
                "seeds": group.seed.nunique(),
                "pairs": len(group),
                "examples": examples,
                "method_nll": group.a.mean(),
                "baseline_nll": group.b.mean(),
                "diff": gains.mean(),
                "below": half,
                "above": half,
            }
        )
    return pd.DataFrame(rows)


def pool_tasks(tasks: pd.DataFrame) -> dict:
    """Pool per-task differences `diff` with interval distances `below` and `above`: the
    unweighted mean over tasks (as the paper's Avg. column); tasks evaluate different examples,
    so their distances combine by root sum of squares, the MOVER method of G. Y. Zou and
    A. Donner, "Construction of confidence limits about effect measures: a general approach",
    Statistics in Medicine 27:1693-1702, 2008. One task: its own interval. Also the number of
    (seed, example) pairs and of unique examples behind it."""
    diff = tasks["diff"].mean()
    return {
        "tasks": sorted(tasks.task),
        "pairs": int(tasks.pairs.sum()),
        "examples": int(tasks.examples.sum()),
        "diff": float(diff),
        "low": float(diff - np.sqrt((tasks.below**2).sum()) / len(tasks)),
        "high": float(diff + np.sqrt((tasks.above**2).sum()) / len(tasks)),
    }


def deciding_tasks(tasks: pd.DataFrame, boundary: float) -> list[str]:
    """The tasks the pooled estimate's side of the claim's boundary rests on: those whose
    removal moves the mean over the other tasks to the other side of `boundary` (at or below it
    where the estimate is above, above it where the estimate is at or below). With one task,
    that task."""
    if len(tasks) == 1:
        return list(tasks.task)
    above = tasks["diff"].mean() > boundary
    total, others = tasks["diff"].sum(), len(tasks) - 1
    return [
        task
        for task, diff in zip(tasks.task, tasks["diff"], strict=True)
        if ((total - diff) / others > boundary) != above
    ]


def one_class_runs(runs: pd.DataFrame, model: str, methods: list[str], tasks: list[str]) -> str:
    """The runs of `methods` on `model` and `tasks` whose predictions `lomo finetune` flagged as
    one class (>= 90% one option, metrics.json's `flags`), as "method task seeds ..."; '' when
    none is."""
    cells = runs[(runs.model == model) & runs.method.isin(methods) & runs.task.isin(tasks)]
    flagged = cells[cells["flags"].str.contains("one class")]  # `.flags` is pandas
    return ", ".join(
        f"{method} {task} seed(s) {' '.join(str(s) for s in sorted(group.seed))}"
        for (method, task), group in flagged.groupby(["method", "task"])
    )


def estimate_notes(
    tasks: pd.DataFrame,
    boundary: float,
    runs: pd.DataFrame,
    model: str,
    methods: list[str],
    points: bool,
) -> str:
    """What a pooled estimate rests on, for a claim's evidence: each task's difference (in
    accuracy points with `points`, else in nats), the task(s) it comes from where one task
    decides its side of the boundary (`deciding_tasks`), and any runs flagged as one class
    (`one_class_runs`)."""
    per_task = " ".join(
        f"{task} {100 * d:+.1f}" if points else f"{task} {d:+.3f}"
        for task, d in zip(tasks.task, tasks["diff"], strict=True)
    )
    notes = f"per task: {per_task}"
    deciding = deciding_tasks(tasks, boundary)
    if deciding:
        notes += f"; from one task: {' '.join(deciding)}"
    flagged = one_class_runs(runs, model, methods, list(tasks.task))
    if flagged:
        notes += f"; runs flagged one class (>= 90% one option): {flagged}"
    return notes


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


def claim_setting(runs: pd.DataFrame, model: str, methods: list[str]) -> str:
    """What a claim comparing `methods` on `model` names: the model and the one data protocol
    of their runs (a claim is per protocol)."""
    cells = runs[(runs.model == model) & runs.method.isin(methods)]
    protocols = sorted(set(cells.protocol.dropna()))
    if len(protocols) > 1:
        raise ValueError(f"runs of several protocols {protocols}: one claim per protocol")
    return f"{model}, {protocols[0]} protocol" if protocols else model


def sample_size(tasks: pd.DataFrame, pairs: pd.DataFrame) -> str:
    """The evidence's opening: tasks, seeds, (seed, example) pairs and unique examples."""
    return (
        f"{len(tasks)} task(s) ({' '.join(tasks.task)}), {pairs.seed.nunique()} seed(s), "
        f"{len(pairs)} (seed, example) pairs on {int(tasks.examples.sum())} unique examples"
    )


def nll_claim(
    runs: pd.DataFrame,
    model: str,
    method: str,
    baseline: str,
    settings: dict,
    among_options: bool = False,
) -> dict:
    """The claim "`method` lowers the held-out gold answer's NLL below `baseline` (zero-shot)"
    on `model` under one protocol, on one of two measures: the raw NLL per answer token
    (`gold_nll_by_example`; it also falls when the model merely learns the answer strings) or,
    with `among_options`, -log P(gold | options) (`gold_nll_among_options_by_example`; it falls
    only when the gold answer gains on the other options). Decided like a superiority claim
    (`claim_verdict`, boundary 0) on the pooled interval of the reduction
    (`task_nll_differences`, seeds clustered by example, `pool_tasks` over tasks)."""
    confidence = settings["confidence"]
    setting = claim_setting(runs, model, [method, baseline])
    if among_options:
        measure, per_example = "-log P(gold | options)", gold_nll_among_options_by_example
        claim = f"{method} lowers the held-out gold answer's NLL among the options, {measure}, "
        claim += f"below {baseline} ({setting})"
        unit = "nats per example"
    else:
        measure, per_example = "raw NLL per answer token", gold_nll_by_example
        claim = f"{method} lowers the held-out gold answer's raw NLL per answer token below "
        claim += f"{baseline}, learning the answer strings included ({setting})"
        unit = "nats per token"
    pairs = paired_examples(runs, model, method, baseline, per_example)
    if pairs.empty:
        return {"claim": claim, "verdict": "not measured", "evidence": "no paired runs"}
    tasks = task_nll_differences(pairs, confidence)
    c = pool_tasks(tasks)
    verdict = claim_verdict(c["low"], c["high"], None)
    evidence = (
        f"{sample_size(tasks, pairs)}: {measure} {tasks.baseline_nll.mean():.3f} ({baseline}) -> "
        f"{tasks.method_nll.mean():.3f} ({method}), reduction {c['diff']:+.3f} {unit}, "
        f"{100 * confidence:g}% CI [{c['low']:+.3f}, {c['high']:+.3f}] (paired t per task, "
        "seeds clustered by example, MOVER over tasks); supported if the lower limit > 0; "
        f"{estimate_notes(tasks, 0.0, runs, model, [method, baseline], points=False)}"
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
    pooled accuracy difference (`task_accuracy_differences` per task, `pool_tasks` over
    tasks), with `settings` the config's `claims` block (confidence,
    noninferiority_margin_points); evidence names the tasks, seeds and examples, each task's
    difference, and whether one task or one-class runs carry the estimate (`estimate_notes`)."""
    confidence, margin_points = settings["confidence"], settings["noninferiority_margin_points"]
    setting = claim_setting(runs, model, [method_a, method_b])
    claim = (
        f"{method_a} not worse than {method_b} (margin {margin_points:g} points, {setting})"
        if noninferiority
        else f"{method_a} beats {method_b} ({setting})"
    )
    claim = f"{label}{claim}"
    pairs = paired_examples(runs, model, method_a, method_b, correctness)
    if pairs.empty:
        return {"claim": claim, "verdict": "not measured", "evidence": "no paired runs"}
    tasks = task_accuracy_differences(pairs, confidence)
    c = pool_tasks(tasks)
    margin = margin_points / 100 if noninferiority else None
    verdict = claim_verdict(c["low"], c["high"], margin)
    boundary = -margin if noninferiority else 0.0
    evidence = (
        f"{sample_size(tasks, pairs)}: {method_a} - {method_b} = {100 * c['diff']:+.1f} points, "
        f"{100 * confidence:g}% CI [{100 * c['low']:+.1f}, {100 * c['high']:+.1f}] (Newcombe "
        "paired per task, widened by the design effect of seeds sharing examples, MOVER over "
        f"tasks); supported if the lower limit > {100 * boundary:g}; "
        f"{estimate_notes(tasks, boundary, runs, model, [method_a, method_b], points=True)}"
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
