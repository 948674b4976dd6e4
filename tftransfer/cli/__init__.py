"""The `tftransfer` command.

Subcommands: `run` (a whole job from a recipe file), `rank` (score a recipe
file's candidate backbones before training), `inspect` (what a
SavedModel or backbone holds), `backbones` (the catalogue), `predict` and
`evaluate` (use an exported model), `explain` (which words or image regions
made a run's or an export's prediction), `export` (repeat a run's export
from its checkpoint). Exit codes: 0 success, 2 bad usage or bad recipe file, 1 any
other failure. Errors are one readable paragraph, alone on stderr (the lines
TensorFlow's runtime writes while it starts are hidden); `--debug` shows the
traceback and TensorFlow's logs instead.

Example:

    tftransfer run recipes/default.yaml --set recipe.head_epochs=5
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import textwrap
from collections.abc import Sequence

from tftransfer.errors import ConfigError, TFTransferError

USAGE_ERROR = 2
FAILURE = 1
# Longest error message shown (`--debug` shows all of it).
MAX_MESSAGE = 2000


class _UsageError(Exception):
    """Raised by the argument parser instead of exiting."""


class _Parser(argparse.ArgumentParser):
    def error(self, message):
        raise _UsageError(f"{message}. Run `{self.prog} --help` for usage.")


def _parser() -> argparse.ArgumentParser:
    from tftransfer import __version__

    parser = _Parser(
        prog="tftransfer",
        description="Transfer learning with pretrained TF Hub, KerasHub and Keras models.",
    )
    parser.add_argument(
        "--version", action="version", version=f"tftransfer {__version__}"
    )
    parser.add_argument(
        "--debug", action="store_true", help="show tracebacks and TensorFlow logs"
    )
    commands = parser.add_subparsers(
        dest="command", required=True, parser_class=_Parser
    )

    run = commands.add_parser("run", help="run a whole job from a recipe file")
    run.add_argument("recipe", help="the YAML recipe file (see recipes/)")
    run.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a setting, e.g. --set recipe.head_epochs=5 (repeatable)",
    )
    run.add_argument(
        "--check", action="store_true", help="only validate the recipe file"
    )

    rank = commands.add_parser(
        "rank",
        help="score a recipe file's candidate backbones (layers, poolings) "
        "on its data, before training",
    )
    rank.add_argument("recipe", help="the YAML recipe file, with a `rank:` section")
    rank.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a setting, e.g. --set rank.examples=500 (repeatable)",
    )

    inspect = commands.add_parser("inspect", help="what a SavedModel or backbone holds")
    inspect.add_argument(
        "handle", help="SavedModel folder, catalogue name or backbone handle"
    )

    commands.add_parser(
        "backbones", help="the backbone catalogue, marking offline ones"
    )

    predict = commands.add_parser(
        "predict", help="classify files with an exported model"
    )
    predict.add_argument(
        "model_dir", help="exported version folder, or its base folder"
    )
    predict.add_argument(
        "files",
        nargs="+",
        help="image files, or text files for a text model; a folder stands for "
        "those in it and its sub-folders",
    )
    predict.add_argument("--top-k", type=int, default=3, help="classes shown per file")

    evaluate = commands.add_parser(
        "evaluate", help="evaluate an exported model on labelled data"
    )
    evaluate.add_argument(
        "model_dir", help="exported version folder, or its base folder"
    )
    evaluate.add_argument(
        "data",
        help="a folder with one sub-folder per class (images or .txt files), or a .csv / .jsonl file",
    )

    explain = commands.add_parser(
        "explain",
        help="which words or image regions made a model predict what it did",
    )
    explain.add_argument(
        "model",
        help="a run folder (runs/<name>), or an exported version folder or its "
        "base folder",
    )
    explain.add_argument(
        "files", nargs="+", help="image files, or text files for a text model"
    )
    explain.add_argument(
        "--method",
        default="integrated_gradients",
        help="integrated_gradients (default), grad_cam (images, run folders) "
        "or occlusion",
    )
    explain.add_argument(
        "--top-k", type=int, default=5, help="words or regions printed per file"
    )
    explain.add_argument(
        "--output",
        default="explanations",
        help="folder for explanations.html and its pictures (default: explanations)",
    )

    export = commands.add_parser(
        "export", help="repeat a run's export from its checkpoint"
    )
    export.add_argument("run_dir", nargs="?", help="the run folder (runs/<name>)")
    export.add_argument(
        "--tasks",
        nargs="+",
        metavar="RUN_DIR",
        help="export the models of these runs, all on one backbone, as one "
        "SavedModel: a signature per task (named after its run folder) and "
        "serving_default with every task; the backbone's weights stored once",
    )
    export.add_argument(
        "--base-path",
        help="with --tasks: the model's base path (default "
        "saved_models/<task>+<task>...)",
    )
    export.add_argument(
        "--retrain",
        action="store_true",
        help="train what the checkpoints do not hold (the data, recipe or "
        "checkpoints changed since the run) instead of refusing, then export",
    )
    return parser


def _read_data(path: str, model_dir: str):
    """Labelled data for `evaluate`, by the shape of `path`, read for the
    task of the export in `model_dir`: a file in the format the training run
    read is read with that run's options (its text and label columns, label
    separator); a regression's targets otherwise come from the columns named
    after the export's target names."""
    from tftransfer.cli import sources
    from tftransfer.cli.serving import export_data_reading, export_names, export_task
    from tftransfer.config import DataConfig

    if os.path.isdir(path):
        first = next((f for _, _, files in os.walk(path) for f in files), "")
        data_format = "text_folder" if first.endswith(".txt") else "image_folder"
    else:
        data_format = {".csv": "csv", ".jsonl": "jsonl"}.get(os.path.splitext(path)[1])
        if data_format is None:
            raise ConfigError(
                f"Cannot tell the format of {path}: expected a folder with one "
                "sub-folder per class, a .csv or a .jsonl file."
            )
    trained_format, trained_options = export_data_reading(model_dir)
    options = trained_options if trained_format == data_format else {}
    task = export_task(model_dir)
    if data_format in ("csv", "jsonl") and task != "classification":
        options["task"] = task
        if task == "regression":
            options.setdefault("label_column", export_names(model_dir))
    return sources.read(DataConfig(format=data_format, path=path, options=options))


