"""megatron-core on CPU through the one shim module: a tiny GPT really trains, causal masking is right."""

import pytest
import torch

from ecomvlm.recipes.models import megatron_cpu_shim
from ecomvlm.recipes.models.decoders.qwen3 import Qwen3Config
from ecomvlm.recipes.models.parallel import ParallelConfig, ParallelConfigError, validate_parallel

DEC = Qwen3Config(num_layers=2, hidden_size=64, ffn_hidden_size=128, num_attention_heads=4, num_query_groups=2,
                  vocab_size=128, max_position_embeddings=64)


def _forward(model, tokens):
    pos = torch.arange(tokens.shape[1]).unsqueeze(0).expand(tokens.shape[0], -1)
    return model(tokens, pos, attention_mask=None)


@pytest.mark.skipif(torch.cuda.is_available(), reason="the shim must stay off when CUDA exists")
def test_shim_is_active_and_maps_cuda_factories_to_cpu(megatron_single):
    assert megatron_cpu_shim.is_active() and megatron_cpu_shim.apply() is True  # idempotent
    assert torch.zeros(2, device="cuda").device.type == "cpu"
    assert torch.ones(2).to("cuda").device.type == "cpu"
    assert torch.cuda.is_available() is False  # the truth is not hidden


def test_tiny_gpt_forward_backward_and_a_step_lowers_the_loss(megatron_single):
    torch.manual_seed(0)
    model = DEC.build(ParallelConfig())
    tokens = torch.randint(0, 128, (2, 16), generator=torch.Generator().manual_seed(1))
    labels = torch.roll(tokens, -1, 1)
    pos = torch.arange(16).unsqueeze(0).expand(2, -1)
    opt = torch.optim.SGD(model.parameters(), lr=0.5)
    losses = []
    for _ in range(3):
        loss = model(tokens, pos, attention_mask=None, labels=labels).mean()
        opt.zero_grad()
        loss.backward()
        grads = [p.grad for p in model.parameters()]
        assert all(g is not None and torch.isfinite(g).all() for g in grads)
        assert sum(g.abs().sum().item() for g in grads) > 0
        opt.step()
        losses.append(loss.item())
    assert losses[0] == pytest.approx(torch.log(torch.tensor(128.0)).item(), abs=0.5)  # ~uniform at init
    assert losses[2] < losses[0] - 0.05


def test_causal_mask_on_cpu_future_tokens_do_not_change_the_past(megatron_single):
    torch.manual_seed(0)
    model = DEC.build(ParallelConfig()).eval()
    a = torch.randint(0, 128, (1, 12), generator=torch.Generator().manual_seed(2))
    b = a.clone()
    b[0, 8:] = (b[0, 8:] + 1) % 128
    with torch.no_grad():
        la, lb = _forward(model, a), _forward(model, b)
    assert torch.allclose(la[:, :8], lb[:, :8], atol=1e-6)
    assert not torch.allclose(la[:, 8:], lb[:, 8:])


@pytest.mark.parametrize("layout, world, dims, fragment", [
    (ParallelConfig(tensor_model_parallel_size=3), 6, {"num_attention_heads": 4}, "num_attention_heads=4"),
    (ParallelConfig(tensor_model_parallel_size=2, pipeline_model_parallel_size=2), 6, {}, "not divisible by TP*PP*CP"),
    (ParallelConfig(pipeline_model_parallel_size=2), 2, {"num_layers": 3}, "num_layers=3"),
    (ParallelConfig(tensor_model_parallel_size=2), 2, {"num_query_groups": 1}, "KV heads"),
    (ParallelConfig(sequence_parallel=True), 1, {}, "sequence_parallel=True needs TP > 1"),
    (ParallelConfig(tensor_model_parallel_size=0), 1, {}, "positive integer"),
])
def test_impossible_layouts_fail_with_a_clear_message(layout, world, dims, fragment):
    with pytest.raises(ParallelConfigError, match=fragment.replace("*", r"\*")):
        validate_parallel(layout, world, **dims)


def test_valid_layout_returns_data_parallel_size():
    assert validate_parallel(ParallelConfig(tensor_model_parallel_size=2, pipeline_model_parallel_size=2), 8,
                             num_attention_heads=4, num_query_groups=2, num_layers=4) == 2


def test_tiny_hf_configs_build_models(tiny_hf_configs):
    from transformers import AutoModelForCausalLM

    for fam in ("llama", "qwen3", "gemma3"):
        model = AutoModelForCausalLM.from_config(tiny_hf_configs[fam])
        out = model(torch.randint(0, 512, (1, 8)))
        assert out.logits.shape == (1, 8, 512)


def _core_attention(model):
    return model.decoder.layers[0].self_attention.core_attention


@pytest.mark.parametrize("mask_kind", ["causal", "packed", "window"])
def test_fused_core_attention_equals_megatrons_computation(megatron_single, mask_kind):
    """Local specs use torch's fused attention: values and gradients equal megatron's DotProductAttention."""
    from megatron.core.transformer.dot_product_attention import DotProductAttention

    from ecomvlm.data_modules.packing import block_causal_mask
    from ecomvlm.recipes.models.sdpa_attention import SDPADotProductAttention

    torch.manual_seed(0)
    core = _core_attention(DEC.build(ParallelConfig()))
    assert type(core) is SDPADotProductAttention
    s, b, d = 24, 3, DEC.hidden_size // DEC.num_attention_heads
    q = torch.randn(s, b, DEC.num_attention_heads, d, requires_grad=True)
    kv = [torch.randn(s, b, DEC.num_query_groups, d, requires_grad=True) for _ in range(2)]  # grouped-query
    mask = None
    if mask_kind == "packed":  # three samples in a row + a padding tail, as the loader packs them
        mask = block_causal_mask([[0, 5, 13, 20, 24]] * b, s)
    if mask_kind == "window":  # Gemma3's sliding layers pass window | causal as the mask
        from megatron.core.transformer.utils import get_sliding_window_causal_mask

        mask = get_sliding_window_causal_mask(s, s, (4, 0))
    fused = core(q, *kv, mask)
    grads = torch.autograd.grad(fused.square().sum(), [q, *kv])
    ref = DotProductAttention.forward(core, q, *kv, mask)  # megatron's own computation, same module
    ref_grads = torch.autograd.grad(ref.square().sum(), [q, *kv])
    assert fused.shape == ref.shape == (s, b, DEC.num_attention_heads * d)
    torch.testing.assert_close(fused, ref, atol=1e-5, rtol=1e-4)
    for g, r in zip(grads, ref_grads):
        torch.testing.assert_close(g, r, atol=1e-5, rtol=1e-4)
    if mask_kind == "causal":  # the future never leaks into the past
        later = [t.detach().clone() for t in (q, *kv)]
        later[1][-1] += 5.0
        torch.testing.assert_close(core(*later, None)[:-1], fused.detach()[:-1])


def test_fused_core_attention_leaves_unexpressible_settings_to_megatron(megatron_single):
    from megatron.core.packed_seq_params import PackedSeqParams

    torch.manual_seed(0)
    core = _core_attention(DEC.build(ParallelConfig()))
    assert core._fused_ok(None, None)
    assert not core._fused_ok(None, PackedSeqParams(qkv_format="thd"))
    core.attention_dropout.p = 0.1
    assert not core.train()._fused_ok(None, None)  # dropout under megatron's RNG tracker
    assert core.eval()._fused_ok(None, None)
