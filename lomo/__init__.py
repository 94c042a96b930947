"""lomo-repro: LOMO and AdaLomo, low-memory full-parameter fine-tuning (arXiv:2306.09782)."""

from lomo.loss_scaler import DynamicLossScaler, LossScaleUnderflowError
from lomo.optim import LOMO, AdaLomo, FusedOptimizer

__all__ = ["LOMO", "AdaLomo", "DynamicLossScaler", "FusedOptimizer", "LossScaleUnderflowError"]
