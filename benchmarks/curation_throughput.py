"""Curation throughput against a loopback endpoint with a fixed latency: listings/s of the endpoint-bound stages
(caption, verify) beside the endpoint-bound ideal, so the pipeline's own overhead is a ratio.

Each listing costs one caption and one verify request, run as two stages one after the other, so the ideal is
``concurrency / (2 * latency)`` listings/s. The endpoint is the scripted server of data_modules/curation/scripted.py
(answers computed from the synthetic truth, then a sleep of ``--latency``), in a process of its own; the client,
workers and partition files are the real ones. On a loaded machine the ideal is out of reach for any client, so
the same number of bare HTTP requests (aiohttp) is timed too: the pipeline's overhead over that is printed beside it.

    .venv/bin/python benchmarks/curation_throughput.py --listings 1024 --concurrency 64 --latency 0.5
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import tempfile
import time
from pathlib import Path


async def bare_http(url: str, n: int, concurrency: int) -> float:
    """Seconds for `n` bare chat requests at `concurrency` (aiohttp, the pipeline's client library, no pipeline):
    what this machine allows."""
    import aiohttp

    body = json.dumps({"model": "bench-verifier", "messages": [{"role": "user", "content": "- Colour: Red"}],
                       "response_format": {"type": "json_schema"}})
    sem = asyncio.Semaphore(concurrency)
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=concurrency),
                                     headers={"Content-Type": "application/json"}) as http:
        async def one() -> None:
            async with sem:
                async with http.post(f"{url}/chat/completions", data=body) as r:
                    r.raise_for_status()
                    json.loads(await r.read())

        t0 = time.perf_counter()
        await asyncio.gather(*[one() for _ in range(n)])
        return time.perf_counter() - t0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--listings", type=int, default=1024)
    ap.add_argument("--concurrency", type=int, default=64)
    ap.add_argument("--latency", type=float, default=0.5, help="seconds the endpoint takes per request")
    ap.add_argument("--partition-size", type=int, default=1024)
    ap.add_argument("--workers", type=int, default=1)
    ap.add_argument("--work", default=None, help="work folder (default: a temporary one)")
    args = ap.parse_args()

    from ecomvlm.data_modules.curation.endpoints import EndpointSpec
    from ecomvlm.data_modules.curation.pipeline import (
        CurateConfig,
        run_caption,
        run_clean,
        run_image,
        run_ingest,
        run_verify,
    )
    from ecomvlm.data_modules.curation.scripted import serve_in_process
    from ecomvlm.data_modules.curation.synthetic import make_raw_listings, read_truth

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(args.work or tmp)
        raw = make_raw_listings(root / "data", n=args.listings, seed=1, image_size=64, bad=False)
        with serve_in_process(read_truth(raw["truth"]), latency_s=args.latency) as url:
            common = {"base_url": url, "concurrency": args.concurrency, "timeout_s": 60.0, "http_retries": 1}
            cfg = CurateConfig(work=root / "work", inputs=[Path(raw["raw"])], image_root=Path(raw["image_root"]),
                               captioner=EndpointSpec(model="bench-captioner", **common),
                               verifier=EndpointSpec(model="bench-verifier", **common),
                               partition_size=args.partition_size, workers=args.workers, cache=False)
            t0 = time.perf_counter()
            run_ingest(cfg)
            run_clean(cfg)
            run_image(cfg)
            t_local = time.perf_counter() - t0
            t1, c1 = time.perf_counter(), time.process_time()
            cap = run_caption(cfg)
            t_cap = time.perf_counter() - t1
            t2 = time.perf_counter()
            ver = run_verify(cfg)
            t_ver = time.perf_counter() - t2
            cpu = time.process_time() - c1
            t_bare = asyncio.run(bare_http(url, 2 * cap["input_records"], args.concurrency))
    n = cap["input_records"]
    wall = t_cap + t_ver
    ideal = args.concurrency / (2 * args.latency)
    measured = n / wall
    bare = 2 * n / t_bare / 2  # listings/s if each listing's two requests were bare HTTP calls
    out = {"listings": n, "concurrency": args.concurrency, "latency_s": args.latency, "workers": args.workers,
           "caption_s": round(t_cap, 3), "verify_s": round(t_ver, 3), "local_stages_s": round(t_local, 3),
           "listings_per_s": round(measured, 2), "ideal_listings_per_s": round(ideal, 2),
           "overhead": round(ideal / measured - 1, 4), "bare_http_listings_per_s": round(bare, 2),
           "overhead_vs_bare_http": round(bare / measured - 1, 4), "client_cpu_s": round(cpu, 3),
           "client_cpu_ms_per_request": round(1000 * cpu / (2 * n), 3), "load_average_1m": os.getloadavg()[0],
           "written": ver["fates"].get("written", 0)}
    print(json.dumps(out))
    print(f"{measured:.1f} listings/s vs the endpoint-bound ideal {ideal:.1f} (concurrency {args.concurrency} / "
          f"(2 x {args.latency} s)): overhead {100 * (ideal / measured - 1):.1f}% "
          f"(target < 5%); a bare aiohttp loop on this machine: {bare:.1f} (pipeline overhead over it "
          f"{100 * (bare / measured - 1):.1f}%); client CPU {1000 * cpu / (2 * n):.2f} ms per request; local "
          f"stages (ingest, clean, image) {t_local:.2f} s; load average {os.getloadavg()[0]:.1f} on "
          f"{os.cpu_count()} cores")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
