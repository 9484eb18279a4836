"""Every command a user is shown runs: recipe headers, README commands, `--help` examples (dry runs: composition,
argument parsing and layout checks; nothing is trained or submitted)."""

import re
import shlex
from pathlib import Path

import pytest

from ecomvlm.cli import build_parser, main

from conftest import REPO

CONF = REPO / "conf"
PLACEHOLDER = re.compile(r"\b[A-Z][A-Z0-9]*(?:_[A-Z0-9]+)*_(?:DIR|RUN|CKPT|PATH)\b")


def _commands(lines: list[str]) -> list[str]:
    """`ecomvlm ...` commands in text lines, continuation backslashes joined."""
    out, cur = [], None
    for raw in lines:
        line = raw.lstrip("#").strip()
        if cur is not None:
            cur += " " + line.rstrip("\\").strip()
            if not line.endswith("\\"):
                out.append(cur)
                cur = None
        elif line.startswith("ecomvlm "):
            if line.endswith("\\"):
                cur = line.rstrip("\\").strip()
            else:
                out.append(line)
    return out


def _argv(cmd: str, tmp_path: Path) -> list[str]:
    """A shown command as argv, placeholders replaced by existing folders."""
    def real(m):
        p = tmp_path / m.group(0).lower()
        p.mkdir(exist_ok=True)
        return str(p)

    return shlex.split(PLACEHOLDER.sub(real, cmd))[1:]


def _run_dry(argv: list[str], capsys) -> str:
    if argv[0] in ("train", "launch"):
        argv = argv if "--dry-run" in argv else [*argv[:2], "--dry-run", *argv[2:]]
        assert main(argv) == 0, capsys.readouterr().err
        return capsys.readouterr().out
    args, unknown = build_parser().parse_known_args([a for a in argv if a != "--"])  # the rest: parsing only
    assert not unknown or (hasattr(args, "overrides") and all("=" in u for u in unknown)), unknown
    return ""


RECIPES = sorted(p for p in CONF.glob("*.yaml"))


@pytest.mark.parametrize("recipe", RECIPES, ids=lambda p: p.stem)
def test_every_recipe_header_command_runs(recipe, tmp_path, capsys):
    header = [line for line in recipe.read_text().splitlines() if line.startswith("#")]
    cmds = _commands(header)
    assert cmds, f"{recipe.name}: its header shows no command"
    for cmd in cmds:
        out = _run_dry(_argv(cmd, tmp_path), capsys)
        if cmd.startswith("ecomvlm launch"):
            assert f"--config-name {recipe.stem}" in out
        else:
            assert "nothing trained" in out


def test_every_readme_command_runs(tmp_path, capsys):
    text = (REPO / "README.md").read_text()
    blocks = re.findall(r"```bash\n(.*?)```", text, re.S)
    cmds = _commands([line for b in blocks for line in b.splitlines()])
    assert any(c.startswith("ecomvlm train") for c in cmds) and any(c.startswith("ecomvlm launch") for c in cmds)
    for cmd in cmds:
        _run_dry(_argv(cmd, tmp_path), capsys)


def _subparsers(parser):
    import argparse

    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield name, sub
                yield from _subparsers(sub)


def test_every_help_example_runs(tmp_path, capsys):
    examples = []
    for _name, sub in _subparsers(build_parser()):
        if sub.epilog:
            examples += _commands(sub.epilog.splitlines())
    assert len(examples) >= 6
    for cmd in examples:
        _run_dry(_argv(cmd, tmp_path), capsys)


def test_recipes_lists_recipes_models_and_clusters(capsys):
    assert main(["recipes"]) == 0
    out = capsys.readouterr().out
    assert "siglip2_qwen3_8b_stage3_sft" in out and "gemma3_27b_item_intel_ft" in out
    assert "clusters (ecomvlm launch RECIPE --cluster NAME): h100_8x, local" in out
    assert "siglip_gemma3_4b" in out and "tiny_qwen3" in out and "hf_model (hf_model=NAME)" in out


def test_version(capsys):
    from ecomvlm import __version__

    with pytest.raises(SystemExit) as e:
        main(["--version"])
    assert e.value.code == 0 and capsys.readouterr().out.strip() == f"ecomvlm {__version__}"


def test_dry_run_refuses_what_the_run_would(tmp_path, capsys):
    assert main(["train", "tiny_siglip_qwen3_stage3_sft", "--dry-run"]) == 2
    assert "missing required settings: data.shards, tokenizer.path" in capsys.readouterr().err
    assert main(["train", "siglip2_qwen3_8b_stage3_sft", "--dry-run", "--nproc", "6", "tokenizer.path=x",
                 "data.shards=y"]) == 2
    assert "not divisible by TP*PP*CP" in capsys.readouterr().err
    assert main(["train", "tiny_siglip_qwen3_stage3_sft", "--dry-run", "tokenizer.path=x", "data.shards=y",
                 "+trainer.fail_at_step=3"]) == 2
    assert "unknown settings ['trainer.fail_at_step']" in capsys.readouterr().err
