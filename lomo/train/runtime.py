"""Where a run executes: one process, replicated data parallelism, or DeepSpeed ZeRO-3.

`lomo finetune` asks its `Runtime` for everything that depends on the number of processes, so
the training loop reads the same in all three cases:

- `single`: one process holds the whole model.
- `replicated` (torchrun without --deepspeed): every rank holds the whole model; gradients are
  summed over ranks (inside LOMO's hooks, or by `sum_gradients` for torch optimizers).
- `zero3` (--deepspeed CONFIG): every rank holds 1/world of each base weight
  (`lomo.sync`). LOMO/AdaLomo update their partitions inside backward; zero-shot only
  evaluates; LoRA trains replicated adapters on the partitioned, frozen base (the adapters are
  added after DeepSpeed partitioned the model, so they stay ordinary tensors, and their
  gradients are summed like plain data parallelism). sgd/adamw would need DeepSpeed's own
  optimizer and its fp32 state, which is what LOMO avoids: they are refused.

A global batch is cut into micro batches of `micro_batch` examples; rank r takes examples
r, r + world, ... of each micro batch, its loss weighted by its share of the global batch's
answer tokens, so the gradient summed over ranks is the one-process gradient of the global
batch's mean token loss. Every rank runs the same number of forwards (ZeRO-3 gathers weights
collectively): a rank left without an example runs one with weight 0.
"""

import contextlib
import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from lomo import sync
from lomo.io import open_atomic
from lomo.train import distributed

KINDS = ("single", "replicated", "zero3")


def is_partitioned(param: Tensor) -> bool:
    """A ZeRO-3 parameter (its data lives in `ds_tensor`, one slice per rank)."""
    return hasattr(param, "ds_tensor")


