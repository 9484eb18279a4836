"""Tiny byte-level BPE tokenizers built offline with `tokenizers`, wrapped as HF fast tokenizers.

Tests and the CPU demo cannot download a real Llama/Qwen/Gemma tokenizer, so they train a small one on the
text they will see (deterministic: same corpus -> same vocab) and give it the chat format's special tokens and chat
template. Byte-level means any string encodes (no <unk>), like the real ones.
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterable

from ecomvlm.data_modules.chat_templates import get_chat_format

DEFAULT_CORPUS = [
    "A red striped t-shirt by Acme.", "What is the main colour of this item? Answer with a short phrase.",
    "Category: Sneakers\nBrand: Nordwind\nColour: Blue\nPattern: Solid\nSize: EU 42",
    "Describe the image briefly.", "Is this item green? Answer yes or no.", "Yes", "No",
    '{"identifiers": {"barcodes": [{"value": "4006381333931"}]}, "attributes": {"brand_name": "Lumio"}}',
    "The photo shows a purple handbag with a checked pattern on a plain grey background.",
]


def build_tiny_tokenizer(chat_format: str = "chatml", corpus: Iterable[str] | None = None, vocab_size: int = 512,
                         model_max_length: int = 4096):
    """Train a byte-level BPE on `corpus` and return a transformers PreTrainedTokenizerFast."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    fmt = get_chat_format(chat_format)
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=fmt.special_tokens,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    texts = list(corpus) if corpus is not None else list(DEFAULT_CORPUS)
    tok.train_from_iterator(texts + [fmt.role_name(r) for r in ("system", "user", "assistant")], trainer=trainer)
    hf = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token=fmt.bos or None,
        eos_token=fmt.stop_token,
        pad_token=fmt.pad,
        additional_special_tokens=[t for t in fmt.special_tokens if t not in (fmt.bos, fmt.stop_token, fmt.pad)],
        model_max_length=model_max_length,
        padding_side="right",
    )
    hf.chat_template = fmt.jinja()
    hf.init_kwargs["chat_format"] = fmt.name
    return hf


def save_tiny_tokenizer(tokenizer, out_dir: str | Path) -> Path:
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tokenizer.save_pretrained(out)
    return out
