"""Fine-tuning: models, evaluation, the runtime (one process / replicated / ZeRO-3), the run."""
