"""torchrun worker: one forward/backward of a tiny megatron-core GPT at the TP size given by the world size.

Writes {"loss", "grad_norm", "tp"} to the JSON path in argv[1] (rank 0). Run with nproc 1 and 2 and compare.
"""
import json
import os
import sys

import torch


def main(out_path: str) -> None:
    from megatron.core import parallel_state

    from ecomvlm.recipes.models.decoders.llama import LlamaConfig
    from ecomvlm.recipes.models.parallel import ParallelConfig, destroy_distributed, init_distributed

    world = int(os.environ.get("WORLD_SIZE", "1"))
    parallel = ParallelConfig(tensor_model_parallel_size=world)
    dec = LlamaConfig(num_layers=2, hidden_size=64, ffn_hidden_size=128, num_attention_heads=4,
                        num_query_groups=2, vocab_size=128, max_position_embeddings=64)
    info = init_distributed(parallel, seed=1234, num_attention_heads=4, num_query_groups=2, vocab_size=128)
    torch.manual_seed(1234)  # same full (master) weights on every rank and at every TP size
    model = dec.build(parallel)
    g = torch.Generator().manual_seed(7)
    tokens = torch.randint(0, 128, (2, 16), generator=g)
    labels = torch.roll(tokens, -1, dims=1)
    position_ids = torch.arange(16).unsqueeze(0).expand(2, -1)
    per_token = model(tokens, position_ids, attention_mask=None, labels=labels)
    loss = per_token.float().mean()
    loss.backward()
    # grad norm over the *full* model: TP-sharded params sum across ranks, replicated ones count once
    sq = torch.zeros(())
    for p in model.parameters():
        if p.grad is None:
            continue
        if getattr(p, "tensor_model_parallel", False) or info["tp_rank"] == 0:
            sq += p.grad.float().pow(2).sum()
    torch.distributed.all_reduce(sq, group=parallel_state.get_tensor_model_parallel_group())
    if info["rank"] == 0:
        with open(out_path, "w") as f:
            json.dump({"loss": loss.item(), "grad_norm": sq.sqrt().item(), "tp": world,
                       "shim": not torch.cuda.is_available()}, f)
    destroy_distributed()


if __name__ == "__main__":
    main(sys.argv[1])
