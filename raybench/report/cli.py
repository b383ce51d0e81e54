"""The ``report`` sub-command: ``raybench report STUDY_DIR [--out DIR]``.

:func:`add_report_parser` plugs it into the main ``raybench`` parser; :func:`main` runs it on
its own (``python -m raybench.report STUDY_DIR``).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from raybench.errors import RaybenchError

__all__ = ["add_report_parser", "main", "run_report"]


def run_report(args: argparse.Namespace) -> int:
    """Build the report described by parsed ``args``; print where it went; return 0."""
    from raybench.report.build import build_report
    from raybench.study.storage import StudyStorage

    storage = StudyStorage.from_setting(args.study_dir)
    storage.pull()  # a remote study: download what the report reads into its local copy
    path = build_report(storage.local, args.out, n_bootstrap=args.bootstrap,
                        n_permutations=args.permutations, seed=args.seed, dpi=args.dpi,
                        min_positives=args.min_positives)
    if args.out is None:
        storage.push("report")
    print(f"wrote {path}" + (f" (and {storage.join('report')})"
                             if storage.remote and args.out is None else ""))
    return 0


def add_report_parser(subparsers) -> argparse.ArgumentParser:
    """Add ``report`` to an argparse sub-parsers object; sets ``func`` to :func:`run_report`."""
    parser = subparsers.add_parser(
        "report", help="markdown report (tables, figures, CSVs) of a finished study directory")
    parser.add_argument("study_dir", help="study directory (with trials.parquet): a path or a "
                        "URI such as s3://bucket/studies/name")
    parser.add_argument("--out", type=Path, default=None,
                        help="output directory (default: STUDY_DIR/report)")
    parser.add_argument("--bootstrap", type=int, default=1000,
                        help="bootstrap resamples for the CIs (default 1000)")
    parser.add_argument("--permutations", type=int, default=1000,
                        help="permutations for the paired tests (default 1000)")
    parser.add_argument("--seed", type=int, default=0, help="resampling seed (default 0)")
    parser.add_argument("--dpi", type=int, default=150, help="PNG resolution (default 150)")
    parser.add_argument("--min-positives", type=int, default=10,
                        help="flag (†) figures resting on fewer test samples of the rarer "
                             "class (default 10)")
    parser.set_defaults(func=run_report)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Stand-alone entry point: errors as one line on stderr, exit code 2."""
    parser = argparse.ArgumentParser(prog="raybench report")
    sub = parser.add_subparsers(dest="command")
    add_report_parser(sub)
    try:
        args = parser.parse_args(["report", *(sys.argv[1:] if argv is None else argv)])
        return args.func(args)
    except RaybenchError as exc:
        print(f"raybench: error: {exc}", file=sys.stderr)
        return 2
