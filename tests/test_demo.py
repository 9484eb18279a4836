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
    runs = ["stage1_alignment", "stage2_mid", "stage3_sft", "curated_verified", "curated_seller_aspects",
            "item_intel_first", "item_intel_better"]
    assert [r[0] for r in res["stages"]] == [*runs, "full_vlm (AutoModel)"]
    for run in runs:
        assert list((tmp_path / "runs" / run / "checkpoints").glob("step_*/meta.json"))
    assert (tmp_path / "hf_stage3" / "model.safetensors").is_file()
    assert (tmp_path / "runs" / "full_vlm" / "run" / "hf" / "config.json").is_file()
    assert "held-out products" in proc.stdout and "where the time went" in proc.stdout
    # every phase is timed, and the phases add up to (nearly) the whole run
    phases = res["phases_s"]
    assert {"train stage3_sft", "train full_vlm (AutoModel)", "eval full_vlm_gemma3"} <= set(phases)
    assert 0.9 * phases["total"] <= sum(v for k, v in phases.items() if k != "total") <= phases["total"]
    assert set(res["item_intel"]) == {"stage3", "first_labels", "first_labels_crops", "better_labels",
                                      "better_labels_crops", "full_vlm"}
    assert "item-intel data (pipeline)" in phases and res["item_intel_data"]["label_f1"]["better"] > 0
    assert "country read" in proc.stdout
    # the curated stage-3 sets: verified and the seller's aspects, from the same listings, both scored on Table 1
    cur = res["curated_data"]
    assert cur["curated_verified"]["listings"] == cur["curated_seller_aspects"]["listings"] == 30
    assert cur["curated_verified"]["aspects_kept"] < cur["curated_seller_aspects"]["aspects_kept"]
    assert {"curated_verified", "curated_seller_aspects"} <= set(res["benchmarks"])
    assert "visual verification" in proc.stdout and "curated data (pipeline)" in phases


@pytest.mark.slow
def test_full_demo_learns_colour_and_category(tmp_path):
    proc = subprocess.run([_ecomvlm(), "demo", "--workdir", str(tmp_path)], cwd=REPO, capture_output=True, text=True,
                          timeout=1800)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    res = json.loads((tmp_path / "demo_result.json").read_text())
    assert res["before"]["colour"] <= 0.2 and res["after"]["colour"] >= 0.8
    assert res["after"]["category"] >= 0.35  # 0.63 measured (README); chance is 0.12
    ii = res["item_intel"]
    assert ii["first_labels"]["valid_json"] > ii["stage3"]["valid_json"]
    assert ii["first_labels"]["f1"] > max(ii["stage3"]["f1"], 50.0)
    # Table 3's effect (docs/ITEM_INTEL.md): better labels + crops at inference beat first labels, crops at inference
    # help the better-label model, and what they add is the small-print fact the first labels never had
    assert ii["better_labels_crops"]["f1"] > ii["first_labels"]["f1"] + 3.0
    assert ii["better_labels_crops"]["f1"] > ii["better_labels"]["f1"] + 3.0
    country = ii["better_labels_crops"]["country"]
    assert country["correct"] >= 0.6 * country["in_reference"]
    assert ii["first_labels"]["country"]["answered"] <= 2
    # the complete VLM learned the answer format on the same shards (its F1 is not compared: see README)
    assert ii["full_vlm"]["valid_json"] >= 0.9
    # visual verification: stage 3 continued on the verified curated listings beats the same listings with the
    # seller's aspects on the Table-1 columns (measured: every column, mean 46.7 vs 23.7; README)
    from ecomvlm.eval.report import TABLES

    b = res["benchmarks"]
    verified = [b["curated_verified"][bench][m] for _, bench, m in TABLES["table1"][1]]
    seller = [b["curated_seller_aspects"][bench][m] for _, bench, m in TABLES["table1"][1]]
    assert sum(v > s for v, s in zip(verified, seller)) >= 5, (verified, seller)
    assert sum(verified) / 6 >= sum(seller) / 6 + 10, (verified, seller)
