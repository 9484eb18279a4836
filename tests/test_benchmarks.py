"""The benchmark scripts run with small sizes and print their side-by-side tables (their numbers are not asserted:
timings belong in the benchmarks' output, never in tests)."""

import json
import subprocess
import sys

from conftest import REPO


def _run(script: str, *args: str) -> str:
    proc = subprocess.run([sys.executable, str(REPO / "benchmarks" / script), *args], cwd=REPO, capture_output=True,
                          text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    return proc.stdout


def test_loader_benchmark_prints_both_pipelines_for_both_cache_states(tmp_path):
    out = _run("loader_throughput.py", "--items", "6", "--workers", "1", "--max-len", "2048",
               "--workdir", str(tmp_path))
    for cache in ("cold", "warm"):
        assert f"| {cache} | LLaVA-NeXT LazySupervisedDataset" in out and f"| {cache} | ecomvlm energon" in out
        assert f"{cache}: ecomvlm / LLaVA-NeXT samples/s = " in out
    # both pipelines read items after their first batch (the steady state the table times), never more than exist
    rows = [line.split("|") for line in out.splitlines() if line.startswith("| cold |")]
    assert len(rows) == 2 and all(0 < int(r[4]) < 6 for r in rows)


def test_curation_benchmark_reports_overhead_against_the_ideal(tmp_path):
    out = _run("curation_throughput.py", "--listings", "32", "--concurrency", "8", "--latency", "0.05",
               "--work", str(tmp_path))
    res = json.loads(out.splitlines()[0])
    assert res["listings"] == 32 and res["written"] == 32
    assert res["ideal_listings_per_s"] == 8 / (2 * 0.05) and res["listings_per_s"] > 0
    assert "endpoint-bound ideal" in out
