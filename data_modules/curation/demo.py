"""Curated stage-3 data for the demo: synthetic raw listings through the whole pipeline (scripted captioner and
verifier on loopback, the real client), in seconds; with the no-verification ablation beside it."""

from __future__ import annotations

from pathlib import Path
from typing import Any


def curate_demo_sets(data_dir: Path, workdir: Path, n: int, n_eval: int = 0, seed: int = 0, image_size: int = 96,
                     modes: tuple[str, ...] = ("model", "trust_seller")) -> dict[str, dict[str, Any]]:
    """Write `n` synthetic raw listings (+ `n_eval` held out, exported as ``export/eval/ifeval.jsonl``) under
    ``<data_dir>/curation_raw`` and curate them once per verify mode in ``<workdir>/<mode>``: ``model`` (the
    verifier judges every aspect, the paper's pipeline) and ``trust_seller`` (every seller aspect kept, the
    ablation). Returns ``{mode: {"llava_json", "shards", "report"}}`` (image paths absolute, shards energon-readable,
    the report as ``export/report.md``). The bad inputs of the tests are included: counted in the report, not
    trained."""
    from ecomvlm.data_modules.curation.endpoints import EndpointSpec
    from ecomvlm.data_modules.curation.pipeline import CurateConfig, run_all
    from ecomvlm.data_modules.curation.scripted import ScriptedEndpoints, serve
    from ecomvlm.data_modules.curation.synthetic import make_raw_listings, read_truth

    raw = make_raw_listings(Path(data_dir) / "curation_raw", n=n, n_eval=n_eval, seed=seed, image_size=image_size)
    endpoints = ScriptedEndpoints(read_truth(raw["truth"]), slow_s=4.0)
    out: dict[str, dict[str, Any]] = {}
    with serve(endpoints) as url:
        common = {"base_url": url, "api_key_env": "ECOMVLM_DEMO_NO_KEY", "concurrency": 32, "http_retries": 2,
                  "backoff_s": 0.05}
        captioner = EndpointSpec(model="scripted-captioner", timeout_s=1.5, **common)
        for mode in modes:
            work = Path(workdir) / mode if len(modes) > 1 else Path(workdir)
            cfg = CurateConfig(work=work, inputs=[Path(raw["raw"])], image_root=Path(raw["image_root"]),
                               captioner=captioner,
                               verifier=EndpointSpec(model="scripted-verifier", timeout_s=10.0, format_retries=1,
                                                     **common) if mode == "model" else None,
                               seed=seed, partition_size=max(64, n // 4 + 1), verify=mode)
            report = run_all(cfg)["export"]
            out[mode] = {"llava_json": work / "export" / "stage3_curated.json", "shards": work / "export" / "shards",
                         "report": report}
    return out


def curate_synthetic_for_demo(data_dir: Path, workdir: Path, n: int, n_eval: int = 0, seed: int = 0,
                              image_size: int = 96) -> Path:
    """The verified set alone in `workdir`: its stage-3 LLaVA JSON (``<workdir>/export/stage3_curated.json``)."""
    return curate_demo_sets(data_dir, workdir, n, n_eval, seed, image_size, modes=("model",))["model"]["llava_json"]
