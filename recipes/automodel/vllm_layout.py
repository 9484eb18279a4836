"""The weight names vLLM's loaders expect, written into a complete VLM's HF folder.

AutoModel's consolidated folder names Gemma3's SigLIP tower ``model.vision_tower.<module>`` and transformers 5's
``save_pretrained`` ``vision_tower.<module>``; the published checkpoints (and vLLM 0.32's Gemma3 loader) put it
under ``vision_model.`` (``vision_tower.vision_model.<module>``). transformers 5 loads both, so the HF
folders our AutoModel runs write use the published names: the same folder serves ``--backend hf`` and vLLM.
"""

from __future__ import annotations

import json
from pathlib import Path

# model_type -> (prefix as transformers 5 saves it, the published prefix)
PUBLISHED_PREFIXES: dict[str, list[tuple[str, str]]] = {
    # AutoModel's consolidated folder / transformers' save_pretrained
    "gemma3": [("model.vision_tower.", "model.vision_tower.vision_model."),
               ("vision_tower.", "vision_tower.vision_model.")],
}


def published_name(name: str, rules: list[tuple[str, str]]) -> str:
    for saved, published in rules:
        if name.startswith(saved) and not name.startswith(published):
            return published + name[len(saved):]
    return name


def write_published_layout(hf_dir: str | Path) -> int:
    """Rename the tensors of `hf_dir` (every ``*.safetensors`` and the index) to the published names of its
    model_type; returns how many were renamed (0 for a family without rules, or already published)."""
    from safetensors import safe_open
    from safetensors.torch import save_file

    hf_dir = Path(hf_dir)
    if not (hf_dir / "config.json").is_file():  # a LoRA adapter folder: its base model keeps its own names
        return 0
    model_type = json.loads((hf_dir / "config.json").read_text()).get("model_type")
    rules = PUBLISHED_PREFIXES.get(model_type)
    if not rules:
        return 0
    renamed = 0
    for f in sorted(hf_dir.glob("*.safetensors")):
        with safe_open(str(f), "pt") as s:
            names = list(s.keys())
            if all(published_name(n, rules) == n for n in names):
                continue
            meta = s.metadata() or {"format": "pt"}
            tensors = {published_name(n, rules): s.get_tensor(n) for n in names}
        renamed += sum(published_name(n, rules) != n for n in names)
        tmp = f.with_name(f.name + ".tmp")
        save_file(tensors, str(tmp), metadata=meta)
        tmp.replace(f)
    index = hf_dir / "model.safetensors.index.json"
    if index.is_file():
        doc = json.loads(index.read_text())
        doc["weight_map"] = {published_name(k, rules): v for k, v in doc.get("weight_map", {}).items()}
        index.write_text(json.dumps(doc, indent=2) + "\n")
    return renamed
