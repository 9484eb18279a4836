"""(conversation, images) -> the inputs of one complete HF VLM, the same way at training and at inference.

A complete VLM (Gemma3, Qwen2.5-VL, Qwen3-VL, Llama-3.1-Nemotron-Nano-VL) ships its own chat template and its own
image placeholder expansion, so this module never uses our composed models' ChatFormats or ImageSpecs: the
conversation is rendered with the checkpoint's template and the images go through the checkpoint's processor.
Two ways in, picked from what the checkpoint folder holds (:func:`load_inputs`):

- :class:`ProcessorInputs`: an HF ``ProcessorMixin`` (Gemma3Processor, Qwen2_5_VLProcessor, Qwen3VLProcessor, ...):
  ``processor(text, images, **processor_kwargs)`` once per sample, exactly what ``ecomvlm eval --backend hf`` calls.
- :class:`InternVLInputs`: remote-code InternVL-style checkpoints that ship only a tokenizer and an image processor
  (Nemotron-Nano-VL): each ``<image>`` becomes ``<img>`` + ``<image>`` x (tokens per tile x tiles) + ``</img>``,
  as the checkpoint's ``chat()`` does, with ``image_flags`` per tile.

Turns are converted as the eval backends convert prompts (:func:`ecomvlm.eval.backends.content_parts`): an image
part wherever a ``<image>`` placeholder stood, the text between them stripped; templates that only take string
turns get the model's placeholder string inline instead (:func:`ecomvlm.eval.backends.string_content`).

Loss mask: only assistant tokens learn - every token after an assistant header (the text ``add_generation_prompt``
appends, e.g. ``<start_of_turn>model\\n``) up to and including the token that ends the turn (``<end_of_turn>``,
``<|im_end|>``, ``<|eot_id|>``), the rule of our megatron data path (data_modules/chat_templates.render: assistant
content + turn end). The markers are derived from the template itself with a sentinel conversation, and every
sample is checked to hold one header per assistant turn.

Gemma3 pan & scan (``processor_kwargs`` ``do_pan_and_scan``) adds crops per image; :attr:`Encoded.extra_crops`
records how many each image got (the image processor's own crop rule on the image's size).

One module on purpose (~430 lines): the per-family input builders (HF processor vs remote-code chat())
share the loss-mask rule above and one Encoded type; splitting them would split that rule.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from ecomvlm.data_modules.chat_templates import IMAGE_TOKEN

SENTINEL = "XSENTINELMARKERX"
ROLES = {"human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant", "system": "system"}
# sequence-shaped outputs (padded and shifted by the collate); everything else is per image and concatenated
SEQUENCE_KEYS = ("input_ids", "attention_mask", "token_type_ids", "mm_token_type_ids")
PAN_AND_SCAN_KEYS = ("do_pan_and_scan", "pan_and_scan_min_crop_size", "pan_and_scan_max_num_crops",
                     "pan_and_scan_min_ratio_to_activate")


class SampleProblem(ValueError):
    """A sample this model cannot train on (too long, no assistant turn found, ...); ``reason`` is its counter."""

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason


@dataclass
class Encoded:
    """One sample's model inputs (tensors with a leading batch dim of 1 for sequence keys)."""

    inputs: dict[str, torch.Tensor]
    labels: torch.Tensor | None  # [L] target of each position (-100: no loss), not shifted yet
    n_images: int
    extra_crops: list[int] = field(default_factory=list)  # pan & scan crops added to each image (0: none)
    notes: list[str] = field(default_factory=list)  # images_capped, truncated

    def __len__(self) -> int:
        return int(self.inputs["input_ids"].shape[-1])


def _template_takes_parts(template: str | None) -> bool:
    """Whether a chat template renders typed content parts ({"type": "image"}) - the eval backend's test."""
    t = template or ""
    return "'type'" in t or '"type"' in t


