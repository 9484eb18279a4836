"""torchrun worker: import a tiny HF LLaVA dir at TP x PP, run one batch (images + text) and report.

argv: HF_DIR TP PP OUT_DIR. Rank 0 writes OUT_DIR/result_tp{TP}_pp{PP}.json with the loss (last stage),
max |gathered - imported| state difference (round trip through sharding) and, for PP=1, the full logits
(safetensors) so the test can compare them with HF's.
"""
import json
import sys
from pathlib import Path

import torch


def main(hf_dir: str, tp: int, pp: int, out_dir: str) -> None:
    from megatron.core import parallel_state
    from megatron.core.pipeline_parallel import get_forward_backward_func
    from safetensors.torch import load_file, save_file

    from ecomvlm.recipes.models.hf_io import hf_to_megatron, load_hf_into, read_hf_state_dict, vlm_config_from_hf
    from ecomvlm.recipes.models.parallel import ParallelConfig, destroy_distributed, init_distributed
    from ecomvlm.recipes.models.sharding import gather_full_state

    batch = load_file(str(Path(hf_dir) / "batch.safetensors"))
    image_token_id = int(batch["image_token_id"].item())
    parallel = ParallelConfig(tensor_model_parallel_size=tp, pipeline_model_parallel_size=pp)
    info = init_distributed(parallel, seed=1)
    cfg = vlm_config_from_hf(llava_path=hf_dir, image_token_id=image_token_id, tp=tp)
    from ecomvlm.recipes.models.vlm import build_vlm

    model = build_vlm(cfg, parallel).eval()
    untouched = load_hf_into(model, llava_path=hf_dir)
    assert not untouched, untouched

    ids, labels, pix = batch["input_ids"], batch["labels"], batch["pixel_values"]
    views = {k: batch.get(k) for k in ("image_sizes", "image_tiles")}  # AnyRes models

    def forward_step(data_iterator, model):
        out = model(ids, pixel_values=pix if model.pre_process else None, labels=labels, **views)

        def loss_func(per_token):
            loss = per_token.float().mean()
            return loss, {"loss": loss.detach()}

        return out, loss_func

    with torch.no_grad():
        losses = get_forward_backward_func()(
            forward_step_func=forward_step, data_iterator=iter([None]), model=[model], num_microbatches=1,
            seq_length=ids.shape[1], micro_batch_size=ids.shape[0], forward_only=True)
        logits = model(ids, pixel_values=pix, runtime_gather_output=True, **views) if pp == 1 else None

    full = gather_full_state(model)
    ref = hf_to_megatron(cfg, *(read_hf_state_dict(hf_dir),) * 3)
    diff = max((full[k] - ref[k]).abs().max().item() for k in ref)
    assert set(full) == set(ref), (set(full) ^ set(ref))
    result = {"tp": tp, "pp": pp, "roundtrip_max_diff": diff}
    # the loss lives on the last pipeline stage; send it to global rank 0
    loss = torch.tensor(losses[0]["loss"].item() if parallel_state.is_pipeline_last_stage() else 0.0)
    torch.distributed.all_reduce(loss)
    result["loss"] = loss.item() / tp  # every TP rank of the last stage contributed the same value
    if info["rank"] == 0:
        if logits is not None:
            save_file({"logits": logits.float().contiguous()}, str(Path(out_dir) / f"logits_tp{tp}_pp{pp}.safetensors"))
        (Path(out_dir) / f"result_tp{tp}_pp{pp}.json").write_text(json.dumps(result))
    destroy_distributed()


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4])
