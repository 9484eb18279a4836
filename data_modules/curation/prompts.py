"""Versioned prompt files (``prompts/<name>_<version>.yaml``): every record a prompt produced carries its name,
version and the sha256 of the file, and the cache and the partition digests are keyed by them, so editing a prompt
re-does exactly the work it touches (and forgetting to bump the version is still caught by the hash)."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

PROMPT_DIR = Path(__file__).resolve().parent / "prompts"
DEFAULTS = {"caption": "caption_v1", "verify": "verify_v1"}


@dataclass(frozen=True)
class Prompt:
    name: str
    version: str
    sha256: str
    system: str
    user: str
    max_tokens: int = 512
    temperature: float = 0.0
    path: str = ""

    def meta(self) -> dict[str, str]:
        """What every record it produced carries (and what digests and cache keys hash)."""
        return {"name": self.name, "version": self.version, "sha256": self.sha256}

    @property
    def tag(self) -> str:
        return f"{self.name}@{self.version}:{self.sha256[:12]}"

    def render(self, **fields: Any) -> str:
        try:
            return self.user.format(**fields)
        except (KeyError, IndexError) as e:
            raise ValueError(f"prompt {self.tag} ({self.path}) uses the placeholder {e} which the stage does not "
                             f"fill; placeholders it can use: {sorted(fields)}") from None

    def messages(self, user: str | list[dict[str, Any]]) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = []
        if self.system.strip():
            out.append({"role": "system", "content": self.system.strip()})
        out.append({"role": "user", "content": user})
        return out


def load_prompt(spec: str | Path) -> Prompt:
    """A prompt by file path, or by ``name_version`` / ``name`` (the default version) among the built-in ones."""
    import yaml

    spec_s = str(spec)
    path = Path(spec_s)
    if not path.suffix:
        path = PROMPT_DIR / f"{DEFAULTS.get(spec_s, spec_s)}.yaml"
    if not path.is_file():
        known = sorted(p.stem for p in PROMPT_DIR.glob("*.yaml"))
        raise FileNotFoundError(f"prompt {spec_s!r}: no file {path} (built-in prompts: {known})")
    data = path.read_bytes()
    doc = yaml.safe_load(data.decode("utf-8"))
    if not isinstance(doc, dict):
        raise ValueError(f"prompt file {path}: expected a mapping with name, version, system, user")
    missing = [k for k in ("name", "version", "user") if not doc.get(k)]
    if missing:
        raise ValueError(f"prompt file {path}: missing {missing}")
    return Prompt(name=str(doc["name"]), version=str(doc["version"]), sha256=hashlib.sha256(data).hexdigest(),
                  system=str(doc.get("system") or ""), user=str(doc["user"]),
                  max_tokens=int(doc.get("max_tokens", 512)), temperature=float(doc.get("temperature", 0.0)),
                  path=str(path))
