"""The `ecomvlm` door: help, honest stubs, data synth, clear errors."""

import json
import subprocess
import sys

from ecomvlm.cli import main


def test_console_script_help_lists_every_subcommand():
    out = subprocess.run([sys.executable, "-m", "ecomvlm.cli", "--help"], capture_output=True, text=True, check=True)
    for cmd in ("train", "data", "eval", "export", "launch", "demo"):
        assert cmd in out.stdout


def test_data_synth_writes_dataset(tmp_path):
    assert main(["data", "synth", "--out", str(tmp_path), "--n", "4", "--n-eval", "2", "--image-size", "48"]) == 0
    m = json.loads((tmp_path / "manifest.json").read_text())
    assert m["items"] == {"train": 4, "eval": 2} and m["config"]["image_size"] == 48


def test_bad_flag_value_is_a_one_line_error(tmp_path, capsys):
    assert main(["data", "synth", "--out", str(tmp_path), "--max-images", "0"]) == 2
    assert "--max-images must be in 1..6" in capsys.readouterr().err


def test_export_of_a_missing_checkpoint_names_it(tmp_path, capsys):
    assert main(["export", "--checkpoint", str(tmp_path / "nope"), "--out", str(tmp_path / "hf")]) == 2
    assert "nope/meta.json not found" in capsys.readouterr().err


def test_unknown_recipe_is_a_one_line_error(capsys):
    assert main(["train", "no_such_recipe", "data.shards=x"]) == 2
    assert "no_such_recipe" in capsys.readouterr().err


def test_item_intel_synth_with_print_codes_and_min_images(tmp_path, capsys):
    """The demo's item-intelligence data from the command line: every item has front + back, the truth holds the
    printed country only, and a minimum above the maximum is a one-line error."""
    out = tmp_path / "ii"
    assert main(["data", "item-intel", "synth", "--out", str(out), "--n", "4", "--n-eval", "1", "--min-images", "2",
                 "--max-images", "2", "--print-codes"]) == 0
    rows = [json.loads(line) for line in (out / "items.jsonl").read_text().splitlines()]
    assert all(len(r["images"]) == 2 and r["printed"] == ["country"] for r in rows)
    config = json.loads((out / "manifest.json").read_text())["config"]
    assert config["print_codes"] is True and config["min_images"] == 2
    assert main(["data", "synth", "--out", str(tmp_path / "bad"), "--min-images", "3", "--max-images", "2"]) == 2
    assert "--min-images must be in 1..--max-images (2)" in capsys.readouterr().err
