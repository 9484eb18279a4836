"""`ecomvlm` — the one door: train, data, eval, export, launch, demo, recipes, info.

Each room registers its own subcommands (data_modules/cli.py, recipes/cli.py, eval/cli.py, launcher/cli.py);
handlers import their heavy dependencies (torch, megatron) lazily, so `ecomvlm --help` and the data tools start in
well under a second. User errors (bad flags, missing files, impossible configs) print one line and exit 2;
ECOMVLM_DEBUG=1 shows the traceback.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from ecomvlm import __version__


def _demo(args: argparse.Namespace) -> int:
    from ecomvlm.demo import run_demo

    return run_demo(Path(args.workdir), quick=args.quick)


def _recipes(_args: argparse.Namespace) -> int:
    """Every named recipe (with its header line), model, cluster and config group option."""
    import importlib.resources as res

    conf = Path(str(res.files("ecomvlm.conf")))
    print("recipes (ecomvlm train NAME ...):")
    for p in sorted(conf.glob("*.yaml")):
        print(f"  {p.stem:<44} {p.read_text().splitlines()[0].lstrip('# ')[:80]}")
    for group in ("model", "model/encoder", "model/decoder", "hf_model", "parallel", "precision", "recipe", "peft"):
        names = sorted(p.stem for p in (conf / group).glob("*.yaml"))
        print(f"{group} ({group}=NAME): {', '.join(names)}")
    clusters = sorted(p.stem for p in (conf / "cluster").glob("*.yaml"))
    print(f"clusters (ecomvlm launch RECIPE --cluster NAME): {', '.join(clusters)}")
    return 0


def _info(_args: argparse.Namespace) -> int:
    import importlib.metadata as md
    import platform

    import torch

    from ecomvlm.recipes.models.decoders.gpt import te_available

    rows = {"ecomvlm": __version__, "python": platform.python_version(), "torch": torch.__version__,
            "cuda available": torch.cuda.is_available(), "gpus": torch.cuda.device_count(),
            "transformer engine usable": te_available()}
    for dist in ("megatron-core", "nemo_toolkit", "lightning", "hydra-core", "transformers", "webdataset"):
        try:
            rows[dist] = md.version(dist)
        except md.PackageNotFoundError:
            rows[dist] = "not installed"
    width = max(map(len, rows))
    for k, v in rows.items():
        print(f"{k:<{width}}  {v}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    from ecomvlm.data_modules import cli as data_cli
    from ecomvlm.eval import cli as eval_cli
    from ecomvlm.launcher import cli as launch_cli
    from ecomvlm.recipes import cli as recipes_cli

    p = argparse.ArgumentParser(prog="ecomvlm", description=__doc__.split("\n")[0])
    p.add_argument("--version", action="version", version=f"ecomvlm {__version__}")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")
    data_cli.register(sub)
    recipes_cli.register(sub)
    launch_cli.register(sub)
    eval_cli.register(sub)
    d = sub.add_parser("demo", help="the main job on CPU: everything that exists, end to end",
                       epilog="example:\n  ecomvlm demo --workdir demo_out",
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    d.add_argument("--workdir", default="demo_out", help="where the demo writes (default ./demo_out)")
    d.add_argument("--quick", action="store_true", help="smaller data and fewer steps (used by tests)")
    d.set_defaults(func=_demo)
    sub.add_parser("recipes", help="list recipes, models, clusters and config group options").set_defaults(
        func=_recipes)
    sub.add_parser("info", help="versions, CUDA/TE availability").set_defaults(func=_info)
    return p


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    extra: list[str] = []
    if "--" in argv:  # `ecomvlm launch RECIPE --cluster X -- key=value ...`: everything after -- is an override
        i = argv.index("--")
        argv, extra = argv[:i], argv[i + 1:]
    parser = build_parser()
    args, unknown = parser.parse_known_args(argv)
    if unknown:  # overrides given after an option (`train RECIPE --nproc 8 key=value`): argparse leaves them over
        if not hasattr(args, "overrides") or any(u.startswith("-") for u in unknown):
            parser.error(f"unrecognized arguments: {' '.join(unknown)}")
        args.overrides = [*args.overrides, *unknown]
    if extra:
        if not hasattr(args, "overrides"):
            print(f"ecomvlm {args.command}: takes no overrides after --", file=sys.stderr)
            return 2
        args.overrides = [*args.overrides, *extra]
    try:
        return int(args.func(args) or 0)
    except Exception as e:  # user errors: one clear line, no traceback (ECOMVLM_DEBUG=1 shows it)
        user_error = isinstance(e, (ValueError, OSError, KeyError, NotImplementedError)) or \
            type(e).__module__.split(".")[0] in ("hydra", "omegaconf")
        if os.environ.get("ECOMVLM_DEBUG") or not user_error:
            raise
        print(f"ecomvlm: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
