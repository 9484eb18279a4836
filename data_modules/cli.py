"""`ecomvlm data ...`: synthetic data, mixtures, shards. Handlers import their dependencies lazily."""

from __future__ import annotations

import argparse
from pathlib import Path


def _synth(args: argparse.Namespace) -> int:
    from rich.console import Console
    from rich.progress import Progress
    from rich.table import Table

    from ecomvlm.data_modules.synth import SynthConfig, synthesize

    cfg = SynthConfig(out=Path(args.out), n=args.n, n_eval=args.n_eval, seed=args.seed,
                      image_size=args.image_size, max_images=args.max_images)
    with Progress(console=Console(stderr=True), transient=True) as progress:
        task = progress.add_task("drawing items", total=cfg.n + cfg.n_eval)
        manifest = synthesize(cfg, progress=lambda done, total: progress.update(task, completed=done))
    table = Table(title=f"synthetic e-commerce data -> {cfg.out}")
    table.add_column("file")
    table.add_column("records", justify="right")
    for name, count in manifest["records"].items():
        table.add_row(name, str(count))
    table.add_row("images/*.png", str(manifest["images"]))
    Console().print(table)
    return 0


def _shards(args: argparse.Namespace) -> int:
    from rich.console import Console
    from rich.progress import Progress

    from ecomvlm.data_modules.shards import ShardConfig, make_shards

    cfg = ShardConfig(inputs=[Path(p) for p in args.inputs], out=Path(args.out),
                      image_root=Path(args.image_root) if args.image_root else None,
                      samples_per_shard=args.samples_per_shard, workers=args.workers, seed=args.seed)
    console = Console(stderr=True)
    with Progress(console=console, transient=True) as progress:
        task = progress.add_task("writing shards", total=None)
        m = make_shards(cfg, progress=lambda d, t: progress.update(task, completed=d, total=t), console=console)
    print(f"{m['samples']} samples in {len(m['shards'])} shards ({m['bytes'] / 1e6:.1f} MB) -> {cfg.out}"
          f" [{m['resumed_shards']} shards already done]")
    if m["skipped"]:
        print("skipped: " + ", ".join(f"{k}={v}" for k, v in m["skipped"].items()) + f" (see {cfg.out}/manifest.json)")
    return 0


def _mixture(args: argparse.Namespace) -> int:
    from rich.console import Console

    from ecomvlm.data_modules.llava_json import SkipCounter, read_records
    from ecomvlm.data_modules.mixture import counts_table, load_mixture, resolve

    entries = load_mixture(args.mixture)
    skips = SkipCounter()
    totals = [len(read_records(e.json_path, skips)) for e in entries]
    Console().print(counts_table(resolve(entries, totals, args.seed)))
    if skips.total:
        print("unreadable records: " + ", ".join(f"{k}={v}" for k, v in skips.by_reason().items()))
    return 0


def register(sub) -> None:
    data = sub.add_parser("data", help="synthetic data, shards, mixtures")
    dsub = data.add_subparsers(dest="data_command", required=True, metavar="DATA_COMMAND")
    s = dsub.add_parser("synth", help="write a deterministic synthetic e-commerce dataset (docs/DATA_FORMAT.md)",
                        epilog="example:\n  ecomvlm data synth --out data/synth --n 200 --n-eval 50",
                        formatter_class=argparse.RawDescriptionHelpFormatter)
    s.add_argument("--out", required=True, help="output directory (created)")
    s.add_argument("--n", type=int, default=200, help="training items (default 200)")
    s.add_argument("--n-eval", type=int, default=50, help="held-out eval items (default 50)")
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--image-size", type=int, default=192, help="square image side in pixels (default 192)")
    s.add_argument("--max-images", type=int, default=6, help="images per item are drawn from 1..this (max 6)")
    s.set_defaults(func=_synth)
    sh = dsub.add_parser("shards", help="LLaVA JSON/JSONL or a mixture YAML -> WebDataset shards + manifest",
                         epilog="example:\n  ecomvlm data shards data/synth/train/stage3_instruct.json --out "
                                "shards/stage3 --image-root data/synth",
                         formatter_class=argparse.RawDescriptionHelpFormatter)
    sh.add_argument("inputs", nargs="+", help="mixture .yaml (paper A.6 format) and/or LLaVA .json/.jsonl files")
    sh.add_argument("--out", required=True, help="output folder for shard-NNNNNN.tar + manifest.json")
    sh.add_argument("--image-root", default=None, help="image paths are relative to this (default: the JSON's folder)")
    sh.add_argument("--samples-per-shard", type=int, default=1000)
    sh.add_argument("--workers", type=int, default=2, help="parallel shard writers (processes)")
    sh.add_argument("--seed", type=int, default=0, help="seed of random:N sampling")
    sh.set_defaults(func=_shards)
    mx = dsub.add_parser("mixture", help="resolve a mixture YAML and print the selected counts",
                         epilog="example:\n  ecomvlm data mixture mixtures/stage3.yaml --seed 0",
                         formatter_class=argparse.RawDescriptionHelpFormatter)
    mx.add_argument("mixture", help="mixture .yaml")
    mx.add_argument("--seed", type=int, default=0)
    mx.set_defaults(func=_mixture)