class Runtime:
    def __init__(self, kind: str, device: torch.device, deepspeed_config: str | None = None):
        if kind not in KINDS:
            raise ValueError(f"unknown runtime {kind!r}: expected one of {', '.join(KINDS)}")
        self.kind, self.device, self.deepspeed_config = kind, device, deepspeed_config
        self.rank, self.world = distributed.rank(), distributed.world_size()
        self.engine: Any = None  # the ZeRO-3 engine, once the model is loaded
        self.sync: sync.GradSync = sync.GradSync()  # set by load_model

    @classmethod
    def start(cls, deepspeed_config: str | None) -> "Runtime":
        """The runtime this process was launched for: ZeRO-3 with a DeepSpeed config, replicated
        under torchrun (WORLD_SIZE > 1), else one process."""
        if deepspeed_config is not None:
            return cls("zero3", distributed.init_process_group(), deepspeed_config)
        if distributed.launched_distributed():
            return cls("replicated", distributed.init_process_group())
        return cls("single", torch.device("cuda" if torch.cuda.is_available() else "cpu"))

    @property
    def main(self) -> bool:
        """The rank that writes the run folder."""
        return self.rank == 0

    @property
    def parallel(self) -> bool:
        return self.kind != "single"

    def barrier(self) -> None:
        distributed.barrier()

    @contextlib.contextmanager
    def main_first(self) -> Iterator[None]:
        """Rank 0 runs the block first (a download, a conversion, a data folder), the others
        then find its result."""
        if not self.main:
            self.barrier()
        yield
        if self.main:
            self.barrier()

    def sum(self, value: float) -> float:
        return distributed.all_sum(value)

    # --- the model ---------------------------------------------------------------------------

    def load_model(
        self, name: str, dtype: torch.dtype, attn_implementation: str, global_batch: int
    ) -> nn.Module:
        """The base model placed for this runtime: on the device, the same on every rank, or
        partitioned over the ranks from the start (ZeRO-3)."""
        from lomo.train.models import load_model

        if self.kind == "zero3":
            ds_config = deepspeed_config(self.deepspeed_config, global_batch, self.world)
            model, self.engine = distributed.zero3_model(
                name, dtype, attn_implementation, ds_config
            )
            self.sync = sync.ZeRO3Sync(self.engine)
            return model
        with self.main_first():  # rank 0 converts or downloads, the others read its cache
            model = load_model(name, dtype, attn_implementation)
        model.to(self.device)
        if self.kind == "replicated":
            distributed.broadcast_parameters(model)
            self.sync = sync.ReplicatedSync()
        return model

    def end_of_backward(self) -> None:
        """After a plain backward (torch optimizers): ZeRO-3 releases the weights it left
        gathered. LOMO and AdaLomo do this inside their own backward."""
        self.sync.end_of_backward()

    def sum_gradients(self, params: list[Tensor]) -> None:
        """Sum the accumulated `.grad` of replicated parameters over ranks (torch optimizers;
        LOMO does this inside its hooks): the global gradient, as `loss_weights` weighs each
        rank's losses. A missing gradient counts as zero, so every rank joins the same
        collectives."""
        if not self.parallel:
            return
        for param in params:
            if param.grad is None:
                param.grad = torch.zeros_like(param)
            torch.distributed.all_reduce(param.grad, op=torch.distributed.ReduceOp.SUM)

    def non_finite(self, model: nn.Module, optimizers: list) -> list[str]:
        """Names of trainable weights (any rank's partition) and optimizer states holding inf
        or NaN."""
        bad = []
        for name, param in model.named_parameters():
            if param.requires_grad:
                data = param.ds_tensor if is_partitioned(param) else param
                if not bool(torch.isfinite(data).all()):
                    bad.append(name)
        names = {id(p): n for n, p in model.named_parameters()}
        for opt in optimizers:
            for param, state in opt.state.items():
                for key, value in state.items():
                    if torch.is_tensor(value) and value.is_floating_point():
                        if not bool(torch.isfinite(value).all()):
                            bad.append(f"{type(opt).__name__} {key} of {names.get(id(param))}")
        if self.parallel:  # every rank learns of every rank's bad partitions
            gathered: list[list[str]] = [[] for _ in range(self.world)]
            torch.distributed.all_gather_object(gathered, bad)
            bad = sorted({name for names in gathered for name in names})
        return bad

    # --- batches -----------------------------------------------------------------------------

    def micro_batches(self, ids: list[int], micro_batch: int) -> list[list[int]]:
        """This rank's examples of each micro batch of the global batch `ids` (maybe empty)."""
        return [
            ids[start : start + micro_batch][self.rank :: self.world]
            for start in range(0, len(ids), micro_batch)
        ]

    def loss_weights(self, tokens: list[int]) -> list[float]:
        """Weights of this rank's micro-batch mean losses (answer tokens per micro batch): each
        micro batch's share of the global batch's answer tokens, so the sum over micro batches
        and ranks is the global mean token loss. Not world times that with a mean over ranks:
        a rank's fp16 gradient would be world times its part and could overflow where the
        global gradient does not (lomo.sync)."""
        total = self.sum(sum(tokens))
        return [n / total for n in tokens]

    # --- evaluation --------------------------------------------------------------------------

    def evaluate(
        self,
        model: nn.Module,
        examples: list[dict],
        score: Callable[[list[dict]], list[dict]],
        metrics: Callable[[list[dict], list[int]], dict[str, float]],
    ) -> tuple[dict[str, float], list[dict]]:
        """Task metrics and per-example rows; sharded over ranks and gathered in order."""
        if not self.parallel:
            rows = score(examples)
            return metrics(examples, [row["pred"] for row in rows]), rows
        return distributed.evaluate_sharded(
            model, examples, score, metrics, zero3=self.kind == "zero3"
        )

    # --- checkpoints -------------------------------------------------------------------------

    def save_checkpoint(
        self, path: Path, step: int, model: nn.Module, optimizers: list, state: dict
    ) -> None:
        """The checkpoint after training step `step`: `state` (the loop's own: epoch,
        schedulers, RNG, logs) and the trainable weights and optimizer states. Under ZeRO-3
        each rank writes its partitions and optimizer state first; `path` (rank 0) then commits
        the step, and only then do the ranks remove their older files (one checkpoint kept)."""
        trainable = {n: p for n, p in model.named_parameters() if p.requires_grad}
        if self.kind == "zero3":
            shard = {
                "partitions": {
                    n: compact(p.ds_tensor) for n, p in trainable.items() if is_partitioned(p)
                },
                "optimizers": [opt.state_dict() for opt in optimizers],
            }
            save_atomic(rank_file(path, self.rank, step), shard)
            self.barrier()
        if self.main:
            weights = {n: compact(p) for n, p in trainable.items() if not is_partitioned(p)}
            optimizer_states = (
                None if self.kind == "zero3" else [o.state_dict() for o in optimizers]
            )
            checkpoint = {
                **state,
                "step": step,
                "world_size": self.world,
                "runtime": self.kind,
                "weights": weights,
                "optimizers": optimizer_states,
            }
            save_atomic(path, checkpoint)
        if self.kind == "zero3":
            self.barrier()  # the step is committed: the older partitions can go
            for older in rank_files(path, self.rank):
                if older != rank_file(path, self.rank, step):
                    older.unlink(missing_ok=True)

    def load_checkpoint(
        self, checkpoint: dict, path: Path, model: nn.Module, optimizers: list
    ) -> None:
        """Restore the trainable weights and optimizer states saved by `save_checkpoint`."""
        if checkpoint.get("world_size") != self.world or checkpoint.get("runtime") != self.kind:
            raise ValueError(
                f"{path} was written by {checkpoint.get('world_size')} process(es) "
                f"({checkpoint.get('runtime')}); resume with the same launch, not {self.world} "
                f"({self.kind})"
            )
        params = dict(model.named_parameters())
        with torch.no_grad():
            for name, value in checkpoint["weights"].items():
                params[name].copy_(value)
        optimizer_states = checkpoint["optimizers"]
        if self.kind == "zero3":
            shard = read_checkpoint_file(rank_file(path, self.rank, checkpoint["step"]))
            with torch.no_grad():
                for name, value in shard["partitions"].items():
                    params[name].ds_tensor.copy_(value)
                    sync.refresh_persistent(params[name])
            optimizer_states = shard["optimizers"]
        for opt, opt_state in zip(optimizers, optimizer_states, strict=True):
            opt.load_state_dict(opt_state)

    def remove_checkpoints(self, path: Path) -> None:
        for rank_checkpoint in rank_files(path, self.rank):
            rank_checkpoint.unlink(missing_ok=True)
        self.barrier()
        if self.main:
            path.unlink(missing_ok=True)

    def full_state_dict(self, model: nn.Module) -> dict[str, Tensor] | None:
        """Every weight, for `--save-model`: None means the model's own state dict (one
        process or replicated); under ZeRO-3 the partitions are gathered one parameter at a
        time onto rank 0's CPU."""
        return distributed.gather_state_dict(model) if self.kind == "zero3" else None