class VLMInputs:
    """What a complete VLM needs from a conversation; subclasses know the checkpoint's image path."""

    tokenizer: Any
    image_placeholder: str  # what a string-turn template gets where an image goes
    processor_kwargs: dict[str, Any]

    # ---- chat template ------------------------------------------------------------------------------
    @property
    def chat_template(self) -> str | None:
        return getattr(self.tokenizer, "chat_template", None)

    @property
    def takes_parts(self) -> bool:
        return _template_takes_parts(self.chat_template)

    def render(self, messages: list[dict[str, Any]], add_generation_prompt: bool = False) -> str:
        return self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=add_generation_prompt)

    def turn(self, role: str, text: str, n_images: int) -> dict[str, Any]:
        """One message, its images where the ``<image>`` placeholders were (content parts, or the model's
        placeholder string for string-turn templates)."""
        from ecomvlm.eval.backends import content_parts, string_content

        if role == "assistant" or n_images == 0 and not self.takes_parts:
            return {"role": role, "content": [{"type": "text", "text": text}] if self.takes_parts else text}
        if self.takes_parts:
            return {"role": role, "content": content_parts(text, n_images)}
        return {"role": role, "content": string_content(text, n_images).replace(IMAGE_TOKEN, self.image_placeholder)}

    def messages(self, conversations: list[dict[str, str]], n_images: int) -> list[dict[str, Any]]:
        """LLaVA turns ({"from", "value"} with ``<image>`` placeholders) -> chat messages of this model."""
        out, seen = [], 0
        for i, t in enumerate(conversations):
            role = ROLES.get(t.get("from"))
            if role is None or not isinstance(t.get("value"), str):
                raise SampleProblem("bad_turn", f"turn {i}: {t.get('from')!r}")
            k = t["value"].count(IMAGE_TOKEN)
            if role == "assistant" and k:
                raise SampleProblem("image_in_answer", f"turn {i} holds {k} {IMAGE_TOKEN}")
            out.append(self.turn(role, t["value"], k))
            seen += k
        if seen != n_images:
            raise SampleProblem("image_count", f"{seen} {IMAGE_TOKEN} placeholders for {n_images} images")
        return out

    # ---- assistant-only loss ------------------------------------------------------------------------
    def _markers(self) -> tuple[list[int], int]:
        if getattr(self, "_marker_cache", None) is None:
            user = [self.turn("user", "u", 0)]
            both = user + [self.turn("assistant", SENTINEL, 0)]
            plain, prompt, full = self.render(user), self.render(user, True), self.render(both)
            if not prompt.startswith(plain) or len(prompt) == len(plain):
                raise ValueError("the chat template's add_generation_prompt does not append an assistant header; "
                                 "the assistant-only loss mask needs one")
            header = prompt[len(plain):]
            after = full[full.index(SENTINEL) + len(SENTINEL):].strip()
            header_ids = self.tokenizer(header, add_special_tokens=False)["input_ids"]
            stop_ids = self.tokenizer(after, add_special_tokens=False)["input_ids"] if after else []
            stop = stop_ids[0] if stop_ids else self.tokenizer.eos_token_id
            if stop is None:
                raise ValueError("cannot tell which token ends an assistant turn (template adds none, no eos token)")
            self._marker_cache = (header_ids, int(stop))
        return self._marker_cache

    def labels(self, input_ids: torch.Tensor, n_assistant: int) -> torch.Tensor:
        """[L] targets: the token itself inside assistant turns (header excluded, end-of-turn token included)."""
        header, stop = self._markers()
        ids = input_ids.tolist()
        labels = [-100] * len(ids)
        h, found, i = len(header), 0, 0
        while i + h <= len(ids):
            if ids[i:i + h] == header:
                found += 1
                j = i + h
                while j < len(ids):
                    labels[j] = ids[j]
                    if ids[j] == stop:
                        break
                    j += 1
                i = j + 1
            else:
                i += 1
        if found != n_assistant:
            raise SampleProblem("no_assistant_marker", f"{found} assistant headers {header} for {n_assistant} "
                                                       f"assistant turns")
        return torch.tensor(labels, dtype=torch.long)

    # ---- encoding -----------------------------------------------------------------------------------
    def add_special_tokens(self, text: str) -> bool:
        """The template's own BOS: do not let the tokenizer add a second one."""
        bos = getattr(self.tokenizer, "bos_token", None)
        return not (bos and text.startswith(bos))

    def encode_text(self, text: str, images: list[Any]) -> Encoded:
        raise NotImplementedError

    def encode_conversation(self, conversations: list[dict[str, str]], images: list[Any], *,
                            max_seq_length: int | None = None, truncation: str = "skip", max_images: int | None = None,
                            max_image_tokens: int | None = None) -> Encoded:
        """A training sample: rendered, processed, labelled (assistant tokens only); SampleProblem if unusable."""
        notes: list[str] = []
        if max_images is not None and len(images) > max_images:
            conversations, images = _keep_images(conversations, max_images), images[:max_images]
            notes.append("images_capped")
        n_assistant = sum(ROLES.get(t.get("from")) == "assistant" for t in conversations)
        if not n_assistant:
            raise SampleProblem("no_answer")
        while True:
            enc = self.encode_text(self.render(self.messages(conversations, len(images))), images)
            if max_image_tokens is None or not images or self.image_tokens(enc) <= max_image_tokens:
                break
            conversations, images = _keep_images(conversations, len(images) - 1), images[:-1]
            notes.append("images_capped")
        enc.notes = notes + enc.notes
        enc.labels = self.labels(enc.inputs["input_ids"][0], n_assistant)
        if max_seq_length is not None and len(enc) > max_seq_length:
            self._truncate(enc, max_seq_length, truncation)
        return enc

    def image_tokens(self, enc: Encoded) -> int:
        ids = enc.inputs["input_ids"]
        return int(sum((ids == t).sum() for t in self.image_token_ids))

    @property
    def image_token_ids(self) -> list[int]:
        raise NotImplementedError

    def _truncate(self, enc: Encoded, n: int, truncation: str) -> None:
        ids = enc.inputs["input_ids"][0]
        is_image = torch.zeros_like(ids, dtype=torch.bool)
        for t in self.image_token_ids:
            is_image |= ids == t
        last_image = int(is_image.nonzero().max()) + 1 if is_image.any() else 0
        if truncation == "skip" or last_image > n or not bool((enc.labels[:n] != -100).any()):
            raise SampleProblem("too_long", f"{len(enc)} tokens > max_seq_length {n}")
        for k in SEQUENCE_KEYS:
            if k in enc.inputs:
                enc.inputs[k] = enc.inputs[k][:, :n]
        enc.labels = enc.labels[:n]
        enc.notes.append("truncated")

    def encode_prompts(self, texts: list[str], images: list[list[Any]]) -> tuple[dict[str, torch.Tensor], int]:
        """Inference: a left-padded batch of rendered prompts -> (model inputs, images' extra crops in total)."""
        raise NotImplementedError

    def describe(self) -> dict[str, Any]:
        return {"inputs": type(self).__name__, "processor_kwargs": self.processor_kwargs,
                "template_parts": self.takes_parts}


