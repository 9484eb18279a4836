"""Conversation -> token ids + loss mask (loss on assistant tokens only), for any chat format."""

from __future__ import annotations

from dataclasses import dataclass

from ecomvlm.data_modules.chat_templates import ChatFormat, render


@dataclass
class TokenizedConversation:
    input_ids: list[int]
    loss_mask: list[int]  # 1 where the token is part of an assistant answer (incl. its end-of-turn token)

    def __len__(self) -> int:
        return len(self.input_ids)


def tokenize_conversation(messages: list[dict[str, str]], tokenizer, fmt: ChatFormat) -> TokenizedConversation:
    """Tokenize segment by segment so the mask is exact (no offset-mapping heuristics).

    The prompt part therefore tokenizes exactly as at inference, where the text handed to the tokenizer ends
    with the generation header (``apply_chat_template(..., add_generation_prompt=True)``); a test checks that
    the concatenated segments decode back to the template's text for every chat format.
    """
    ids: list[int] = []
    mask: list[int] = []
    for text, trainable in render(messages, fmt):
        if not text:
            continue
        seg = tokenizer(text, add_special_tokens=False)["input_ids"]
        ids += seg
        mask += [int(trainable)] * len(seg)
    return TokenizedConversation(ids, mask)
