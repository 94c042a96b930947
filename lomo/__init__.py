"""lomo-repro: LOMO and AdaLomo, low-memory full-parameter fine-tuning (arXiv:2306.09782).

Layers, each importing only from those before it (tests/test_lint.py checks it):
- `lomo.io`: atomic file writes.
- the optimizer core: `lomo.optim` (LOMO, AdaLomo), `lomo.loss_scaler`, `lomo.sync` (what a
  gradient hook does under data parallelism / ZeRO-3), `lomo.loss` (the chunked training loss).
- `lomo.train`: models, evaluation, the runtime (one process, replicated, ZeRO-3), `finetune`.
- `lomo.measure`: the memory census, workloads, `memory`, `throughput`, `plan`, `sgd_claims`.
- `lomo.report`: tables, analysis helpers, the README section, the notebook runner.
- entry points: `lomo.cli`, `lomo.workflow` (the Snakefile's helpers), `lomo.demo`.

`from lomo import LOMO, AdaLomo` loads the optimizer core only when first used, so the light
commands and a Snakemake parse do not import torch.
"""

import importlib

_EXPORTS = {
    "LOMO": "lomo.optim",
    "AdaLomo": "lomo.optim",
    "FusedOptimizer": "lomo.optim",
    "DynamicLossScaler": "lomo.loss_scaler",
    "LossScaleUnderflowError": "lomo.loss_scaler",
}
__all__ = list(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'lomo' has no attribute {name!r}")
