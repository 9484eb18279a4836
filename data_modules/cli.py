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
                      image_size=args.image_size, max_images=args.max_images, min_images=args.min_images)
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

    from ecomvlm.data_modules import shard_folder
    from ecomvlm.data_modules import shards as sh

    console = Console(stderr=True)
    if args.verify or args.upgrade:
        if args.inputs:
            raise SystemExit("--verify/--upgrade take the shard folder only (the inputs are in its manifest)")
    if args.upgrade:
        m = shard_folder.upgrade_shards(Path(args.upgrade))
        print(f"{args.upgrade}: {m['samples']} samples in {len(m['shards'])} shards indexed for energon; train on "
              f"it as it is (`ecomvlm data shards --verify {args.upgrade}` checks every tar)")
        return 0
    if args.verify:
        with Progress(console=console, transient=True) as progress:
            task = progress.add_task("verifying shards", total=None)
            report = shard_folder.verify_shards(Path(args.verify), rebuild=args.rebuild, workers=args.workers,
                                      progress=lambda d, t: progress.update(task, completed=d, total=t))
        for name, problem in report["bad"].items():
            print(f"bad shard {name}: {problem}")
        if report["rebuilt"]:
            still = report.get("still_bad", {})
            print(f"rebuilt {len(report['rebuilt'])} shards from the recorded inputs"
                  + (f"; still bad: {still}" if still else ""))
            return 1 if still else 0
        print(f"{report['shards']} shards checked, {len(report['bad'])} bad"
              + (f" (re-write them: `ecomvlm data shards --verify {args.verify} --rebuild`)" if report["bad"] else ""))
        return 1 if report["bad"] else 0
    if not args.inputs or not args.out:
        raise SystemExit("ecomvlm data shards: give INPUTS and --out (or --verify DIR / --upgrade DIR)")
    rule = None
    if args.resize_for:
        rule = sh.resize_rule_for(args.resize_for)
    if args.max_side or args.max_pixels:
        base = rule or sh.ResizeRule()
        rule = sh.ResizeRule(short_side=base.short_side, max_side=args.max_side or base.max_side,
                             max_pixels=args.max_pixels or base.max_pixels, encoder=base.encoder)
    cfg = sh.ShardConfig(inputs=[Path(p) for p in args.inputs], out=Path(args.out),
                         image_root=Path(args.image_root) if args.image_root else None,
                         samples_per_shard=args.samples_per_shard, workers=args.workers, seed=args.seed,
                         data_root=Path(args.data_root) if args.data_root else None, resize=rule, rebuild=args.rebuild)
    with Progress(console=console, transient=True) as progress:
        task = progress.add_task("writing shards", total=None)
        m = sh.make_shards(cfg, progress=lambda d, t: progress.update(task, completed=d, total=t), console=console)
    print(f"{m['samples']} samples in {len(m['shards'])} shards ({m['bytes'] / 1e6:.1f} MB) -> {cfg.out}"
          f" [{m['resumed_shards']} shards already done]")
    if rule:
        print(f"images stored at training resolution ({sh.describe_rule(rule)}): {m['resized_images']} resized")
    if m["skipped"]:
        print("skipped: " + ", ".join(f"{k}={v}" for k, v in m["skipped"].items()) + f" (see {cfg.out}/manifest.json)")
    return 0


def _mixture(args: argparse.Namespace) -> int:
    from rich.console import Console

    from ecomvlm.data_modules.llava_json import SkipCounter
    from ecomvlm.data_modules.llava_ov import count_source
    from ecomvlm.data_modules.mixture import counts_table, load_mixture, resolve, source_names

    entries = load_mixture(args.mixture, root=args.data_root)
    skips = SkipCounter()
    totals = [count_source(e.json_path, skips, name) for e, name in zip(entries, source_names(entries))]
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
    s.add_argument("--max-images", type=int, default=6,
                   help="images per item are drawn from --min-images..this (max 6)")
    s.add_argument("--min-images", type=int, default=1, help="the fewest images an item has (front, back, ...)")
    s.set_defaults(func=_synth)
    sh = dsub.add_parser("shards", help="LLaVA JSON/JSONL, LLaVA-OneVision parquet or a mixture YAML -> energon-ready "
                                        "WebDataset shards + manifest; --verify / --upgrade a shard folder",
                         epilog="examples:\n  ecomvlm data shards data/synth/train/stage3_instruct.json --out "
                                "shards/stage3 --image-root data/synth\n"
                                "  ecomvlm data shards data/synth/train/stage3_instruct.json --out shards/stage3_384 "
                                "--image-root data/synth --resize-for siglip2_qwen3_8b\n"
                                "  ecomvlm data shards --verify shards/stage3",
                         formatter_class=argparse.RawDescriptionHelpFormatter)
    sh.add_argument("inputs", nargs="*", help="mixture .yaml (paper A.6 format), LLaVA .json/.jsonl files, "
                                              "LLaVA-OneVision parquet files or folders")
    sh.add_argument("--out", help="output folder for shard-NNNNNN.tar + energon index + manifest.json")
    sh.add_argument("--data-root", default=None, help="mixture json_path entries are relative to this folder "
                                                      "(default: the YAML's folder)")
    sh.add_argument("--rebuild", action="store_true", help="replace shards of other inputs/settings in --out; with "
                                                           "--verify: re-write the bad shards")
    sh.add_argument("--verify", metavar="DIR", help="re-read every shard of DIR against its recorded sha256 and count")
    sh.add_argument("--upgrade", metavar="DIR",
                    help="index a shard folder of an older ecomvlm for energon (keeps its tars)")
    sh.add_argument("--resize-for", metavar="MODEL", help="store images at the resolution this model config's "
                                                          "encoder uses (conf/model/MODEL.yaml)")
    sh.add_argument("--max-side", type=int, default=None, help="shrink images whose longer side exceeds this")
    sh.add_argument("--max-pixels", type=int, default=None, help="shrink images with more pixels than this")
    sh.add_argument("--image-root", default=None, help="image paths are relative to this (default: the JSON's folder)")
    sh.add_argument("--samples-per-shard", type=int, default=1000)
    sh.add_argument("--workers", type=int, default=2, help="parallel shard writers (processes)")
    sh.add_argument("--seed", type=int, default=0, help="seed of random:N sampling")
    sh.set_defaults(func=_shards)
    mx = dsub.add_parser("mixture", help="resolve a mixture YAML and print the selected counts",
                         epilog="example:\n  ecomvlm data mixture mixtures/stage3.yaml --seed 0",
                         formatter_class=argparse.RawDescriptionHelpFormatter)
    mx.add_argument("mixture", help="mixture .yaml")
    mx.add_argument("--data-root", default=None, help="json_path entries are relative to this folder (a local copy "
                                                      "of the data; default: the YAML's folder)")
    mx.add_argument("--seed", type=int, default=0)
    mx.set_defaults(func=_mixture)

    from ecomvlm.data_modules.curation.cli import register as register_curation
    from ecomvlm.data_modules.item_intel.cli import register as register_item_intel

    register_item_intel(dsub)
    register_curation(dsub)