def _start_tensorflow(debug: bool) -> None:
    """Imports TensorFlow, hiding what its runtime writes to stderr while it
    starts (oneDNN, CUDA stubs, absl's "All log messages before
    absl::InitializeLog()"): TF_CPP_MIN_LOG_LEVEL does not silence those.
    They are shown with `debug`, and when the import fails."""
    if debug or "tensorflow" in sys.modules:
        import tensorflow  # noqa: F401

        return
    sys.stderr.flush()
    stderr = os.dup(2)
    try:
        with tempfile.TemporaryFile() as captured:
            os.dup2(captured.fileno(), 2)
            try:
                import tensorflow  # noqa: F401
            except BaseException:
                sys.stderr.flush()
                os.dup2(stderr, 2)
                captured.seek(0)
                sys.stderr.write(captured.read().decode(errors="replace"))
                raise
            sys.stderr.flush()
    finally:
        os.dup2(stderr, 2)
        os.close(stderr)


def _dispatch(args: argparse.Namespace) -> int:
    """Runs the command; returns its exit code (errors raise).

    What can be checked without TensorFlow is checked before it starts.
    """
    if args.command == "run":
        from tftransfer import config
        from tftransfer.cli import run

        settings = config.load(args.recipe, args.overrides)
        if not args.check:
            run.check_run(settings)
        # The recipe options are checked against the recipe class.
        _start_tensorflow(args.debug)
        run.check_recipe(settings, args.recipe)
        if args.check:
            print(f"{args.recipe}: valid")
            return 0
        run.run(settings)
    elif args.command == "rank":
        from tftransfer import config
        from tftransfer.cli import ranking, sources

        settings = config.load(args.recipe, args.overrides)
        sources.check_path(settings.data)
        _start_tensorflow(args.debug)
        ranking.rank(settings, args.recipe)
    elif args.command == "export":
        from tftransfer.cli import run

        if bool(args.tasks) == bool(args.run_dir) or (
            args.retrain if args.tasks else args.base_path
        ):
            raise ConfigError(
                "Give one run folder (tftransfer export RUN_DIR [--retrain]), "
                "or the runs to serve together (tftransfer export --tasks "
                "RUN_DIR RUN_DIR ... [--base-path DIR]; they must have "
                "finished training)."
            )
        if args.tasks:
            checked = run.check_export_tasks(args.tasks, args.base_path)
            _start_tensorflow(args.debug)
            run.export_tasks(args.tasks, checked, args.base_path)
            return 0
        settings, record = run.check_export(args.run_dir, retrain=args.retrain)
        _start_tensorflow(args.debug)
        run.check_recipe(settings, os.path.join(args.run_dir, run.RECIPE_FILE))
        run.export_run(settings, args.run_dir, record)
    elif args.command == "predict":
        from tftransfer.cli import serving

        serving.find_export(args.model_dir)
        _start_tensorflow(args.debug)
        results = serving.predict(args.model_dir, args.files, top_k=args.top_k)
        failed = sum("error" in result for result in results)
        if failed:
            print(
                f"error: {failed} of {len(results)} files could not be classified "
                "(each is named above); the others were.",
                file=sys.stderr,
            )
            return FAILURE
    elif args.command == "explain":
        from tftransfer.cli import explain

        explain.check_model(args.model)
        _start_tensorflow(args.debug)
        explain.explain_files(
            args.model,
            args.files,
            method=args.method,
            top_k=args.top_k,
            output=args.output,
        )
    else:
        _start_tensorflow(args.debug)
        if args.command == "inspect":
            from tftransfer.cli.inspection import inspect

            inspect(args.handle)
        elif args.command == "backbones":
            from tftransfer.cli.inspection import backbones

            backbones()
        elif args.command == "evaluate":
            from tftransfer.cli.serving import evaluate

            evaluate(args.model_dir, _read_data(args.data, args.model_dir))
    return 0


def _paragraph(error: BaseException | str) -> str:
    text = " ".join(str(error).split()) or type(error).__name__
    if len(text) > MAX_MESSAGE:
        text = f"{text[:MAX_MESSAGE]}... ({len(text) - MAX_MESSAGE:,} more characters; --debug shows them)"
    return textwrap.fill(
        f"error: {text}",
        width=100,
        subsequent_indent="  ",
        break_long_words=False,
        break_on_hyphens=False,
    )


def main(argv: Sequence[str] | None = None) -> int:
    """Runs the `tftransfer` command; returns its exit code.

    Example:

    >>> main(["run", "recipes/default.yaml", "--check"])
    recipes/default.yaml: valid
    0
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in argv
    if not debug:
        os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    try:
        args = _parser().parse_args(argv)
        code = _dispatch(args)
    except (_UsageError, ConfigError) as error:
        if debug:
            raise
        print(_paragraph(error), file=sys.stderr)
        return USAGE_ERROR
    except Exception as error:
        if debug:
            raise
        if not isinstance(error, (TFTransferError, OSError)):
            error = f"{type(error).__name__}: {error}"
        print(_paragraph(error), file=sys.stderr)
        print("  (run with --debug for the traceback)", file=sys.stderr)
        return FAILURE
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    return code
