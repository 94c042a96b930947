"""Dynamic loss scaling for fp16 training with fused (in-backward) updates."""

from dataclasses import asdict, dataclass


class LossScaleUnderflowError(RuntimeError):
    """The gradients overflow even at the smallest allowed loss scale."""


@dataclass
class DynamicLossScaler:
    """Halve the scale on overflow; double it after `scale_window` clean steps in a row.

    The official LOMO code never raises the scale again after an overflow, so a run that
    overflows early trains with a needlessly small scale forever; this one recovers.

    `scale_window` is 200, not the 1000 of the official code's scaler class and of DeepSpeed's
    fp16 `loss_scale_window`: a paper run has at most 630 updates (63 batches of 16 x 10
    epochs), so a window of 1000 never acts in it. With 200 the scale can regrow three times in
    such a run, and probing a too-large scale costs at most one skipped step per 200 (0.5%).
    `init_scale` is 2**16, as the official trainer (lomo/src/lomo.py) and DeepSpeed
    (`initial_scale_power` 16) start.
    """

    init_scale: float = 2.0**16
    scale_factor: float = 2.0
    scale_window: int = 200
    min_scale: float = 1.0

    def __post_init__(self) -> None:
        if self.init_scale < self.min_scale or self.min_scale <= 0:
            raise ValueError(
                f"need 0 < min_scale <= init_scale, got min_scale={self.min_scale}, "
                f"init_scale={self.init_scale}"
            )
        if self.scale_factor <= 1 or self.scale_window < 1:
            raise ValueError(
                f"need scale_factor > 1 and scale_window >= 1, got {self.scale_factor}, "
                f"{self.scale_window}"
            )
        self.scale = float(self.init_scale)
        self.clean_steps = 0

    def update(self, overflow: bool) -> None:
        """Record one step's outcome and adjust the scale."""
        if overflow:
            if self.scale <= self.min_scale:
                raise LossScaleUnderflowError(
                    f"gradients overflow (inf/nan) even at the minimum loss scale "
                    f"{self.min_scale}: the loss itself is probably non-finite"
                )
            self.scale = max(self.scale / self.scale_factor, self.min_scale)
            self.clean_steps = 0
            return
        self.clean_steps += 1
        if self.clean_steps == self.scale_window:
            self.scale *= self.scale_factor
            self.clean_steps = 0

    def state_dict(self) -> dict:
        return {**asdict(self), "scale": self.scale, "clean_steps": self.clean_steps}

    def load_state_dict(self, state: dict) -> None:
        for key, value in state.items():
            setattr(self, key, value)
