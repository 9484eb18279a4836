"""Chat formats: the HF Jinja template and our segment renderer agree; loss masks cover assistant answers only."""

import pytest

from ecomvlm.data_modules.chat_templates import get_chat_format, llava_to_messages, render
from ecomvlm.data_modules.config import DataConfig
from ecomvlm.data_modules.preprocess import ImageSpec, build_sample

CONV = [{"from": "human", "value": "<image>\nWhat is the main colour?"}, {"from": "gpt", "value": "Red"},
        {"from": "human", "value": "Is it striped?"}, {"from": "gpt", "value": "No"}]


@pytest.mark.parametrize("family", ["llama3", "chatml", "gemma3"])
def test_hf_template_equals_renderer(tiny_tokenizers, family):
    tok, fmt = tiny_tokenizers[family], get_chat_format(family)
    msgs = llava_to_messages(CONV)
    for gen in (False, True):
        hf = tok.apply_chat_template(msgs if not gen else msgs[:1], tokenize=False, add_generation_prompt=gen)
        ours = "".join(t for t, _ in render(msgs if not gen else msgs[:1], fmt, add_generation_prompt=gen))
        assert hf == ours


@pytest.mark.parametrize("family", ["llama3", "chatml", "gemma3"])
def test_loss_mask_is_assistant_answers_plus_turn_end(tiny_tokenizers, family):
    tok, fmt = tiny_tokenizers[family], get_chat_format(family)
    spec = ImageSpec(mode="fixed", patch_size=8, image_mean=(0.5,) * 3, image_std=(0.5,) * 3, image_size=8)
    text_only = [{**t, "value": t["value"].replace("<image>\n", "")} for t in CONV]
    tc = build_sample({"conversations": text_only}, [], tok, fmt, spec, DataConfig(), -1)
    assert len(tc.input_ids) == len(tc.loss_mask)
    trained = tok.decode([i for i, m in zip(tc.input_ids, tc.loss_mask) if m])
    end = fmt.turn_end.strip()
    assert trained == f"Red{end}No{end}"
    # everything together decodes to exactly the template text
    assert tok.decode(tc.input_ids) == tok.apply_chat_template(llava_to_messages(text_only), tokenize=False)


def test_unknown_names():
    assert get_chat_format("chatml").name == "chatml"
    with pytest.raises(KeyError, match="unknown chat format"):
        get_chat_format("vicuna")
    with pytest.raises(ValueError, match="unknown speaker"):
        llava_to_messages([{"from": "robot", "value": "hi"}])
