"""Curated stage-3 data for the demo: synthetic raw listings through the whole pipeline (scripted captioner and
verifier on loopback, the real client), in seconds."""

from __future__ import annotations

from pathlib import Path


def curate_synthetic_for_demo(data_dir: Path, workdir: Path, n: int, n_eval: int = 0, seed: int = 0,
                              image_size: int = 96) -> Path:
    """Write `n` synthetic raw listings (+ `n_eval` held out, exported as ``export/eval/ifeval.jsonl``) under
    ``<data_dir>/curation_raw``, curate them in `workdir` and return the stage-3 LLaVA JSON
    (``<workdir>/export/stage3_curated.json``; image paths are absolute; shards in ``export/shards``, the report in
    ``export/report.md``). The bad inputs of the tests are included: they are counted in the report, not trained."""
    from ecomvlm.data_modules.curation.endpoints import EndpointSpec
    from ecomvlm.data_modules.curation.pipeline import CurateConfig, run_all
    from ecomvlm.data_modules.curation.scripted import ScriptedEndpoints, serve
    from ecomvlm.data_modules.curation.synthetic import make_raw_listings, read_truth

    raw = make_raw_listings(Path(data_dir) / "curation_raw", n=n, n_eval=n_eval, seed=seed, image_size=image_size)
    endpoints = ScriptedEndpoints(read_truth(raw["truth"]), slow_s=4.0)
    with serve(endpoints) as url:
        common = {"base_url": url, "api_key_env": "ECOMVLM_DEMO_NO_KEY", "concurrency": 32, "http_retries": 2,
                  "backoff_s": 0.05}
        cfg = CurateConfig(work=Path(workdir), inputs=[Path(raw["raw"])], image_root=Path(raw["image_root"]),
                           captioner=EndpointSpec(model="scripted-captioner", timeout_s=1.5, **common),
                           verifier=EndpointSpec(model="scripted-verifier", timeout_s=10.0, format_retries=1,
                                                 **common),
                           seed=seed, partition_size=max(64, n // 4 + 1))
        run_all(cfg)
    return Path(workdir) / "export" / "stage3_curated.json"