def _keep_images(conversations: list[dict[str, str]], keep: int) -> list[dict[str, str]]:
    """The first ``keep`` ``<image>`` placeholders stay; later ones go (with the newline after them)."""
    seen, out = 0, []
    for turn in conversations:
        parts = turn["value"].split(IMAGE_TOKEN)
        text = parts[0]
        for part in parts[1:]:
            seen += 1
            text += IMAGE_TOKEN + part if seen <= keep else (part[1:] if part.startswith("\n") else part)
        out.append({**turn, "value": text})
    return out


def _as_rgb(images: list[Any]) -> list[Any]:
    from ecomvlm.data_modules.preprocess import to_rgb

    return [to_rgb(im) for im in images]


class ProcessorInputs(VLMInputs):
    """Checkpoints with an HF processor (Gemma3, Qwen2.5-VL, Qwen3-VL, ...)."""

    def __init__(self, processor, processor_kwargs: dict[str, Any] | None = None) -> None:
        self.processor = processor
        self.tokenizer = processor.tokenizer
        self.processor_kwargs = dict(processor_kwargs or {})
        self.image_placeholder = getattr(processor, "image_token", None) or IMAGE_TOKEN
        template = getattr(processor, "chat_template", None)
        if template and not self.tokenizer.chat_template:
            self.tokenizer.chat_template = template

    @property
    def chat_template(self) -> str | None:
        return getattr(self.processor, "chat_template", None) or self.tokenizer.chat_template

    def render(self, messages, add_generation_prompt=False) -> str:
        if getattr(self.processor, "chat_template", None):
            return self.processor.apply_chat_template(messages, tokenize=False,
                                                      add_generation_prompt=add_generation_prompt)
        return super().render(messages, add_generation_prompt)

    @property
    def image_token_ids(self) -> list[int]:
        ids = getattr(self.processor, "image_token_ids", None)
        if ids:
            return list(ids)
        tid = getattr(self.processor, "image_token_id", None)
        return [tid] if tid is not None else []

    def _call(self, texts: list[str], images: list[list[Any]], **kw) -> dict[str, torch.Tensor]:
        flat = [im for ims in images for im in _as_rgb(ims)]
        args = {"text": texts, "return_tensors": "pt", **kw, **self.processor_kwargs}
        if flat:
            args["images"] = images if len(texts) > 1 else [flat]
        out = self.processor(**args)
        return {k: v for k, v in out.items() if isinstance(v, torch.Tensor)}

    def extra_crops(self, images: list[Any]) -> list[int]:
        return pan_and_scan_crops(self.processor, images, self.processor_kwargs)

    def encode_text(self, text: str, images: list[Any]) -> Encoded:
        images = _as_rgb(images)
        inputs = self._call([text], [images], add_special_tokens=self.add_special_tokens(text))
        return Encoded(inputs, None, len(images), self.extra_crops(images))

    def encode_prompts(self, texts, images):
        flat = [im for ims in images for im in ims]
        kw = {"padding": True, "add_special_tokens": all(self.add_special_tokens(t) for t in texts)}
        side = self.tokenizer.padding_side
        self.tokenizer.padding_side = "left"  # generation continues every row at the end
        try:
            inputs = self._call(texts, images if flat else [[] for _ in texts], **kw)
        finally:
            self.tokenizer.padding_side = side
        return inputs, sum(self.extra_crops(flat))


