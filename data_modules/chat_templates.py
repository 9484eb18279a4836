"""Chat formats of the decoder families, as data: special tokens, a Jinja template for HF tokenizers, and a
Python renderer that also says which characters belong to assistant turns (the loss mask).

Both renderings come from the same :class:`ChatFormat` fields, and a test checks that
``tokenizer.apply_chat_template`` equals :func:`render`'s text for every format.

These are the *turn structures* of Llama-3, Qwen3 (ChatML) and Gemma3. Real checkpoints ship their own,
richer templates (system dates, tool calls, thinking tags); an imported HF tokenizer keeps its own template.
"""

from __future__ import annotations

from dataclasses import dataclass

IMAGE_TOKEN = "<image>"


@dataclass(frozen=True)
class ChatFormat:
    name: str
    bos: str  # prepended once ("" if the format has none)
    turn_start: str  # before the role name
    role_sep: str  # between role name and content
    turn_end: str  # closes every turn; trained on for assistant turns (so the model learns to stop)
    assistant_role: str = "assistant"
    pad: str = "<pad>"
    eos: str = ""  # generation stops at turn_end; eos defaults to it

    @property
    def stop_token(self) -> str:
        return self.eos or self.turn_end.strip()

    @property
    def special_tokens(self) -> list[str]:
        toks = [self.pad, self.bos, self.turn_start, self.turn_end.strip(), IMAGE_TOKEN]
        if "<|start_header_id|>" in self.turn_start:
            toks.append("<|end_header_id|>")
        return [t for t in dict.fromkeys(toks) if t]

    def role_name(self, role: str) -> str:
        return self.assistant_role if role == "assistant" else role

    def jinja(self) -> str:
        """HF chat_template with the same output as :func:`render`."""
        esc = lambda s: s.replace("\n", "\\n")  # noqa: E731 - Jinja string literal escaping
        role = ("'" + self.assistant_role + "' if m['role'] == 'assistant' else m['role']")
        # content is a string, or a list of parts ({"type": "text", "text"} / {"type": "image"...}) as vLLM and HF
        # processors send it: each image part becomes the <image> placeholder where it stands, parts joined by
        # newlines (the LLaVA layout "<image>\nquestion" the models are trained on)
        content = ("{% if m['content'] is string %}{{ m['content'] }}{% else %}{% for c in m['content'] %}"
                   "{% if not loop.first %}{{ '\\n' }}{% endif %}"
                   "{% if c['type'] in ('image', 'image_url', 'image_pil') %}{{ '" + IMAGE_TOKEN + "' }}"
                   "{% elif c['type'] == 'text' %}{{ c['text'] }}{% endif %}{% endfor %}{% endif %}")
        return (
            "{{ '" + esc(self.bos) + "' }}"
            "{% for m in messages %}"
            "{{ '" + esc(self.turn_start) + "' + (" + role + ") + '" + esc(self.role_sep) + "' }}" + content
            + "{{ '" + esc(self.turn_end) + "' }}"
            "{% endfor %}"
            "{% if add_generation_prompt %}{{ '" + esc(self.turn_start) + self.assistant_role + esc(self.role_sep)
            + "' }}{% endif %}"
        )


CHAT_FORMATS: dict[str, ChatFormat] = {
    "llama3": ChatFormat("llama3", bos="<|begin_of_text|>", turn_start="<|start_header_id|>",
                         role_sep="<|end_header_id|>\n\n", turn_end="<|eot_id|>"),
    "chatml": ChatFormat("chatml", bos="", turn_start="<|im_start|>", role_sep="\n", turn_end="<|im_end|>\n",
                         pad="<|endoftext|>"),
    "gemma3": ChatFormat("gemma3", bos="<bos>", turn_start="<start_of_turn>", role_sep="\n",
                         turn_end="<end_of_turn>\n", assistant_role="model"),
}


def get_chat_format(name: str) -> ChatFormat:
    """A chat format by name (a decoder config's ``chat_format``)."""
    if name not in CHAT_FORMATS:
        raise KeyError(f"unknown chat format {name!r}; choose one of {sorted(CHAT_FORMATS)}")
    return CHAT_FORMATS[name]


def render(messages: list[dict[str, str]], fmt: ChatFormat, add_generation_prompt: bool = False
           ) -> list[tuple[str, bool]]:
    """Render a conversation into (text, trainable) segments. Trainable = assistant content + its turn end."""
    segs: list[tuple[str, bool]] = [(fmt.bos, False)] if fmt.bos else []
    for m in messages:
        if m["role"] not in ("system", "user", "assistant"):
            raise ValueError(f"unknown role {m['role']!r} (expected system/user/assistant)")
        segs.append((fmt.turn_start + fmt.role_name(m["role"]) + fmt.role_sep, False))
        is_asst = m["role"] == "assistant"
        segs.append((m["content"] + fmt.turn_end.rstrip("\n"), is_asst))
        if fmt.turn_end.endswith("\n"):
            segs.append(("\n", False))
    if add_generation_prompt:
        segs.append((fmt.turn_start + fmt.assistant_role + fmt.role_sep, False))
    return segs


def llava_to_messages(conversations: list[dict[str, str]]) -> list[dict[str, str]]:
    """LLaVA JSON turns ({"from": human|gpt|system, "value"}) -> chat messages ({"role", "content"})."""
    roles = {"human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant", "system": "system"}
    out = []
    for i, turn in enumerate(conversations):
        who = turn.get("from")
        if who not in roles:
            raise ValueError(f"turn {i}: unknown speaker {who!r} (expected one of {sorted(roles)})")
        if not isinstance(turn.get("value"), str):
            raise ValueError(f"turn {i}: 'value' must be a string")
        out.append({"role": roles[who], "content": turn["value"]})
    return out