class RunFolderError(OSError):
    """A run folder that cannot be used as it is: in use, another run's results, a file that
    cannot be read."""


def read_checkpoint_file(path: Path) -> dict:
    """A checkpoint or rank file as the loop wrote it. Only tensors, numbers, strings and
    containers are read (`weights_only`): unpickling runs code, and a file planted or altered in
    a shared run folder must not run code on the next resume."""
    try:
        return torch.load(path, weights_only=True)
    except Exception as error:  # truncated, garbage, or objects a checkpoint never holds
        raise RunFolderError(
            f"{path} cannot be read ({type(error).__name__}): delete it to start the run over"
        ) from error


def rank_file(path: Path, rank: int, step: int) -> Path:
    """ZeRO-3: one rank's partitions and optimizer state after training step `step`."""
    return path.with_name(f"{path.stem}.rank{rank}.step{step}.pt")


def rank_files(path: Path, rank: int) -> list[Path]:
    return sorted(path.parent.glob(f"{path.stem}.rank{rank}.step*.pt"))


def compact(tensor: Tensor) -> Tensor:
    """The tensor to save: itself (torch.save copies GPU storages to the host one at a time), or
    a copy where it is a view into a larger storage, which torch.save would write whole."""
    tensor = tensor.detach()
    return tensor if tensor.untyped_storage().nbytes() == tensor.nbytes else tensor.clone()


def save_atomic(path: Path, value: Any) -> None:
    """torch.save streamed into the file: no serialised copy of the checkpoint in memory."""
    with open_atomic(path) as f:
        torch.save(value, f)


def deepspeed_config(path: str, global_batch: int, world: int) -> dict[str, Any]:
    """The DeepSpeed JSON config, with the batch sizes set from ours. Precision comes from
    --dtype (the model is built in it), so the JSON must not enable fp16/bf16."""
    with open(path) as f:
        ds_config = json.load(f)
    if ds_config.get("zero_optimization", {}).get("stage") != 3:
        raise ValueError(f"{path}: lomo finetune --deepspeed supports ZeRO stage 3 only")
    if any(ds_config.get(key, {}).get("enabled") for key in ("fp16", "bf16")):
        raise ValueError(f"{path}: remove fp16/bf16; the precision is set by --dtype")
    if global_batch % world:
        raise ValueError(f"global_batch {global_batch} is not a multiple of {world} processes")
    ds_config["train_batch_size"] = global_batch
    ds_config["train_micro_batch_size_per_gpu"] = global_batch // world
    ds_config["gradient_accumulation_steps"] = 1
    return ds_config