def pan_and_scan_crops(processor, images: list[Any], processor_kwargs: dict[str, Any]) -> list[int]:
    """Extra crops Gemma3's pan & scan adds to each image (0 each when it is off): the image processor's own crop rule
    on each image's size, with the processor's defaults for the thresholds the kwargs leave out (the processor drops
    its ``num_crops`` output, so it is recomputed here)."""
    if not processor_kwargs.get("do_pan_and_scan") or not images:
        return [0] * len(images)
    ip = getattr(processor, "image_processor", None)
    if ip is None or not hasattr(ip, "pan_and_scan_batched"):
        raise ValueError(f"do_pan_and_scan: {type(processor).__name__} has no pan & scan (a Gemma3 processor does)")
    defaults = {k: v for k, v in _processor_defaults(processor).items() if k in PAN_AND_SCAN_KEYS}
    args = {**defaults, **{k: v for k, v in processor_kwargs.items() if k in PAN_AND_SCAN_KEYS}}
    args.pop("do_pan_and_scan", None)
    out = []
    for im in images:
        meta = torch.empty((3, im.height, im.width), device="meta")
        out.append(len(ip.pan_and_scan_batched(meta, **args)))
    return out


def _processor_defaults(processor) -> dict[str, Any]:
    kwargs_class = getattr(processor, "valid_processor_kwargs", None)
    return dict(getattr(kwargs_class, "_defaults", {}).get("images_kwargs", {})) if kwargs_class else {}


