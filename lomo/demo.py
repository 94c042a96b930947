"""`lomo demo`: fine-tune a tiny random-init LLaMA with LOMO for a few seconds, loss falling.

A smoke test of the whole optimizer path (norm pass, clipping, scheduler, fused update)
that runs anywhere; the real reproduction is the Snakemake workflow.
"""

import argparse

import torch
from transformers import LlamaConfig, LlamaForCausalLM

from lomo import LOMO, argtypes


def run_demo(args: argparse.Namespace) -> None:
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=256,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=64,
    )
    model = LlamaForCausalLM(config)
    # A fixed set of sequences to memorise: the loss can only fall if the updates are right.
    tokens = torch.randint(0, config.vocab_size, (8, 32))
    opt = LOMO(model, lr=args.lr, clip_grad_norm=1.0)
    warmup = max(1, args.steps // 10)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda step: min((step + 1) / warmup, (args.steps - step) / (args.steps - warmup))
    )
    print(
        f"LOMO on a random {sum(p.numel() for p in model.parameters()) / 1e6:.2f}M-parameter "
        f"LLaMA, {args.steps} steps, lr {args.lr}, clip_grad_norm 1.0"
    )
    first = None
    for step in range(args.steps):
        loss = opt.step(lambda: model(input_ids=tokens, labels=tokens).loss)
        scheduler.step()
        first = first if first is not None else loss.item()
        if step % 10 == 0 or step == args.steps - 1:
            print(
                f"step {step:3d}  loss {loss.item():.4f}  grad norm "
                f"{opt.last_grad_norm.item():.3f}  lr {opt.param_groups[0]['lr']:.4f}"
            )
    print(f"loss {first:.4f} -> {loss.item():.4f}")


def add_parser(subparsers: argparse._SubParsersAction, summary: str) -> None:
    parser = subparsers.add_parser("demo", help=summary)
    parser.add_argument("--steps", type=argtypes.positive_int, default=60)
    parser.add_argument("--lr", type=argtypes.positive_float, default=0.5)
    parser.set_defaults(func=run_demo)
