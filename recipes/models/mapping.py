"""Declarative two-way weight mappings between HF checkpoints and the full (unsharded) megatron state.

A model family declares its mapping once, as a list of the rules below; :func:`to_megatron` and :func:`to_hf` walk
that one list in either direction, so import and export cannot drift apart. Names may hold one ``*``: a layer
index, matched against the tensors actually present (like Megatron-Bridge's ``AutoMapping`` wildcards).

Rules:
- :class:`Direct`: one tensor is the other (optionally row-padded: vocabularies padded to a multiple of TP);
- :class:`QKV`: megatron's fused QKV, grouped per KV head ``[q_g0.., k_g0, v_g0, q_g1.., ...]`` <-> q/k/v;
- :class:`GatedMLP`: megatron's ``linear_fc1 = [gate; up]`` <-> HF gate_proj / up_proj;
- :class:`Subtree`: every tensor under one prefix maps to the same names under another (HF modules wrapped as is);
- :class:`ExportOnly`: a tensor HF expects but megatron does not build (written with a fixed value, ignored on
  import).

HF names are relative to one of two scopes a family declares per rule: ``body`` (the text model or vision tower
prefix, found in the checkpoint) and ``root`` (names at the top level, e.g. ``lm_head.weight``).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Callable

import torch

Tensors = dict[str, torch.Tensor]


def _regex(pattern: str) -> re.Pattern:
    return re.compile("^" + re.escape(pattern).replace(r"\*", r"(\d+)") + "$")


def _indices(pattern: str, names, limit: int | None = None) -> list[str]:
    """The values of ``*`` for which `pattern` names a tensor in `names` ([""] for a pattern without ``*``);
    with `limit`, only layers below it (e.g. LLaVA-OneVision reads SigLIP up to its second-to-last layer)."""
    if "*" not in pattern:
        return [""] if pattern in names else []
    rx = _regex(pattern)
    found = {m.group(1) for n in names if (m := rx.match(n))}
    return sorted((i for i in found if limit is None or int(i) < limit), key=int)


def _fill(pattern: str, index: str) -> str:
    return pattern.replace("*", index, 1)


def _take(sd: Tensors, name: str) -> torch.Tensor:
    if name not in sd:
        raise KeyError(f"tensor {name!r} not found (wrong model family or config for this checkpoint?)")
    return sd[name]


@dataclass(frozen=True)
class Rule:
    megatron: str
    scope: str = "body"  # HF scope of this rule's HF names: body | root
    limit: int | None = None  # layer indices (the ``*``) below this only

    def _at(self, pattern: str, sd: Tensors) -> list[str]:
        """Layer indices of `pattern` in `sd`; a rule that matches nothing is a mapping/config error."""
        found = _indices(pattern, sd, self.limit)
        if not found:
            raise KeyError(f"no tensor matches {pattern!r} (wrong model family or config for this checkpoint?)")
        return found

    def _p(self, body: str, root: str) -> str:
        return body if self.scope == "body" else root

    def hf_names(self) -> list[str]:
        raise NotImplementedError

    def prefixed(self, mc: str, body: str, root: str) -> "Rule":
        raise NotImplementedError


@dataclass(frozen=True)
class Direct(Rule):
    hf: str = ""
    rows: int | None = None  # megatron rows (padded vocabulary); the HF side keeps hf_rows
    hf_rows: int | None = None

    def prefixed(self, mc, body, root):
        return Direct(mc + self.megatron, self.scope, self.limit, self._p(body, root) + self.hf, self.rows,
                      self.hf_rows)

    def hf_names(self):
        return [self.hf]

    def to_megatron(self, sd: Tensors) -> Tensors:
        out = {}
        for i in self._at(self.hf, sd):
            t = sd[_fill(self.hf, i)]
            if self.rows is not None and t.shape[0] < self.rows:
                t = torch.cat([t, t.new_zeros(self.rows - t.shape[0], *t.shape[1:])])
            out[_fill(self.megatron, i)] = t
        return out

    def to_hf(self, sd: Tensors) -> Tensors:
        out = {}
        for i in self._at(self.megatron, sd):
            t = sd[_fill(self.megatron, i)]
            out[_fill(self.hf, i)] = t[: self.hf_rows] if self.hf_rows is not None else t
        return out


@dataclass(frozen=True)
class QKV(Rule):
    q: str = ""
    k: str = ""
    v: str = ""
    heads: int = 1
    groups: int = 1

    def prefixed(self, mc, body, root):
        p = self._p(body, root)
        return QKV(mc + self.megatron, self.scope, self.limit, p + self.q, p + self.k, p + self.v, self.heads,
                   self.groups)

    def hf_names(self):
        return [self.q, self.k, self.v]

    def to_megatron(self, sd):
        out = {}
        for i in self._at(self.q, sd):
            q, k, v = (_take(sd, _fill(n, i)) for n in (self.q, self.k, self.v))
            per, hd, rest = self.heads // self.groups, k.shape[0] // self.groups, q.shape[1:]
            out[_fill(self.megatron, i)] = torch.cat(
                [q.reshape(self.groups, per * hd, *rest), k.reshape(self.groups, hd, *rest),
                 v.reshape(self.groups, hd, *rest)], dim=1).reshape(-1, *rest)
        return out

    def to_hf(self, sd):
        out = {}
        per = self.heads // self.groups
        for i in self._at(self.megatron, sd):
            qkv = sd[_fill(self.megatron, i)]
            hd, rest = qkv.shape[0] // (self.groups * (per + 2)), qkv.shape[1:]
            x = qkv.reshape(self.groups, (per + 2) * hd, *rest)
            parts = (x[:, : per * hd], x[:, per * hd: (per + 1) * hd], x[:, (per + 1) * hd:])
            for name, t in zip((self.q, self.k, self.v), parts):
                out[_fill(name, i)] = t.reshape(-1, *rest).contiguous()
        return out


@dataclass(frozen=True)
class GatedMLP(Rule):
    gate: str = ""
    up: str = ""

    def prefixed(self, mc, body, root):
        p = self._p(body, root)
        return GatedMLP(mc + self.megatron, self.scope, self.limit, p + self.gate, p + self.up)

    def hf_names(self):
        return [self.gate, self.up]

    def to_megatron(self, sd):
        return {_fill(self.megatron, i): torch.cat([_take(sd, _fill(self.gate, i)), _take(sd, _fill(self.up, i))])
                for i in self._at(self.gate, sd)}

    def to_hf(self, sd):
        out = {}
        for i in self._at(self.megatron, sd):
            gate, up = sd[_fill(self.megatron, i)].chunk(2)
            out[_fill(self.gate, i)], out[_fill(self.up, i)] = gate.contiguous(), up.contiguous()
        return out


@dataclass(frozen=True)
class Subtree(Rule):
    hf: str = ""

    def prefixed(self, mc, body, root):
        return Subtree(mc + self.megatron, self.scope, self.limit, self._p(body, root) + self.hf)

    def hf_names(self):
        return [self.hf]

    def to_megatron(self, sd):
        return self._move(sd, self.hf, self.megatron)

    def to_hf(self, sd):
        return self._move(sd, self.megatron, self.hf)

    @staticmethod
    def _move(sd: Tensors, src: str, dst: str) -> Tensors:
        out = {dst + k[len(src):]: v for k, v in sd.items() if k.startswith(src)}
        if not out:
            raise KeyError(f"no tensor under {src!r} (wrong model family or config for this checkpoint?)")
        return out


@dataclass(frozen=True)
class ExportOnly(Rule):
    """`megatron` names the megatron tensor whose layer indices (if any) the HF tensor follows."""

    hf: str = ""
    value: Callable[[], torch.Tensor] | None = None

    def prefixed(self, mc, body, root):
        return ExportOnly(mc + self.megatron, self.scope, self.limit, self._p(body, root) + self.hf, self.value)

    def hf_names(self):
        return [self.hf]

    def to_megatron(self, sd):
        return {}

    def to_hf(self, sd):
        return {_fill(self.hf, i): self.value() for i in self._at(self.megatron, sd)}


def prefixed(rules: list[Rule], *, megatron: str = "", body: str = "", root: str = "") -> list[Rule]:
    return [r.prefixed(megatron, body, root) for r in rules]


def to_megatron(rules: list[Rule], hf: Tensors) -> Tensors:
    out: Tensors = {}
    for r in rules:
        out.update(r.to_megatron(hf))
    return out


def to_hf(rules: list[Rule], megatron: Tensors) -> Tensors:
    out: Tensors = {}
    for r in rules:
        out.update(r.to_hf(megatron))
    return {k: v.contiguous() for k, v in out.items()}


def find_prefix(sd: Tensors, suffix: str, what: str) -> str:
    """The shortest prefix under which `suffix` names a tensor in `sd` (where a family's tensors live in an HF
    checkpoint: ``model.``, ``model.language_model.``, ``vision_tower.vision_model.``, ...)."""
    hits = sorted({k[: -len(suffix)] for k in sd if k.endswith(suffix)}, key=len)
    if not hits:
        raise KeyError(f"no '*{suffix}' tensor found: this checkpoint has no {what}")
    return hits[0]
