"""docs/ADDING_A_MODEL_FAMILY.md, followed for a tiny Mistral decoder: the module, the registry line, a config, and
the parity checks - nothing else in the house is touched."""

from dataclasses import dataclass
from typing import ClassVar

import pytest
import torch

from ecomvlm.recipes.models.decoders.gpt import DecoderConfig, refuse_unsupported, rope_parameters


@dataclass
class MistralConfig(DecoderConfig):  # step 1: the module (here, in the test)
    family: str = "mistral"
    chat_format: str = "llama3"

    hf_model_types: ClassVar[tuple[str, ...]] = ("mistral",)
    hf_architecture: ClassVar[str] = "MistralForCausalLM"

    @classmethod
    def from_hf(cls, hf, tp: int = 1):
        refuse_unsupported(hf, "mistral config", sliding_window=None, hidden_act="silu")
        return cls(**cls._dims_from_hf(hf, tp), rotary_base=float(rope_parameters(hf)["rope_theta"]))

    def to_hf(self):
        from transformers import MistralConfig as HF

        cfg = HF(**self._hf_dims(), rope_parameters={"rope_type": "default", "rope_theta": self.rotary_base})
        cfg.architectures = [self.hf_architecture]
        return cfg


@pytest.fixture
def mistral_registered(monkeypatch):
    from hydra.core.config_store import ConfigStore

    from ecomvlm.recipes.models import registry

    monkeypatch.setitem(registry.DECODERS, "mistral", MistralConfig)  # step 2: the registry line
    ConfigStore.instance().store(group="schema/decoder", name="mistral", node=MistralConfig)
    yield


def _tiny_hf_mistral(**kw):
    from transformers import MistralConfig as HF
    from transformers import MistralForCausalLM

    torch.manual_seed(0)
    cfg = HF(vocab_size=512, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
             num_key_value_heads=2, head_dim=16, max_position_embeddings=256, **{"sliding_window": None, **kw})
    model = MistralForCausalLM(cfg).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name:
                p.normal_(0, 0.3)
    return model


def test_a_new_decoder_family_imports_matches_hf_and_round_trips(megatron_single, mistral_registered,
                                                                tiny_hf_configs):
    from ecomvlm.recipes.models.hf_io import hf_to_megatron
    from ecomvlm.recipes.models.mapping import prefixed, to_hf, to_megatron
    from ecomvlm.recipes.models.parallel import ParallelConfig
    from ecomvlm.recipes.models.registry import VLMConfig, decoder_config_from_hf, encoder_config_from_hf
    from ecomvlm.recipes.models.sharding import shard_into
    from ecomvlm.recipes.models.vlm import build_vlm

    hf = _tiny_hf_mistral()
    dec = decoder_config_from_hf(hf.config)  # found through the registry by model_type
    assert isinstance(dec, MistralConfig)
    cfg = VLMConfig(encoder=encoder_config_from_hf(tiny_hf_configs["siglip"]), decoder=dec, image_token_id=5)
    model = build_vlm(cfg, ParallelConfig()).eval()
    shard_into(model, hf_to_megatron(cfg, hf.state_dict()))
    ids = torch.randint(10, 512, (2, 24), generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        assert (model(ids).float() - hf(ids).logits).abs().max().item() < 1e-4
    rules = prefixed(dec.mapping(), body="model.")
    back = to_hf(rules, to_megatron(rules, hf.state_dict()))
    assert set(back) == set(hf.state_dict()) and all(torch.equal(back[k], v) for k, v in hf.state_dict().items())
    assert dec.to_hf().to_dict()["num_hidden_layers"] == 2 and VLMConfig.from_dict(cfg.to_dict()).decoder == dec
    with pytest.raises(ValueError, match="sliding_window=4096 is not supported"):
        MistralConfig.from_hf(_tiny_hf_mistral(sliding_window=4096).config)


def test_a_new_family_composes_from_yaml(mistral_registered, tmp_path):
    """Step 3: a decoder YAML naming the family's schema composes into a typed config (a local conf dir here)."""
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from omegaconf import OmegaConf

    from ecomvlm.recipes.config import register

    register()
    (tmp_path / "model" / "decoder").mkdir(parents=True)
    (tmp_path / "model" / "decoder" / "tiny_mistral.yaml").write_text(
        "defaults:\n  - /schema/decoder/mistral@_here_\n  - _self_\nnum_layers: 3\nvocab_size: 512\n")
    (tmp_path / "cfg.yaml").write_text("defaults:\n  - model/decoder: tiny_mistral\n  - _self_\n")
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(tmp_path), version_base="1.3"):
        cfg = compose("cfg", overrides=["model.decoder.hidden_size=32"])
    dec = OmegaConf.to_object(cfg.model.decoder)
    assert isinstance(dec, MistralConfig) and (dec.num_layers, dec.hidden_size) == (3, 32)
    GlobalHydra.instance().clear()
