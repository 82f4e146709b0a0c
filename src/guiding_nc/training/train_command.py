"""Command line: ``python -m guiding_nc.train CONFIG [key=value ...] [--quick] [--resume]``.

Examples::

    python -m guiding_nc.train configs/ufm10.yaml                      # 3 methods x 5 seeds
    python -m guiding_nc.train ufm10 --quick                           # CI-sized
    python -m guiding_nc.train cifar10_resnet18 methods=[implicit] seeds=[0] epochs=50
    python -m guiding_nc.train digits_mlp method=fixed seed=3 device=cpu progress=false
    torchrun --nproc_per_node 4 -m guiding_nc.train imagenet_resnet50  # DDP, one GPU per rank

``CONFIG`` is a YAML path or a name in ``configs/``; overrides are ``key=value`` with YAML
values (``seeds=[0,1]``, ``lr=0.1``, ``amp=true``).  Unknown keys are an error that lists
the valid ones.  Exit status: 0 on success, 2 for a bad configuration, 3 when training
stopped on a non-finite loss, 4 when a dataset is missing.
"""
from __future__ import annotations

import argparse
import sys
from typing import List, Optional

from .config import TrainConfig, load_config
from .seed_sweep import run_seeds


def build_parser() -> argparse.ArgumentParser:
    from .command_line import OneLineParser

    p = OneLineParser(
        prog="python -m guiding_nc.train",
        description="Train standard / fixed-ETF / implicit-ETF classifiers (Guiding Neural Collapse).",
        epilog="Valid config keys: " + ", ".join(TrainConfig.valid_keys()),
    )
    p.add_argument("config", nargs="?", default=None, help="YAML config path or name in configs/")
    p.add_argument("overrides", nargs="*", help="key=value overrides (values parsed as YAML)")
    p.add_argument("--config", dest="config_opt", default=None, help="same as the positional CONFIG")
    p.add_argument("--quick", action="store_true", help="shrink epochs/sizes/seeds for a smoke test")
    p.add_argument("--resume", action="store_true", help="continue from the run directory's checkpoint")
    p.add_argument("--no-progress", action="store_true", help="disable progress bars")
    p.add_argument("--download", action="store_true", help="let torchvision download missing datasets")
    p.add_argument("--device", default=None, help="auto, cpu, cuda, cuda:1, ...")
    p.add_argument("--output-dir", default=None, help="root directory of the run directories")
    p.add_argument("--print-config", action="store_true", help="print the resolved config and exit")
    return p


def main(argv: Optional[List[str]] = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    args = parser.parse_intermixed_args(argv)
    overrides = list(args.overrides)
    if args.config is not None and "=" in str(args.config):
        overrides.insert(0, args.config)  # no positional config file, only overrides
        args.config = None
    if args.config_opt is not None and args.config is not None:
        parser.error(f"two configs given, {args.config!r} and --config {args.config_opt!r}; give one")
    source = args.config_opt or args.config
    extra = []
    if args.quick:
        extra.append("quick=true")
    if args.resume:
        extra.append("resume=true")
    if args.no_progress:
        extra.append("progress=false")
    if args.download:
        extra.append("download=true")
    if args.device:
        extra.append(f"device={args.device}")
    if args.output_dir:
        extra.append(f"output_dir={args.output_dir}")
    def run(_argv) -> int:
        cfg = load_config(source, overrides + extra)
        if args.print_config:
            import yaml

            resolved = cfg.apply_quick()
            resolved.override_keys = cfg.override_keys
            resolved.validate()  # the settings printed are settings that run
            print(yaml.safe_dump(resolved.to_dict(), sort_keys=False))
            return 0
        run_seeds(cfg, argv=[sys.executable, "-m", "guiding_nc.train", *argv])
        return 0

    from .command_line import run_cli

    try:
        return run_cli(run)
    finally:
        try:
            import torch.distributed as dist

            if dist.is_available() and dist.is_initialized():
                dist.destroy_process_group()
        except Exception:  # pragma: no cover - best effort at exit
            pass

if __name__ == "__main__":
    sys.exit(main())
