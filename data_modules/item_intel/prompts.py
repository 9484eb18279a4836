"""Versioned prompt files of the item-intelligence pipeline (``prompts/*.yaml``).

A prompt is named by its version (``teacher_first_v1``) or given as a path. Every label and every box set records
the version and the sha256 of the file's bytes, and both are part of the stage settings: editing a prompt re-does
exactly the work it produced (and the cache, keyed by them, is not reused for it).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

PROMPTS_DIR = Path(__file__).parent / "prompts"
REQUIRED = {"teacher": ("version", "system", "user", "image_caption", "crop_caption", "metadata_line"),
            "grounding": ("version", "user")}


@dataclass(frozen=True)
class Prompt:
    kind: str
    version: str
    sha256: str
    path: str
    fields: dict[str, Any] = field(default_factory=dict, compare=False, hash=False)

    def __getitem__(self, key: str) -> Any:
        return self.fields[key]

    def get(self, key: str, default: Any = None) -> Any:
        return self.fields.get(key, default)

    def ident(self) -> dict[str, str]:
        """What a label records about the prompt that produced it."""
        return {"version": self.version, "sha256": self.sha256}


def available() -> list[str]:
    return sorted(p.stem for p in PROMPTS_DIR.glob("*.yaml"))


def load_prompt(name_or_path: str, kind: str) -> Prompt:
    """A prompt file by version name (prompts/<name>.yaml) or path; checked for the fields its kind needs."""
    import yaml

    p = Path(name_or_path)
    if not p.is_file():
        p = PROMPTS_DIR / f"{name_or_path}.yaml"
    if not p.is_file():
        raise FileNotFoundError(f"{kind} prompt {name_or_path!r} not found; versions here: {available()} (or give a "
                                f"path to a YAML file with {', '.join(REQUIRED[kind])})")
    raw = p.read_bytes()
    doc = yaml.safe_load(raw) or {}
    if doc.get("kind", kind) != kind:
        raise ValueError(f"prompt {p} is a {doc.get('kind')!r} prompt, not a {kind!r} prompt")
    missing = [k for k in REQUIRED[kind] if k not in doc]
    if missing:
        raise ValueError(f"{kind} prompt {p} lacks {missing}")
    return Prompt(kind, str(doc["version"]), hashlib.sha256(raw).hexdigest(), str(p), dict(doc))
