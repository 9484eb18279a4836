"""The Nemotron-Nano-VL path: a checkpoint folder that ships its own modeling code (``auto_map``,
``trust_remote_code``), no HF processor class, an InternVL-style image processor that tiles images, and
``<img><image>...</img>`` context tokens the model fills with image features. The test writes such a VLM (config,
modeling and image-processing files, a tokenizer, random weights) and fine-tunes it with
``ecomvlm train nemotron_nano_vl_8b_item_intel_ft``; nothing is downloaded."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import REPO

CONFIGURATION = '''
from transformers import LlamaConfig, PretrainedConfig


class TinyNemotronVLConfig(PretrainedConfig):
    model_type = "tiny_nemotron_vl"

    def __init__(self, llm_config=None, vit_hidden_size=32, force_image_size=32, patch_size=8,
                 downsample_ratio=0.5, projector_hidden_size=64, **kwargs):
        super().__init__(**kwargs)
        llm_config = llm_config or {}
        self.llm_config = llm_config if isinstance(llm_config, LlamaConfig) else LlamaConfig(**llm_config)
        self.vit_hidden_size = vit_hidden_size
        self.force_image_size = force_image_size
        self.patch_size = patch_size
        self.downsample_ratio = downsample_ratio
        self.projector_hidden_size = projector_hidden_size

    def to_dict(self):
        out = super().to_dict()
        out["llm_config"] = self.llm_config.to_dict()
        return out
'''

MODELING = '''
import torch
from torch import nn
from transformers import AutoModelForCausalLM, PreTrainedModel
from transformers.modeling_outputs import CausalLMOutputWithPast

from .configuration_tiny_nemotron_vl import TinyNemotronVLConfig


class TinyViT(nn.Module):
    def __init__(self, config):
        super().__init__()
        h = config.vit_hidden_size
        self.patch = nn.Conv2d(3, h, config.patch_size, config.patch_size)
        self.layer = nn.TransformerEncoderLayer(h, 4, 2 * h, batch_first=True, dropout=0.0)

    def forward(self, pixel_values):
        x = self.patch(pixel_values).flatten(2).transpose(1, 2)
        return self.layer(x)


class TinyNemotronVL(PreTrainedModel):
    """InternVL-style: ViT -> pixel shuffle -> MLP -> scattered into the <image> context tokens of the LLM."""

    config_class = TinyNemotronVLConfig
    main_input_name = "pixel_values"
    _no_split_modules = ["LlamaDecoderLayer"]
    _supports_sdpa = True

    def __init__(self, config):
        super().__init__(config)
        self.language_model = AutoModelForCausalLM.from_config(config.llm_config)
        self.vision_model = TinyViT(config)
        shuffled = config.vit_hidden_size * int(1 / config.downsample_ratio ** 2)
        self.mlp1 = nn.Sequential(nn.LayerNorm(shuffled), nn.Linear(shuffled, config.projector_hidden_size),
                                  nn.GELU(), nn.Linear(config.projector_hidden_size, config.llm_config.hidden_size))
        self.img_context_token_id = None
        self.post_init()

    def get_input_embeddings(self):
        return self.language_model.get_input_embeddings()

    def pixel_shuffle(self, x):
        n, s, c = x.shape
        side = int(s ** 0.5)
        x = x.reshape(n, side // 2, 2, side // 2, 2, c).permute(0, 1, 3, 2, 4, 5)
        return x.reshape(n, (side // 2) ** 2, 4 * c)

    def extract_feature(self, pixel_values):
        return self.mlp1(self.pixel_shuffle(self.vision_model(pixel_values)))

    def forward(self, pixel_values=None, input_ids=None, attention_mask=None, position_ids=None, image_flags=None,
                past_key_values=None, labels=None, use_cache=None, output_attentions=None,
                output_hidden_states=None, return_dict=None):
        embeds = self.language_model.get_input_embeddings()(input_ids)
        if pixel_values is not None:
            if self.img_context_token_id is None:
                raise ValueError("img_context_token_id is not set")
            vit = self.extract_feature(pixel_values.to(embeds.dtype))
            if image_flags is not None:
                vit = vit[image_flags.squeeze(-1) == 1]
            selected = input_ids == self.img_context_token_id
            embeds = embeds.clone()
            embeds[selected] = vit.reshape(-1, embeds.shape[-1]).to(embeds.dtype)
        out = self.language_model(inputs_embeds=embeds, attention_mask=attention_mask, position_ids=position_ids,
                                  past_key_values=past_key_values, use_cache=use_cache)
        return CausalLMOutputWithPast(logits=out.logits, past_key_values=out.past_key_values)
'''

IMAGE_PROCESSING = '''
import numpy as np
import torch
from transformers.image_processing_utils import BaseImageProcessor, BatchFeature


class TinyNemotronVLImageProcessor(BaseImageProcessor):
    """Tiles of image_size px along the long side (up to max_num_tiles) + a thumbnail when there is more than one."""

    model_input_names = ["pixel_values"]

    def __init__(self, image_size=32, max_num_tiles=3, use_thumbnail=True, **kwargs):
        super().__init__(**kwargs)
        self.image_size, self.max_num_tiles, self.use_thumbnail = image_size, max_num_tiles, use_thumbnail

    def _tensor(self, im):
        a = np.asarray(im.convert("RGB").resize((self.image_size, self.image_size)), dtype=np.float32) / 255.0
        return (torch.from_numpy(a).permute(2, 0, 1) - 0.5) / 0.5

    def preprocess(self, images, return_tensors=None, **kwargs):
        tiles, counts = [], []
        for im in images if isinstance(images, list) else [images]:
            w, h = im.size
            n = max(1, min(self.max_num_tiles, round(max(w, h) / min(w, h))))
            if n == 1:
                parts = [im]
            elif w >= h:
                parts = [im.crop((i * w // n, 0, (i + 1) * w // n, h)) for i in range(n)]
            else:
                parts = [im.crop((0, i * h // n, w, (i + 1) * h // n)) for i in range(n)]
            if n > 1 and self.use_thumbnail:
                parts.append(im)
            tiles += [self._tensor(p) for p in parts]
            counts.append(len(parts))
        return BatchFeature({"pixel_values": torch.stack(tiles), "num_patches": torch.tensor(counts)})
'''


def write_tiny_remote_vlm(out: Path, corpus: list[str]) -> Path:
    """A Nemotron-Nano-VL-shaped checkpoint folder: remote code + config + random weights + tokenizer."""
    import importlib.util

    import torch
    from transformers import AutoTokenizer

    from ecomvlm.data_modules.tiny_tokenizer import build_tiny_tokenizer

    out.mkdir(parents=True)
    (out / "configuration_tiny_nemotron_vl.py").write_text(CONFIGURATION)
    (out / "modeling_tiny_nemotron_vl.py").write_text(MODELING)
    (out / "image_processing_tiny_nemotron_vl.py").write_text(IMAGE_PROCESSING)
    tok = build_tiny_tokenizer("llama3", corpus=corpus, vocab_size=400)
    tok.add_special_tokens({"additional_special_tokens": ["<img>", "</img>"]})
    tok.save_pretrained(out)
    tok = AutoTokenizer.from_pretrained(out)
    # import the written files as the package transformers will make of them (relative import inside)
    pkg = f"tiny_nemotron_vl_{abs(hash(str(out)))}"
    spec = importlib.util.spec_from_file_location(pkg, out / "__init__.py", submodule_search_locations=[str(out)])
    (out / "__init__.py").write_text("")
    module = importlib.util.module_from_spec(spec)
    sys.modules[pkg] = module
    conf_mod = importlib.import_module(f"{pkg}.configuration_tiny_nemotron_vl")
    model_mod = importlib.import_module(f"{pkg}.modeling_tiny_nemotron_vl")
    (out / "__init__.py").unlink()
    llm = dict(vocab_size=len(tok), hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
               num_key_value_heads=2, max_position_embeddings=2048, tie_word_embeddings=False,
               bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
    config = conf_mod.TinyNemotronVLConfig(llm_config=llm, architectures=["TinyNemotronVL"])
    torch.manual_seed(0)
    model = model_mod.TinyNemotronVL(config)
    model.save_pretrained(out)
    cfg = json.loads((out / "config.json").read_text())
    cfg["auto_map"] = {"AutoConfig": "configuration_tiny_nemotron_vl.TinyNemotronVLConfig",
                       "AutoModel": "modeling_tiny_nemotron_vl.TinyNemotronVL"}
    cfg["model_type"] = "tiny_nemotron_vl"
    (out / "config.json").write_text(json.dumps(cfg, indent=2))
    (out / "preprocessor_config.json").write_text(json.dumps({
        "image_processor_type": "TinyNemotronVLImageProcessor", "image_size": 32, "max_num_tiles": 3,
        "use_thumbnail": True,
        "auto_map": {"AutoImageProcessor": "image_processing_tiny_nemotron_vl.TinyNemotronVLImageProcessor"}}))
    return out


@pytest.mark.slow
def test_remote_code_vlm_fine_tunes_end_to_end(tmp_path):
    import torch
    from transformers import AutoModel

    from ecomvlm.data_modules.shards import ShardConfig, make_shards
    from ecomvlm.data_modules.synth import SynthConfig, synthesize
    from ecomvlm.recipes.automodel.data import STATS_KEY, DataSpec, ShardVLMDataset, collate
    from ecomvlm.recipes.automodel.inputs import InternVLInputs

    synthesize(SynthConfig(out=tmp_path / "data", n=16, n_eval=2, seed=2, image_size=48, max_images=3))
    make_shards(ShardConfig([tmp_path / "data/train/item_intel_train.json"], tmp_path / "shards",
                            image_root=tmp_path / "data", samples_per_shard=100, workers=1))
    texts = [t["value"] for r in json.loads((tmp_path / "data/train/item_intel_train.json").read_text())
             for t in r["conversations"]]
    model_dir = write_tiny_remote_vlm(tmp_path / "tiny_nemotron", texts)

    ds = ShardVLMDataset(DataSpec(shards=str(tmp_path / "shards"), model_dir=str(model_dir), processor_kwargs={},
                                  trust_remote_code=True))
    assert isinstance(ds.inputs, InternVLInputs) and ds.inputs.num_image_token == 4
    item = ds[0]
    ctx = ds.inputs.context_id
    # every tile's 4 features have a context token; image_flags mark each tile
    assert int((item["input_ids"] == ctx).sum()) == 4 * item["pixel_values"].shape[0] == 4 * item["image_flags"].sum()
    tok = ds.inputs.tokenizer
    assert tok.decode(item["labels"][item["labels"] != -100]).endswith("<|eot_id|>")
    batch = collate([ds[0], ds[1]], pad_token_id=tok.pad_token_id)
    assert batch["image_flags"].shape[0] == batch["pixel_values"].shape[0] and STATS_KEY in batch

    run_dir = tmp_path / "run"
    cmd = [str(Path(sys.executable).parent / "ecomvlm"), "train", "nemotron_nano_vl_8b_item_intel_ft",
           f"model.hf_path={model_dir}", f"data.shards={tmp_path / 'shards'}", f"run.dir={run_dir}",
           "trainer.max_steps=5", "trainer.save_every=5", "data.global_batch_size=2", "data.micro_batch_size=2",
           "data.num_workers=0", "precision=fp32", "optim.lr=3e-3", "optim.min_lr=3e-3", "optim.warmup_steps=0",
           "data.max_seq_length=1024", "model.attn_implementation=eager"]
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=600,
                          env={**__import__("os").environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-6000:]
    s = json.loads((run_dir / "summary.json").read_text())
    assert s["losses"][-1] < s["losses"][0] - 0.1, s["losses"]
    hf = Path(s["hf_dir"])
    assert (hf / "modeling_tiny_nemotron_vl.py").is_file() and (hf / "preprocessor_config.json").is_file()
    trained = AutoModel.from_pretrained(hf, trust_remote_code=True, dtype=torch.float32)
    base = AutoModel.from_pretrained(model_dir, trust_remote_code=True, dtype=torch.float32)
    moved = [n for n, p in trained.named_parameters() if not torch.equal(p, dict(base.named_parameters())[n])]
    assert any(n.startswith("vision_model") for n in moved) and any(n.startswith("mlp1") for n in moved)
    assert any(n.startswith("language_model") for n in moved)
