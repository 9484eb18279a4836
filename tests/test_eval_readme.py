"""Every `ecomvlm eval` command of the README's Evaluation section runs end to end on fixture copies of the real
data layouts (tests/fixtures/public/, the synthetic e-commerce sets) with a tiny random LLaVA. Here the backend is
transformers; tests/test_eval_vllm_images.py runs the vLLM and server backends (make test-slow)."""

from __future__ import annotations

import json
import re
import shlex
import shutil
from pathlib import Path

import pytest

from ecomvlm.cli import main

from conftest import REPO

FIX = Path(__file__).parent / "fixtures" / "public"
BACKEND_ONLY = {"--server-url", "--served-model", "--vllm-python", "--vllm-engine-arg", "--max-model-len"}


def readme_eval_commands() -> list[str]:
    text = (REPO / "README.md").read_text()
    section = text[text.index("## Evaluation"):text.index("\n## ", text.index("## Evaluation") + 5)]
    cmds, cur = [], None
    for block in re.findall(r"```bash\n(.*?)```", section, re.S):
        for line in block.splitlines():
            line = line.strip()
            if cur is not None:
                cur += " " + line.rstrip("\\").strip()
                if not line.endswith("\\"):
                    cmds.append(cur)
                    cur = None
            elif line.startswith("ecomvlm eval"):
                cur = line.rstrip("\\").strip() if line.endswith("\\") else None
                if cur is None:
                    cmds.append(line)
    return cmds


def on_fixtures(cmd: str, tmp_path: Path, model_dir: Path, data_dir: Path, judge_url: str) -> list[str]:
    """The README command with its paths pointing at fixtures, a tiny model and the hf backend."""
    argv = shlex.split(cmd)[1:]
    out, i = [], 0
    while i < len(argv):
        a = argv[i]
        v = argv[i + 1] if i + 1 < len(argv) else None
        if a in BACKEND_ONLY:
            i += 2
            continue
        if a == "--backend":
            out += ["--backend", "hf"]
        elif a == "--model":
            label = v.partition("=")[0]
            out += ["--model", f"{label}={model_dir}"]
        elif a == "--data":
            out += ["--data", str(data_dir)]
        elif a == "--public-root":
            out += ["--public-root", str(FIX)]
        elif a == "--public-data":
            name = v.partition("=")[0]
            out += ["--public-data", f"{name}={FIX / name}"]
        elif a == "--judge-url":
            out += ["--judge-url", judge_url]
        elif a == "--out":
            out += ["--out", str(tmp_path / v)]
        else:
            out += [a] if v is None or v.startswith("--") else [a, v]
            i += 1 if v is None or v.startswith("--") else 2
            continue
        i += 2
    return out + ["--limit", "3", "--max-new-tokens", "4", "--item-intel-max-new-tokens", "8", "--no-plot"]


def test_the_readme_shows_the_eval_setups():
    cmds = readme_eval_commands()
    assert len(cmds) >= 3
    assert any("--public-root" in c and "public" in c for c in cmds)
    assert any("--ecommmmu-subset gts" in c for c in cmds) and any("--backend openai" in c for c in cmds)


def test_every_readme_eval_command_runs_on_fixture_layouts(tmp_path, synth_data, scripted_server, monkeypatch):
    from fixtures.public.tiny_vlm import build_tiny_llava

    from ecomvlm.eval.public.loading import cached_image_path

    monkeypatch.setenv("ECOMVLM_IMAGE_CACHE", str(tmp_path / "cache"))
    for i in range(24):  # the eComMMMU fixture's image URLs, as a first ECOMVLM_ALLOW_DOWNLOAD=1 run leaves them
        p = cached_image_path(f"https://m.media-amazon.com/images/I/fixture{i:02d}.jpg")
        p.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(FIX / "ecommmmu_images" / f"fixture{i:02d}.png", p)
    url, handler = scripted_server
    model = build_tiny_llava(tmp_path / "tiny_llava")
    for cmd in readme_eval_commands():
        argv = on_fixtures(cmd, tmp_path, model, synth_data, url)
        assert main(argv) == 0, cmd
        out = Path(argv[argv.index("--out") + 1])
        res = json.loads((out / "results.json").read_text())
        labels = [argv[i + 1].partition("=")[0] for i, a in enumerate(argv) if a == "--model"]
        benches = argv[argv.index("--benchmarks") + 1]
        assert sorted(res) == sorted(labels)
        for label in labels:
            for name in res[label]:
                m = res[label][name]
                assert m["n"] > 0 and m["timing"]["n_timed"] == len(
                    json.loads((out / label / f"{name}.json").read_text())["predictions"])
            if "public" in benches:
                assert {"mmbench", "mme", "mmstar", "cv_bench", "textvqa", "ai2d", "mmmu", "ecommmmu"} <= set(
                    res[label])
                assert res[label]["mmbench"]["data"]["source"]["files"] == ["en/dev-00000-of-00001.parquet"]
            if "ecommmmu" in res[label]:
                assert res[label]["ecommmmu"]["data"]["setting"]["subset"] == "gts"
        table = (out / "table.md").read_text()
        assert all(f"| {label} |" in table for label in labels)
        if "item_intel" in benches:
            assert "Table 4" in table


@pytest.mark.parametrize("flag, value, err", [
    ("--public-root", "missing_root", "has no mmbench/ folder"),
    ("--vllm-engine-arg", "novalue", "write KEY=VALUE"),
])
def test_eval_cli_errors_name_the_fix(tmp_path, capsys, flag, value, err):
    from fixtures.public.tiny_vlm import build_tiny_llava

    model = build_tiny_llava(tmp_path / "m")
    argv = ["eval", "--model", str(model), "--benchmarks", "mmbench", flag,
            str(tmp_path / value) if flag == "--public-root" else value, "--out", str(tmp_path / "o")]
    assert main(argv) == 2
    assert err in capsys.readouterr().err
