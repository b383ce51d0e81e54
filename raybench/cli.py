"""The ``raybench`` command line: one sub-command per stage.

Library code raises :class:`raybench.errors.RaybenchError` for bad input; ``main`` turns it
into one line on stderr and exit code 2, never a traceback.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from raybench.disk import disk_full_message
from raybench.errors import RaybenchError, StudyIncomplete


class _Parser(argparse.ArgumentParser):
    """argparse with one-line errors (no usage dump) and exit code 2."""

    def error(self, message: str) -> None:  # noqa: D102 - argparse hook
        raise RaybenchError(f"{self.prog}: {message} (see {self.prog} --help)")


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text}")
    return value


_positive_int.__name__ = "positive integer"  # argparse names the type in its error message


def _cmd_synth(args: argparse.Namespace) -> int:
    from preprocessing.synth.generator import SynthConfig, generate
    from raybench.progress import progress_bar

    config = SynthConfig(out=args.out, patients=args.patients, seed=args.seed,
                         image_size=args.image_size)
    with progress_bar() as progress:
        manifest = generate(config, progress=progress)
    counts = ", ".join(f"{k} {v}" for k, v in manifest["counts"].items())
    print(f"wrote synthetic MIMIC to {args.out} in {manifest['seconds']:.1f} s: {counts}")
    return 0


def _cmd_preprocess(args: argparse.Namespace) -> int:
    from preprocessing.pipeline import run_preprocess

    run_preprocess(mimic_iv=args.mimic_iv, mimic_cxr=args.mimic_cxr, out=args.out,
                   config_path=args.config)
    return 0


def _cmd_train(args: argparse.Namespace) -> int:
    from raybench.train_cli import run_train

    run_train(args.task, args.method, args.data, args.set or [], args.output)
    return 0


def _cmd_study(args: argparse.Namespace) -> int:
    from raybench.study.runner import run_study

    storage = run_study(args.file, args.set or [], report=not args.no_report)
    print(f"study directory: {storage.describe()}")
    if not args.no_report:
        print(f"report: {storage.local / 'report' / 'report.md'}")
    return 0


def _cmd_validate(args: argparse.Namespace) -> int:
    from raybench.study.config import expand_experiments, load_study, search_space_for
    from raybench.study.estimate import estimate_study
    from raybench.study.storage import StudyStorage

    study = load_study(args.file, args.set or [])
    experiments = expand_experiments(study)
    unsearched = [m for m in study.methods if not search_space_for(study, m)]
    note = (f" (not searched, one configuration: {', '.join(unsearched)})"
            if unsearched and study.search.type != "fixed" else "")
    ssl = ""
    if study.ssl is not None:
        from raybench.study.searchers import planned_configurations
        from raybench.study.ssl_plan import is_ssl_method, pretrain_space

        downstream = sum(1 for e in experiments if is_ssl_method(e.method))
        runs = sum(planned_configurations(study.ssl.pretrain_search,
                                          pretrain_space(study, m)) for m in study.ssl.methods)
        ssl = (f"; ssl: {runs * len(study.seeds)} pretraining runs ({runs} configurations x "
               f"{len(study.seeds)} seeds), {downstream} of the experiments downstream "
               "(<method>/<evaluation>/<modality>)")
    print(f"{args.file}: valid; {len(experiments)} experiments "
          f"({len(study.tasks)} tasks x {len(study.cohorts)} cohorts x "
          f"{len(study.methods)} methods x {len(study.robustness.cxr_missing_ratios)} "
          f"missing ratios, less the per-method restrictions), {len(study.seeds)} seeds per "
          f"configuration, search "
          f"{study.search.type}{note}{ssl}")
    storage = StudyStorage.from_setting(study.storage)
    try:
        estimate = estimate_study(study, storage)
    except OSError:  # an unreachable study URI: estimate without its measurements
        estimate = estimate_study(study)
    for line in estimate.lines():
        print(line)
    return 0


def build_parser() -> argparse.ArgumentParser:
    """The argument parser with all sub-commands."""
    parser = _Parser(prog="raybench", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    synth = sub.add_parser("synth", help="write a synthetic MIMIC-IV + MIMIC-CXR-JPG tree")
    synth.add_argument("--out", type=Path, required=True, help="output directory")
    synth.add_argument("--patients", type=_positive_int, default=200, help="number of patients")
    synth.add_argument("--seed", type=int, default=0, help="random seed (same seed, same bytes)")
    synth.add_argument("--image-size", type=_positive_int, default=512,
                       help="JPEG width in px (height is 1.2x); 2500 for full-size images")
    synth.set_defaults(func=_cmd_synth)

    prep = sub.add_parser("preprocess", help="raw MIMIC -> prepared Parquet dataset")
    prep.add_argument("--mimic-iv", type=Path, required=True, help="MIMIC-IV root (hosp/, icu/)")
    prep.add_argument("--mimic-cxr", type=Path, required=True, help="MIMIC-CXR-JPG root")
    prep.add_argument("--out", type=Path, required=True, help="prepared dataset directory")
    prep.add_argument("--config", type=Path, default=None, help="preprocessing YAML (optional)")
    prep.set_defaults(func=_cmd_preprocess)

    train = sub.add_parser("train", help="train one method on one task (local debug run)")
    train.add_argument("--task", required=True, help="task name (see docs/preprocessing.md)")
    train.add_argument("--method", required=True, help="registered method name")
    train.add_argument("--data", type=Path, required=True, help="prepared dataset directory")
    train.add_argument("--set", action="append", metavar="KEY=VALUE",
                       help="override a model, trainer or loader setting (repeatable)")
    train.add_argument("--output", type=Path, default=None,
                       help="write metrics.json and predictions.parquet here")
    train.set_defaults(func=_cmd_train)

    study = sub.add_parser("study", help="run (or resume) a study: search, seeds, report")
    study.add_argument("file", type=Path, help="study YAML (see studies/ and docs/studies.md)")
    study.add_argument("--set", action="append", metavar="KEY=VALUE",
                       help="override a study field, e.g. search.n_calls=4 (repeatable)")
    study.add_argument("--no-report", action="store_true", help="skip the final report")
    study.set_defaults(func=_cmd_study)

    validate = sub.add_parser("validate", help="check a study YAML without running it")
    validate.add_argument("file", type=Path, help="study YAML")
    validate.add_argument("--set", action="append", metavar="KEY=VALUE",
                          help="override a study field (repeatable)")
    validate.set_defaults(func=_cmd_validate)

    from raybench.report.cli import add_report_parser

    add_report_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``raybench`` console script."""
    try:
        args = build_parser().parse_args(argv)
        return args.func(args)
    except StudyIncomplete as exc:
        print(f"raybench: {exc}", file=sys.stderr)
        return 130
    except RaybenchError as exc:
        print(f"raybench: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("raybench: interrupted", file=sys.stderr)
        return 130
    except OSError as exc:
        message = disk_full_message(exc, exc.filename)
        if message is None:
            raise
        print(f"raybench: error: {message}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
