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
    runs = ["stage1_alignment", "stage2_mid", "stage3_sft", "item_intel_first", "item_intel_better"]
    assert [r[0] for r in res["stages"]] == [*runs, "full_vlm (AutoModel)"]
    for run in runs:
        assert list((tmp_path / "runs" / run / "checkpoints").glob("step_*/meta.json"))
    for name in ("stage3_sft", "item_intel_first", "item_intel_better"):
        assert (tmp_path / f"hf_{name}" / "model.safetensors").is_file()
    assert (tmp_path / "runs" / "full_vlm" / "run" / "hf" / "config.json").is_file()
    assert "held-out products" in proc.stdout and "where the time went" in proc.stdout
    # every phase is timed, and the phases add up to (nearly) the whole run
    phases = res["phases_s"]
    assert {"curation (scripted captioner + verifier)", "train stage3_sft", "train full_vlm (AutoModel)",
            "eval item-intel models"} <= set(phases)
    assert 0.9 * phases["total"] <= sum(v for k, v in phases.items() if k != "total") <= phases["total"]
    # the curated set was made and trained on: it is in stage 3's shards
    assert res["curation"]["instructions"] > 0
    sources = json.loads((tmp_path / "shards" / "stage3" / "manifest.json").read_text())["sources"].values()
    curated = [s for s in sources if s["path"].endswith("stage3_curated.json")]
    assert curated and curated[0]["written"] == res["curation"]["instructions"]


@pytest.mark.slow
def test_full_demo_learns_colour_and_category(tmp_path):
    proc = subprocess.run([_ecomvlm(), "demo", "--workdir", str(tmp_path)], cwd=REPO, capture_output=True, text=True,
                          timeout=1800)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    res = json.loads((tmp_path / "demo_result.json").read_text())
    assert res["before"]["colour"] <= 0.2 and res["after"]["colour"] >= 0.8
    ii = res["item_intel"]
    assert ii["item_intel_first"]["valid_json"] > ii["stage3"]["valid_json"]
    assert ii["item_intel_first"]["f1"] > ii["stage3"]["f1"]
    # the paper's effect (Table 3 rows 28-29 vs 37-41): better labels on originals + crops beat first labels on
    # originals, and crops at inference help again
    assert ii["item_intel_better"]["f1"] > ii["item_intel_first"]["f1"]
    assert ii["item_intel_better_crops"]["f1"] > ii["item_intel_better"]["f1"]
    assert ii["full_vlm"]["valid_json"] > 0.5
