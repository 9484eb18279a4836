"""Hydra multirun through `ecomvlm train -m`: Hydra's grammar (lists, range(), choice(), glob(), list values),
every job composed and checked before the first starts, then Hydra's basic launcher running the jobs one after
another, each in its own run directory. (`ecomvlm launch -m` as a SLURM job array: tests/test_launcher.py renders
it, tests/test_launcher_slurm.py runs one.)"""

import json
import os
import subprocess
import sys
from pathlib import Path

from ecomvlm.cli import main

RECIPE = "tiny_siglip_qwen3_stage1_alignment"


def test_train_multirun_dry_run_expands_hydra_sweeps_and_checks_every_job(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    ins = [f"tokenizer.path={tmp_path}", f"data.shards={tmp_path}"]
    assert main(["train", RECIPE, "-m", "--dry-run", *ins, "optim.betas=[0.9,0.95],[0.9,0.999]",
                 "trainer.max_steps=range(1,3)", "model/decoder=choice(tiny_qwen3,tiny_llama)"]) == 0
    out = capsys.readouterr().out
    heads = [line for line in out.splitlines() if line.startswith("# multirun job")]
    assert len(heads) == 8 and out.count("nothing trained") == 8
    assert heads[0] == (f"# multirun job 0/8: optim.betas=[0.9,0.95] trainer.max_steps=1 model/decoder=tiny_qwen3 "
                        f"-> run.dir runs/{RECIPE}/0")
    assert "model/decoder=tiny_llama -> run.dir runs/" + RECIPE + "/7" in heads[7]
    assert main(["train", RECIPE, "--multirun", "--dry-run", *ins, "model/decoder=glob(tiny_*)",
                 f"run.dir={tmp_path}/sweep"]) == 0
    out = capsys.readouterr().out
    assert f"model/decoder=tiny_gemma3 -> run.dir {tmp_path}/sweep/0" in out and "/sweep/2" in out
    # a bad value in the last job stops everything before the first job starts
    assert main(["train", RECIPE, "-m", "--dry-run", *ins, "data.truncation=skip,nonsense"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("ecomvlm: error: multirun job 1 (data.truncation=nonsense): ") and err.count("\n") == 1
    assert main(["train", RECIPE, "--dry-run", *ins, "optim.lr=1e-3,2e-3"]) == 2  # a sweep needs -m
    assert "gives several values (a sweep): add -m" in capsys.readouterr().err


def test_train_multirun_runs_the_jobs_one_after_another(tiny_train_inputs, tmp_path):
    w = tiny_train_inputs
    cmd = [str(Path(sys.executable).with_name("ecomvlm")), "train", "-m", RECIPE, f"tokenizer.path={w / 'tok'}",
           f"data.shards={w / 's1'}", "data.global_batch_size=4", "data.max_seq_length=192", "data.num_workers=0",
           "model.encoder.image_size=32", "trainer.max_steps=range(1,3)", "optim.lr=2e-3"]
    p = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=600,
                       env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    assert f"multirun: 2 job(s) one after another in runs/{RECIPE}/<job>" in p.stdout
    for job, steps in ((0, 1), (1, 2)):
        run = tmp_path / "runs" / RECIPE / str(job)
        cfg = json.loads((run / "config.json").read_text())
        assert cfg["trainer"]["max_steps"] == steps and cfg["optim"]["lr"] == 2e-3
        assert cfg["run"]["dir"] == str(run)
        summary = json.loads((run / "summary.json").read_text())
        assert len(summary["losses"]) == steps and summary["final_checkpoint"].endswith(f"step_{steps:08d}")
