"""The ``gristmill`` command."""

from __future__ import annotations

import argparse
import errno
import logging
import os
import sys
from collections.abc import Sequence

from gristmill._version import __version__
from gristmill.errors import GristmillError
from gristmill.options import (
    BOOL,
    STRING_TABLE,
    ConvertOptions,
    DatasetOptions,
    Options,
    PrepareOptions,
    described,
    name_value,
)
from gristmill.plugin.overlong import POLICIES as OVERLONG_POLICIES
from gristmill.plugin.remote import redacted

EPILOG = """\
examples:
  gristmill prepare sample:stdlib-qa -o data/stdlib-qa --tokenizer byte
  gristmill prepare 'corpus/*.jsonl' -o data/corpus --val-fraction 0.01
  gristmill prepare --config run.toml --workers 8
  gristmill convert data.csv -o data.jsonl
  gristmill inspect data/stdlib-qa --decode 3
  gristmill inspect data/stdlib-qa --seq-len 512,2048 --plot stdlib-qa.png
  gristmill verify data/stdlib-qa
  gristmill inspect s3://bucket/stdlib-qa --storage-option anon=true
  gristmill plugins --all
  gristmill presets

Source specs: files, globs and directories (.jsonl .json .csv .tsv .parquet, also .gz/.zst), or
prefixed specs: sample:stdlib, hub:ORG/NAME, preset:NAME. Tokenizer specs: byte,
hf:NAME_OR_DIR, PATH/tokenizer.json, or what plugins add.
"""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="gristmill",
        description="Turn raw training data into exactly packed, resumable PyTorch batches.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"gristmill {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for add in (_prepare_parser, _convert_parser, _inspect_parser, _verify_parser):
        add(sub)
    for add in (_export_parser, _presets_parser, _plugins_parser):
        add(sub)
    return parser


def add_options(parser: argparse.ArgumentParser, options: type[Options]) -> None:
    """A flag for every option of ``options`` that has one (see :class:`gristmill.options.Flag`).
    The parser leaves out what is not given (``argument_default=SUPPRESS``), so the defaults
    that apply, and that the help states, are the API's."""
    for f, spec in described(options):
        flag = spec.flag
        if flag is None:
            continue
        help = flag.help.replace("{default}", str(f.default))
        name = flag.name or "--" + f.name.replace("_", "-")
        if spec.kind is BOOL:
            action = "store_true" if f.default is False else argparse.BooleanOptionalAction
            parser.add_argument(name, dest=f.name, action=action, help=help)
            continue
        parser.add_argument(
            name,
            dest=f.name,
            action="append" if flag.repeat else "store",
            type=flag.read or spec.kind.read or str,
            choices=spec.kind.choices or None,
            metavar=flag.metavar,
            help=help,
        )


def _prepare_parser(sub: argparse._SubParsersAction) -> None:
    # Options left out are left out of the call too (SUPPRESS), so that gristmill.prepare's
    # defaults apply, and so that `--config FILE` can tell the options given from the others.
    p = sub.add_parser(
        "prepare",
        help="tokenize sources into a dataset directory of memmap shards",
        description="Read sources, map their fields, tokenize, and write shards plus a manifest "
        "(written last, so an interrupted run never looks complete). The input is cut into "
        "tasks run by parallel workers. Running the same command again finishes an interrupted "
        "run, redoing only unfinished tasks, and does nothing on a finished dataset. With "
        "--config FILE, the file's [prepare] section gives the settings (the same names, with _ "
        "for -), and the options given here override them.",
        argument_default=argparse.SUPPRESS,
    )
    p.add_argument(
        "sources",
        nargs="*",
        metavar="SOURCE",
        help="file, glob, directory or spec (required unless the --config file has sources)",
    )
    p.add_argument(
        "-o",
        "--output",
        metavar="DIR",
        help="dataset directory, or a URL (s3://BUCKET/PREFIX, gs://…) to prepare in a local "
        "scratch directory and upload to, the manifest last (required unless the --config file "
        "has output)",
    )
    p.add_argument(
        "--config",
        metavar="FILE",
        help="a .toml or .yaml config file: its [prepare] section, under the options given here "
        "(docs/configuration.md)",
    )
    add_options(p, PrepareOptions)


def _convert_parser(sub: argparse._SubParsersAction) -> None:
    c = sub.add_parser(
        "convert",
        help="write any readable source as one plain .jsonl or .parquet file",
        description="Read sources, map their fields exactly as prepare does, and write the "
        "canonical records ({text} | {prompt, completion, system} | {messages}) to one file, "
        "which appears only when complete.",
        argument_default=argparse.SUPPRESS,
    )
    c.add_argument("sources", nargs="+", metavar="SOURCE", help="file, glob, directory or spec")
    c.add_argument("-o", "--output", required=True, metavar="OUT", help="OUT.jsonl or OUT.parquet")
    add_options(c, ConvertOptions)


def _inspect_parser(sub: argparse._SubParsersAction) -> None:
    i = sub.add_parser(
        "inspect",
        help="counts, length histogram and decoded samples of a dataset",
        description="Summarise a prepared dataset: documents, tokens and loss tokens per split, "
        "a histogram of document lengths, packing efficiency per packer (with the samples "
        "that would carry no loss), and decoded documents with the tokens that carry no loss "
        "shown between ⟦ and ⟧.",
    )
    i.add_argument("directory", metavar="DIR", help=DATASET_HELP)
    i.add_argument("--decode", type=int, default=2, metavar="N", help="decode N documents (2)")
    i.add_argument("--split", default=None, help="decode from this split (default: train)")
    i.add_argument(
        "--seq-len",
        default="2048",
        metavar="N,...",
        help="show packing efficiency of every packer at these sample lengths (default: 2048)",
    )
    i.add_argument(
        "--overlong",
        choices=OVERLONG_POLICIES,
        default="truncate",
        help="what packers do with documents longer than the sample length: keep the first "
        "seq_len tokens, or the last, cut them into seq_len pieces, or drop them "
        "(default: truncate)",
    )
    i.add_argument("--json", action="store_true", help="print one JSON object instead")
    i.add_argument(
        "--plot",
        metavar="FILE.png",
        help="also draw the document length histogram and the packing efficiency per packer "
        "and --seq-len to FILE.png (needs matplotlib: pip install 'gristmill[plot]')",
    )
    _add_remote(i, cache_limit=True)


def _verify_parser(sub: argparse._SubParsersAction) -> None:
    v = sub.add_parser(
        "verify",
        help="check a dataset's files against its manifest; exit 1 on any problem",
        description="Check the manifest against its own seal and counts, then read every file "
        "it lists (the tokenizer's too) and check it: inside the dataset "
        "directory, present, of its size and SHA-256, and (for memmap shards) offsets that "
        "start at 0, never decrease and end at the token count, token ids below the "
        "vocabulary size, and masks of 0s and 1s adding up to the loss tokens. Prints each "
        "problem with the file and element index, and any file in a split's directory or "
        "tokenizer/ that the manifest does not list; exits 0 when there is none, 1 otherwise. "
        "A dataset at a URL is fetched whole into its mirror first (each object checked as it "
        "lands: one that is not as the manifest lists it, or not there, is a problem), then "
        "checked there; a GRISTMILL_REMOTE_CACHE_LIMIT below the dataset's size is refused.",
    )
    v.add_argument("directory", metavar="DIR", help=DATASET_HELP)
    v.add_argument("--json", action="store_true", help="print one JSON object instead")
    _add_progress(v)
    _add_remote(v, cache_limit=False)


DATASET_HELP = (
    "dataset directory, or its URL (s3://BUCKET/PREFIX, gs://…, https://…), read through a "
    "local mirror in gristmill's cache folder"
)


def _add_remote(parser: argparse.ArgumentParser, *, cache_limit: bool) -> None:
    """``--storage-option`` (spelt and read as prepare's) and ``--cache-limit``: how a dataset
    at a URL is read. A local directory refuses them (``serve.dataset.where``)."""
    parser.add_argument(
        "--storage-option",
        dest="storage_options",
        action="append",
        type=name_value,
        metavar="NAME=VALUE",
        help="with a URL: an option of its filesystem (fsspec's), e.g. anon=true or "
        'client_kwargs={"endpoint_url": "http://HOST:9000"}; VALUE is read as JSON where it '
        "is JSON, else as text; repeat for several",
    )
    if cache_limit:
        parser.add_argument(
            "--cache-limit",
            type=int,
            metavar="BYTES",
            help="with a URL: bytes of the dataset kept in its mirror (default: "
            "GRISTMILL_REMOTE_CACHE_LIMIT, else no limit)",
        )


def _remote(args: argparse.Namespace) -> DatasetOptions:
    """The options that say how the dataset at a URL is read, checked as the API checks them."""
    return DatasetOptions(
        storage_options=args.storage_options, cache_limit=getattr(args, "cache_limit", None)
    )


def _add_progress(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--progress",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="show a progress bar (default: only on a terminal)",
    )


def _export_parser(sub: argparse._SubParsersAction) -> None:
    e = sub.add_parser(
        "export",
        help="write a prepared dataset in another project's format (an exporter plugin)",
        description="Write a prepared dataset for a trainer that reads another format, with an "
        "exporter plugin (e.g. `pip install gristmill-megatron` for Megatron-LM's .bin/.idx; "
        "`gristmill plugins` lists the installed ones). OUT appears only when every split is "
        "written, with export.json recording the exporter and the dataset's fingerprint.",
    )
    e.add_argument("directory", metavar="DIR", help=DATASET_HELP)
    e.add_argument("--to", required=True, metavar="NAME", help="exporter, e.g. megatron")
    e.add_argument("-o", "--output", required=True, metavar="OUT", help="output directory")
    e.add_argument(
        "--split",
        action="append",
        metavar="NAME",
        help="export this split; repeat for several (default: every split)",
    )
    e.add_argument(
        "--option",
        action="append",
        type=name_value,
        metavar="NAME=VALUE",
        help="an option of the exporter (`gristmill plugins --all` lists them); VALUE is read "
        "as JSON where it is JSON (true, 8, [1, 2]), else as text; repeat for several",
    )
    e.add_argument("--overwrite", action="store_true", help="replace an earlier export in OUT")
    _add_progress(e)
    _add_remote(e, cache_limit=True)


def _presets_parser(sub: argparse._SubParsersAction) -> None:
    pr = sub.add_parser(
        "presets",
        help="list named datasets (use them as preset:NAME)",
        description="List the presets plugins provide: where each dataset lives, its default "
        "tokenizer and whether it is streamed. Prepare one with "
        "`gristmill prepare preset:NAME -o DIR`.",
    )
    pr.add_argument("--json", action="store_true", help="print JSON instead of a table")


def _plugins_parser(sub: argparse._SubParsersAction) -> None:
    pl = sub.add_parser(
        "plugins",
        help="list installed plugins and the components they provide",
        description="List plugins found in the 'gristmill' entry-point group. Exits 1 when a "
        "plugin failed to load or two plugins register the same name. Block plugins with "
        "GRISTMILL_DISABLE_PLUGINS=a,b or allow only some with GRISTMILL_PLUGINS=a,b.",
    )
    pl.add_argument(
        "--all", action="store_true", help="also blocked plugins, and describe each component"
    )
    pl.add_argument("--json", action="store_true", help="print JSON instead of a table")


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(message)s"))
    log = logging.getLogger("gristmill")
    log.addHandler(handler)
    log.setLevel(logging.INFO)
    try:
        return _run(args)
    except GristmillError as exc:
        print(f"gristmill: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("gristmill: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # `gristmill inspect DIR | head`: the reader has what it wanted
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except OSError as exc:  # the system refused a read or a write: name the file, say what to do
        print(f"gristmill: error: {_describe_os_error(exc)}", file=sys.stderr)
        return 2
    finally:
        log.removeHandler(handler)


def _run(args: argparse.Namespace) -> int:
    """The command ``args`` names; its exit status."""
    if args.command == "prepare":
        return _prepare(args)
    if args.command == "convert":
        return _convert(args)
    if args.command == "inspect":
        from gristmill.cli.report import inspect_dataset

        return inspect_dataset(
            args.directory,
            decode=args.decode,
            split=args.split,
            seq_lens=_numbers(args.seq_len, "--seq-len"),
            overlong=args.overlong,
            as_json=args.json,
            plot=args.plot,
            remote=_remote(args),
        )
    if args.command == "verify":
        from gristmill.cli.report import verify_dataset

        return verify_dataset(
            args.directory, as_json=args.json, progress=args.progress, remote=_remote(args)
        )
    if args.command == "export":
        from gristmill.serve.export import export

        remote = _remote(args)
        out = export(
            args.directory,
            args.output,
            to=args.to,
            splits=args.split,
            options=dict(args.option or ()),
            overwrite=args.overwrite,
            progress=args.progress,
            storage_options=remote.storage_options,
            cache_limit=remote.cache_limit,
        )
        print(f"exported {redacted(args.directory)} to {out} ({args.to})")
        return 0
    if args.command == "presets":
        from gristmill.cli.report import list_presets

        return list_presets(as_json=args.json)
    from gristmill.cli.report import list_plugins

    return list_plugins(show_all=args.all, as_json=args.json)


# What to do about the operating system errors a run meets for want of a right or of room.
OS_ADVICE = {
    errno.EACCES: "permission denied; check the permissions of it and of the directories above "
    "it (this user must be able to read the input and write the output)",
    errno.EPERM: "operation not permitted; check the permissions of it and of the directories "
    "above it",
    errno.ENOSPC: "no space left on device; free some space, or write the output to a disk "
    "with room (-o)",
    errno.EDQUOT: "disk quota exceeded; free some space, or write the output elsewhere (-o)",
    errno.EFBIG: "file too large (a file size limit, ulimit -f); raise the limit (for prepare, "
    "or lower --tokens-per-shard)",
    errno.EROFS: "read-only file system; write the output elsewhere (-o)",
}


def _describe_os_error(exc: OSError) -> str:
    """``PATH: what went wrong; what to do`` for an error the operating system raised."""
    what = OS_ADVICE.get(exc.errno or 0) or (exc.strerror or str(exc)).lower()
    return f"{exc.filename}: {what}" if exc.filename is not None else what


def _numbers(text: str, option: str) -> list[int]:
    try:
        return [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise GristmillError(f"{option} takes comma-separated numbers, got {text!r}") from None


def _given(args: argparse.Namespace, options: type[Options]) -> dict[str, object]:
    """The options given on the command line (the parsers leave out the others), under the
    names of the API's keyword arguments and config keys."""
    from gristmill.ingest.mapping import parse_fields

    given = {k: v for k, v in vars(args).items() if k not in ("command", "config")}
    # A table of strings is spelt NAME=VALUE,...; read here rather than by the parser, so that a
    # mistake is reported as every other one is (exit 2, "gristmill: error: ...").
    for f, spec in described(options):
        if f.name in given and spec.kind is STRING_TABLE:
            given[f.name] = parse_fields(given[f.name])
    if not given.get("sources", True):
        del given["sources"]  # SOURCE... is optional with --config
    return given


def _convert(args: argparse.Namespace) -> int:
    from gristmill.store.convert import convert

    given = _given(args, ConvertOptions)
    convert(given.pop("sources"), given.pop("output"), **given)
    return 0


def _prepare(args: argparse.Namespace) -> int:
    given = _given(args, PrepareOptions)
    # --ray-address implies --executor ray, and makes no sense with another.
    if "executor_options" in given and given.setdefault("executor", "ray") != "ray":
        raise GristmillError(f"--ray-address needs --executor ray, not {given['executor']}")
    config = getattr(args, "config", None)
    if config is not None:
        from gristmill.config import COMMAND_LINE, load

        load(config, {"prepare": given}, origin=COMMAND_LINE).prepare()
        return 0
    if "sources" not in given or "output" not in given:
        raise GristmillError(
            "prepare needs SOURCE... and -o DIR, on the command line or in the [prepare] "
            "section of a --config FILE"
        )
    from gristmill.store.prepare import prepare

    prepare(given.pop("sources"), given.pop("output"), **given)
    return 0
