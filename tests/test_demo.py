"""The main job (`ecomvlm demo`) through the console script, as a user runs it."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import REPO


def _ecomvlm() -> str:
    exe = Path(sys.executable).with_name("ecomvlm")
    return str(exe) if exe.exists() else "ecomvlm"


def test_quick_demo_runs_every_stage_and_exports(tmp_path):
    proc = subprocess.run([_ecomvlm(), "demo", "--quick", "--workdir", str(tmp_path)], cwd=REPO, capture_output=True,
                          text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    res = json.loads((tmp_path / "demo_result.json").read_text())
    assert [r[0] for r in res["stages"]] == ["stage1_alignment", "stage2_mid", "stage3_sft", "item_intel_ft"]
    for stage in ("stage1_alignment", "stage2_mid", "stage3_sft", "item_intel_ft"):
        assert list((tmp_path / "runs" / stage / "checkpoints").glob("step_*/meta.json"))
    assert (tmp_path / "hf_stage3" / "model.safetensors").is_file()
    assert "held-out products" in proc.stdout


@pytest.mark.slow
def test_full_demo_learns_colour_and_category(tmp_path):
    proc = subprocess.run([_ecomvlm(), "demo", "--workdir", str(tmp_path)], cwd=REPO, capture_output=True, text=True,
                          timeout=1800)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    res = json.loads((tmp_path / "demo_result.json").read_text())
    assert res["before"]["colour"] <= 0.2 and res["after"]["colour"] >= 0.8
    assert res["item_intel"]["item_intel_ft"]["valid_json"] > res["item_intel"]["stage3"]["valid_json"]
    assert res["item_intel"]["item_intel_ft"]["f1"] > res["item_intel"]["stage3"]["f1"]