class InternVLInputs(VLMInputs):
    """Remote-code InternVL-style checkpoints (Llama-3.1-Nemotron-Nano-VL): a tokenizer, an image processor that
    tiles each image (``pixel_values`` [tiles, 3, S, S], ``num_patches`` per image), and ``<image>`` context tokens
    the model fills with ``num_image_token`` features per tile."""

    def __init__(self, model_dir: str | Path, tokenizer, image_processor, config,
                 processor_kwargs: dict[str, Any] | None = None) -> None:
        self.tokenizer, self.image_processor, self.config = tokenizer, image_processor, config
        self.processor_kwargs = dict(processor_kwargs or {})
        self.image_placeholder = IMAGE_TOKEN
        self.img_start = getattr(config, "img_start_token", "<img>")
        self.img_end = getattr(config, "img_end_token", "</img>")
        self.img_context = getattr(config, "img_context_token", "<image>")
        self.num_image_token = int((config.force_image_size // config.patch_size) ** 2 * config.downsample_ratio ** 2)
        self.context_id = tokenizer.convert_tokens_to_ids(self.img_context)
        if self.context_id is None or self.context_id == tokenizer.unk_token_id:
            raise ValueError(f"{model_dir}: the tokenizer has no {self.img_context!r} token")

    @property
    def image_token_ids(self) -> list[int]:
        return [self.context_id]

    def _expand(self, text: str, tiles: list[int]) -> str:
        parts = text.split(IMAGE_TOKEN)
        if len(parts) - 1 != len(tiles):
            raise SampleProblem("image_count", f"{len(parts) - 1} {IMAGE_TOKEN} in the prompt for {len(tiles)} "
                                               f"images")
        out = parts[0]
        for n, part in zip(tiles, parts[1:]):
            out += self.img_start + self.img_context * (self.num_image_token * n) + self.img_end + part
        return out

    def _one(self, text: str, images: list[Any]) -> dict[str, torch.Tensor]:
        images = _as_rgb(images)
        if images:
            pix = self.image_processor(images=images, return_tensors="pt", **self.processor_kwargs)
            pixel_values = pix["pixel_values"]
            tiles = [int(t) for t in pix["num_patches"]]
        else:
            pixel_values, tiles = None, []
        ids = self.tokenizer(self._expand(text, tiles), return_tensors="pt",
                             add_special_tokens=self.add_special_tokens(text))
        out = {"input_ids": ids["input_ids"], "attention_mask": ids["attention_mask"]}
        if pixel_values is not None:
            out["pixel_values"] = pixel_values
            out["image_flags"] = torch.ones(pixel_values.shape[0], 1, dtype=torch.long)
        return out

    def encode_text(self, text, images):
        return Encoded(self._one(text, images), None, len(images), [0] * len(images))

    def encode_prompts(self, texts, images):
        rows = [self._one(t, ims) for t, ims in zip(texts, images)]
        width = max(r["input_ids"].shape[1] for r in rows)
        pad = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else 0
        ids = torch.full((len(rows), width), pad, dtype=torch.long)
        mask = torch.zeros((len(rows), width), dtype=torch.long)
        for i, r in enumerate(rows):
            n = r["input_ids"].shape[1]
            ids[i, width - n:], mask[i, width - n:] = r["input_ids"][0], r["attention_mask"][0]
        out = {"input_ids": ids, "attention_mask": mask}
        pix = [r["pixel_values"] for r in rows if "pixel_values" in r]
        if pix:
            out["pixel_values"] = torch.cat(pix)
            out["image_flags"] = torch.cat([r["image_flags"] for r in rows if "image_flags" in r])
        return out, 0


def is_internvl_style(config) -> bool:
    return all(hasattr(config, k) for k in ("force_image_size", "downsample_ratio", "patch_size"))


def load_inputs(model_dir: str | Path, *, processor_kwargs: dict[str, Any] | None = None,
                trust_remote_code: bool = False) -> VLMInputs:
    """The input path a checkpoint folder supports: its HF processor, else the InternVL-style tokenizer + image
    processor of remote-code checkpoints; a clear error for anything else."""
    from transformers import AutoConfig, AutoImageProcessor, AutoProcessor, AutoTokenizer, ProcessorMixin

    remote = {"trust_remote_code": True} if trust_remote_code else {}
    config = AutoConfig.from_pretrained(model_dir, **remote)
    if is_internvl_style(config):
        tok = AutoTokenizer.from_pretrained(model_dir, **remote)
        image_processor = AutoImageProcessor.from_pretrained(model_dir, **remote)
        return InternVLInputs(model_dir, tok, image_processor, config, processor_kwargs)
    processor = AutoProcessor.from_pretrained(model_dir, **remote)
    if not isinstance(processor, ProcessorMixin) or getattr(processor, "image_processor", None) is None:
        raise ValueError(f"{model_dir}: no multimodal processor (AutoProcessor gave {type(processor).__name__}); "
                         f"a complete VLM checkpoint ships processor_config.json / preprocessor_config.json")
    return ProcessorInputs(processor, processor_kwargs)


def processor_settings(model_dir: str | Path) -> dict[str, Any]:
    """The image processor settings a checkpoint folder ships (preprocessor_config.json), for reports."""
    p = Path(model_dir) / "preprocessor_config.json"
    if not p.is_file():
        p = Path(model_dir) / "processor_config.json"
    if not p.is_file():
        return {}
    data = json.loads(p.read_text())
    return data.get("image_processor", data)
