"""Multi-process (torchrun + gloo) checks, grouped so each group pays the imports once per process."""

import json

import pytest

from conftest import REPO, run_torchrun

pytestmark = pytest.mark.multiproc


def test_tensor_parallel_2_equals_tensor_parallel_1(tmp_path):
    worker = REPO / "tests" / "workers" / "gpt_tp_parity.py"
    run_torchrun(worker, 1, str(tmp_path / "tp1.json"))
    run_torchrun(worker, 2, str(tmp_path / "tp2.json"))
    tp1 = json.loads((tmp_path / "tp1.json").read_text())
    tp2 = json.loads((tmp_path / "tp2.json").read_text())
    assert (tp1["tp"], tp2["tp"]) == (1, 2)
    assert tp2["loss"] == pytest.approx(tp1["loss"], abs=1e-5)
    assert tp2["grad_norm"] == pytest.approx(tp1["grad_norm"], rel=1e-4)
    assert tp1["loss"] > 1.0  # a real untrained loss, not a placeholder
