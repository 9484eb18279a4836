"""`make demo` / `ecomvlm demo`: the main job on CPU, end to end, with what exists today.

Steps (each prints what it did):
  1. synthesise an e-commerce dataset (images + LLaVA JSON + eval sets)
  2. build a tiny ChatML tokenizer on its text
  3. a tiny megatron-core decoder (CPU shim, gloo, TP=1) trains on the stage-3 instruction answers
     (loss on assistant tokens only) and its held-out loss is shown before/after
The vision stages, shards, export and evaluation join this demo as their issues land (see README).
"""

from __future__ import annotations

import json
import random
import time
from pathlib import Path

from rich.console import Console
from rich.table import Table

console = Console()


def _conversations(path: Path) -> list[list[dict[str, str]]]:
    from ecomvlm.data_modules.chat_templates import llava_to_messages

    return [llava_to_messages(r["conversations"]) for r in json.loads(path.read_text())]


def run_demo(workdir: Path, quick: bool = False) -> int:
    import torch

    from ecomvlm.data_modules.chat_templates import get_chat_format
    from ecomvlm.data_modules.conversation import tokenize_conversation
    from ecomvlm.data_modules.synth import SynthConfig, synthesize
    from ecomvlm.data_modules.tiny_tokenizer import build_tiny_tokenizer, save_tiny_tokenizer
    from ecomvlm.recipes.models.decoder import DecoderConfig, build_gpt
    from ecomvlm.recipes.models.parallel import ParallelConfig, destroy_distributed, init_distributed

    t0 = time.time()
    workdir.mkdir(parents=True, exist_ok=True)
    n_items, steps = (60, 30) if quick else (400, 150)

    console.rule("[bold]1. synthetic e-commerce data")
    data_dir = workdir / "data"
    manifest = synthesize(SynthConfig(out=data_dir, n=n_items, n_eval=n_items // 4, seed=0, image_size=128))
    console.print(f"wrote {manifest['images']} images and {sum(manifest['records'].values())} records to {data_dir}")

    console.rule("[bold]2. tiny tokenizer (ChatML / Qwen3 style)")
    convs = _conversations(data_dir / "train" / "stage3_instruct.json")
    corpus = [m["content"] for c in convs for m in c]
    fmt = get_chat_format("chatml")
    tokenizer = build_tiny_tokenizer("chatml", corpus=corpus, vocab_size=600)
    save_tiny_tokenizer(tokenizer, workdir / "tokenizer")
    console.print(f"vocab {len(tokenizer)} tokens, saved to {workdir / 'tokenizer'}")

    console.rule("[bold]3. tiny megatron-core decoder learns the instruction answers (CPU)")
    examples = [tokenize_conversation(c, tokenizer, fmt) for c in convs]
    max_len = 160
    examples = [e for e in examples if 2 < len(e) <= max_len]
    rng = random.Random(0)
    rng.shuffle(examples)
    n_val = max(8, len(examples) // 10)
    val, train = examples[:n_val], examples[n_val:]

    def batch(exs):
        L = max(len(e) for e in exs)
        ids = torch.full((len(exs), L), tokenizer.pad_token_id, dtype=torch.long)
        mask = torch.zeros((len(exs), L))
        for i, e in enumerate(exs):
            ids[i, : len(e)] = torch.tensor(e.input_ids)
            mask[i, : len(e)] = torch.tensor(e.loss_mask, dtype=torch.float)
        return ids[:, :-1], ids[:, 1:], mask[:, 1:]

    info = init_distributed(ParallelConfig(), seed=1234)
    vocab = ((len(tokenizer) + 63) // 64) * 64
    dec = DecoderConfig(family="qwen3", num_layers=2, hidden_size=96, ffn_hidden_size=256, num_attention_heads=4,
                        num_query_groups=2, vocab_size=vocab, max_position_embeddings=max_len, qk_layernorm=True)
    model = build_gpt(dec, ParallelConfig())

    def masked_loss(exs) -> torch.Tensor:
        inp, lab, mask = batch(exs)
        pos = torch.arange(inp.shape[1]).unsqueeze(0).expand(inp.shape[0], -1)
        per_tok = model(inp, pos, attention_mask=None, labels=lab)
        return (per_tok * mask).sum() / mask.sum()

    @torch.no_grad()
    def val_loss() -> float:
        model.eval()
        out = sum(masked_loss(val[i: i + 16]).item() for i in range(0, len(val), 16)) / len(range(0, len(val), 16))
        model.train()
        return out

    before = val_loss()
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.0)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=3e-3, total_steps=steps, pct_start=0.1)
    first = None
    for step in range(steps):
        exs = [train[(step * 16 + j) % len(train)] for j in range(16)]
        loss = masked_loss(exs)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        first = loss.item() if first is None else first
        if step % max(1, steps // 5) == 0 or step == steps - 1:
            console.print(f"step {step:4d}  train loss {loss.item():.3f}")
    after = val_loss()
    destroy_distributed()
    n_params = sum(p.numel() for p in model.parameters())

    table = Table(title="demo summary")
    table.add_column("what")
    table.add_column("value", justify="right")
    table.add_row("items (train / eval)", f"{manifest['items']['train']} / {manifest['items']['eval']}")
    table.add_row("decoder params", f"{n_params:,}")
    table.add_row("device", str(info["device"]))
    table.add_row("held-out answer loss before", f"{before:.3f}")
    table.add_row("held-out answer loss after", f"{after:.3f}")
    table.add_row("wall time", f"{time.time() - t0:.0f} s")
    console.print(table)
    console.print("[dim]Not in this demo yet: vision stages, shards, HF export, benchmarks (issues #3-#7).[/dim]")
    (workdir / "demo_result.json").write_text(json.dumps(
        {"val_loss_before": before, "val_loss_after": after, "steps": steps, "params": n_params}, indent=2) + "\n")
    if not after < before:
        console.print("[red]the decoder did not learn: held-out loss did not decrease[/red]")
        return 1
    return 0
