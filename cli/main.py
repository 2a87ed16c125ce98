"""The `hashtagkit` command: prepare a store, fit a head, evaluate it, inspect a store.

Errors a user can fix (missing file, bad value, existing output) are one line on stderr and
exit status 2; anything else is a bug and keeps its traceback (HASHTAGKIT_DEBUG=1 shows the
traceback of user errors too). Ctrl-C exits 130 and SIGTERM 143, each with one line, after
the hidden temporaries of the interrupted write are removed.
"""

from __future__ import annotations

import errno
import json
import math
import os
import re
import signal
import sys
from pathlib import Path

import click

from hashtagkit import __version__, remote
from hashtagkit.choices import (
    DECODE_MODES,
    DEVICES,
    FEATURE_DTYPES,
    HEAD_NAMES,
    PRECISIONS,
    RERANKS,
    SPLITS,
    TAGS_FROM,
    THRESHOLDS,
    VIEWS,
)
from hashtagkit.errors import InputError


class UserError(click.ClickException):
    """An InputError as click shows it: `Error: <message>`, exit 2."""

    exit_code = 2


class OneLineUsage(click.UsageError):
    """A bad option or argument as one line, with where to look, instead of click's three."""

    def __init__(self, error: click.UsageError):
        super().__init__(_first_line(error.format_message()), error.ctx)

    def show(self, file=None) -> None:
        hint = f" (see '{self.ctx.command_path} --help')" if self.ctx is not None else ""
        click.echo(f"Error: {self.format_message()}{hint}", err=True)


class Stopped(click.ClickException):
    """Ctrl-C (exit 130) or SIGTERM (exit 143): one line, no traceback, no 'Aborted!'."""

    def __init__(self, message: str, exit_code: int):
        super().__init__(message)
        self.exit_code = exit_code


class Terminated(BaseException):
    """SIGTERM turned into an exception, so `finally` blocks remove half-written outputs.
    A BaseException, like KeyboardInterrupt, so no `except Exception` swallows it."""


MAIN_PID = os.getpid()


def _on_sigterm(signum, frame) -> None:
    if os.getpid() != MAIN_PID:  # a forked worker inherited this handler: die as by default
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        os.kill(os.getpid(), signal.SIGTERM)
        return
    from hashtagkit.outputs import request_stop

    request_stop(signum)  # remembered: if this exception is swallowed, the next commit point raises
    raise Terminated()


def _on_sigint(signum, frame) -> None:
    from hashtagkit.outputs import request_stop

    request_stop(signum)
    signal.default_int_handler(signum, frame)


NOTHING_LEFT = "outputs are written whole or not at all, so nothing half-written was left"
RESOURCES = NOTHING_LEFT + ": free some, or ask for less, and run the same command again"

STOPPED = {signal.SIGINT: ("interrupted (Ctrl-C)", 130), signal.SIGTERM: ("terminated (SIGTERM)", 143)}


def _stopped(signum: int, after: bool = False) -> Stopped:
    _quiet_abandoned_tasks()
    what, code = STOPPED.get(signum, STOPPED[signal.SIGTERM])
    tail = "the command had already finished (its output is complete)" if after else "half-written output was removed"
    return Stopped(f"{what}; {tail}", code)


def _quiet_abandoned_tasks() -> None:
    """zarr's I/O tasks abandoned by an interruption would each log 'Task was destroyed but
    it is pending!' at exit, burying the one line that says what happened; interrupted while
    zarr starts its event loop, Python also reports a coroutine never awaited and the half-made
    loop's `__del__` failing. None of it is news to a user who pressed Ctrl-C: silenced."""
    import logging
    import warnings

    logging.getLogger("asyncio").setLevel(logging.CRITICAL)
    warnings.filterwarnings("ignore", message="coroutine .* was never awaited", category=RuntimeWarning)
    sys.unraisablehook = lambda unraisable: None


def debugging() -> bool:
    return os.environ.get("HASHTAGKIT_DEBUG", "") not in ("", "0")


def _first_line(message: str) -> str:
    lines = [line for line in str(message).splitlines() if line.strip()]
    return lines[0] if lines else "invalid input"


FLAGS = {"top_m": "--rerank-m", "smoothing": "--rerank-smoothing"}  # library names the options do not carry


def _flag(param: str, command: click.Command | None = None) -> str:
    """The option of `command` that sets library parameter `param` (the CLI's options carry the
    library's names), else a known alias (`FLAGS`), else `--param-name`."""
    for p in command.params if command is not None else ():
        if isinstance(p, click.Option) and p.name == param:
            return max(p.opts, key=len)
    return FLAGS.get(param) or "--" + param.replace("_", "-")


class Command(click.Command):
    """A command whose library errors name its own options: an InputError about parameter
    `dtype` reads `--dtype ...` here, `dtype ...` to a Python caller."""

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except InputError as e:
            if not hasattr(e, "flag_of"):  # the innermost command names the flags
                e.flag_of = lambda name: _flag(name, self)
            raise
        except Exception as e:  # an object store's fault past every retry (a Zarr read or write)
            gone = None if debugging() else remote.escaped(e)
            if gone is None:
                raise
            raise gone from e


class Group(click.Group):
    """Turns a user's mistake into one line and exit 2, and an interruption into one line."""

    command_class = Command
    group_class = type  # subgroups (`prepare`) are Groups too

    def invoke(self, ctx: click.Context):
        from hashtagkit.outputs import StopRequested, stop_requested

        try:
            result = super().invoke(ctx)
        except StopRequested as e:
            raise _stopped(e.signum) from None
        except InputError as e:
            if debugging():
                raise
            raise UserError(_first_line(e.naming(getattr(e, "flag_of", None) or _flag))) from None
        except click.UsageError as e:
            if isinstance(e, OneLineUsage):
                raise
            raise OneLineUsage(e) from None
        except MemoryError:
            raise Stopped("out of memory; " + RESOURCES, 1) from None
        except OSError as e:
            if debugging() or e.errno not in (errno.ENOSPC, errno.EDQUOT, errno.EACCES, errno.EPERM, errno.EROFS):
                raise
            where = f" ({os.fsdecode(e.filename)})" if e.filename else ""
            if e.errno in (errno.ENOSPC, errno.EDQUOT):
                raise Stopped(f"no space left on the device{where}; " + RESOURCES, 1) from None
            raise Stopped(f"cannot access{where}: {e.strerror}; {NOTHING_LEFT}", 1) from None
        except ValueError as e:  # a chunk whose checksum fails: damage on disk, found on read
            if "checksum do not match" not in str(e) or debugging():
                raise
            raise Stopped("a chunk of the store does not decode (its checksum does not match: damaged on disk); run "
                          "`hashtagkit info --verify STORE` to find it", 1) from None
        except RuntimeError as e:  # torch's allocator says it in a RuntimeError
            if not re.search(r"can't allocate memory|out of memory", str(e)) or debugging():
                raise
            tried = re.search(r"allocate (\d+) bytes", str(e))
            size = f" (an allocation of {int(tried.group(1)) / 2**30:,.1f} GiB)" if tried else ""
            raise Stopped(f"out of memory{size}; " + RESOURCES, 1) from None
        except KeyboardInterrupt:
            raise _stopped(signal.SIGINT) from None
        except Terminated:
            raise _stopped(signal.SIGTERM) from None
        if (signum := stop_requested()) is not None:  # its exception was swallowed, no commit point came after
            raise _stopped(signum, after=True)
        return result


class OutputPath(click.Path):
    """An output path (-o): a path that names a file or folder, so `-o ''` or `-o ..` is a
    one-line usage error, not a traceback from whatever first takes its name."""

    def convert(self, value, param, ctx):
        path = super().convert(value, param, ctx)
        raw = os.fsdecode(value)
        if not raw.strip() or os.path.basename(raw.rstrip(os.sep)) in ("", ".", ".."):
            self.fail(f"{raw!r} names no file or folder to create", param, ctx)
        return path


class Location(click.ParamType):
    """A store, photo folder or output that may live in object storage: a URL (s3://bucket/h.zarr,
    gs://..., file://...) stays a string, anything else is a local Path (as click.Path gives)."""

    name = "path"

    def __init__(self, output: bool = False):
        self.output = output

    def convert(self, value, param, ctx):
        if isinstance(value, Path):
            return value
        raw = os.fsdecode(value)
        if remote.is_remote(raw):
            scheme, _, rest = raw.partition("://")
            if not rest.strip("/"):
                self.fail(f"{raw!r} names no bucket or object", param, ctx)
            return raw.rstrip("/")
        if self.output and (not raw.strip() or os.path.basename(raw.rstrip(os.sep)) in ("", ".", "..")):
            self.fail(f"{raw!r} names no file or folder to create", param, ctx)
        return remote.local_path(raw)


STORE = Location()
OUTPUT_STORE = Location(output=True)


def _storage_options(ctx: click.Context, param: click.Parameter, values: tuple[str, ...]) -> None:
    """`--storage-option KEY=VALUE` (repeatable), over HASHTAGKIT_STORAGE_OPTIONS: the options
    every URL of this command is opened with (never printed, never recorded)."""
    if not values:
        return
    try:
        options = remote.storage_options() | dict(remote.parse_option(v) for v in values)
    except InputError as e:
        raise click.BadParameter(e.naming(lambda name: "--storage-option"), ctx, param) from None
    remote.use_storage_options(options)


class FiniteFloat(click.ParamType):
    """A finite float in [min, max]: `nan` and `inf` are refused like any other bad number."""

    name = "float"

    def __init__(self, min: float | None = None, max: float | None = None, min_open: bool = False):
        self.min, self.max, self.min_open = min, max, min_open

    def convert(self, value, param, ctx):
        try:
            number = float(value)
        except (TypeError, ValueError):
            self.fail(f"{value!r} is not a number", param, ctx)
        if not math.isfinite(number):
            self.fail(f"{value!r} is not a finite number", param, ctx)
        low_bad = self.min is not None and (number <= self.min if self.min_open else number < self.min)
        if low_bad or (self.max is not None and number > self.max):
            low = "" if self.min is None else f"{'>' if self.min_open else '>='} {self.min}"
            high = "" if self.max is None else f"<= {self.max}"
            self.fail(f"{value!r} must be {' and '.join(x for x in (low, high) if x)}", param, ctx)
        return number


SEED_MAX = 2**32 - 1  # numpy's limit for a seed
SEED = click.IntRange(0, SEED_MAX)


def parse_seed(text: str, option: str = "--seed") -> int:
    """A seed from a list option (bench --seeds): the same range as SEED."""
    try:
        seed = int(text)
    except ValueError:
        raise UserError(f"{option} takes integers, got {text!r}") from None
    if not 0 <= seed <= SEED_MAX:
        raise UserError(f"{option}: {seed} is not in 0..{SEED_MAX}")
    return seed


class SplitSize(click.ParamType):
    """A split size: below 1 a fraction of the rows (`0.1`), from 1 up a whole row count
    (`5000`, `5000.0`); `10.5`, negatives, `nan` and `inf` are refused."""

    name = "count|fraction"

    def convert(self, value, param, ctx):
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            number = float(value)
        else:
            try:
                number = float(str(value).strip())
            except ValueError:
                self.fail(f"{value!r} is neither a row count nor a fraction", param, ctx)
        from hashtagkit.data.split import size_problem

        problem = size_problem(number)
        if problem == "range":
            self.fail(f"{value!r} must be a row count >= 0 or a fraction below 1", param, ctx)
        if problem == "whole":
            self.fail(f"{value!r}: from 1 up a size is a whole row count; a fraction is below 1", param, ctx)
        return int(number) if number >= 1 or number == 0 else number


def echo_err(message: str) -> None:
    click.echo(message, err=True)


@click.group(cls=Group, context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(__version__, prog_name="hashtagkit")
@click.option("--storage-option", "storage_options", multiple=True, metavar="KEY=VALUE", expose_value=False,
              callback=_storage_options, is_eager=True,
              help="An option for stores and photos at URLs (s3fs: endpoint_url=..., anon=true, profile=...), "
                   "over the JSON object in HASHTAGKIT_STORAGE_OPTIONS; credentials otherwise come from the "
                   "backend's own environment and profiles. Never printed nor recorded. Repeatable; before the "
                   "command: `hashtagkit --storage-option endpoint_url=http://127.0.0.1:9000 info s3://b/h.zarr`.")
def cli() -> None:
    """Recommend hashtags for photos (the HARRISON benchmark and your own data).

    \b
    The steps hand over one store (a Zarr folder):
      hashtagkit prepare harrison|posts|demo ... -o STORE   labels, vocabulary, split
      hashtagkit extract STORE                                image features (VGG-16 object + scene)
      hashtagkit fit STORE --head mlp|knn|... -o RUN          fit a head on the train split
                                                              heads: mlp, knn, ovr, tagprop, fusion, popularity
      hashtagkit evaluate RUN                                 P@K, R@K, A@K, mAP on the test split
      hashtagkit bench STORE -o DIR                           every head x view x seed, Table-1 style
      hashtagkit recommend RUN IMAGE...                       top hashtags for new photos
      hashtagkit info STORE                                   what a store holds and how it was made
      hashtagkit upgrade STORE                                a store of an older format to the current one
      hashtagkit serve RUN                                    a JSON API and an upload page

    A STORE (and --images) may be a URL: s3://bucket/harrison.zarr, gs://..., az://... (see
    --storage-option for endpoints and credentials).
    """


# --- prepare ---------------------------------------------------------------------------------
def split_options(default_test: str):
    def wrap(f):
        f = click.option("--overwrite", is_flag=True, help="Replace STORE if it exists (the old one is kept until the new one is complete).")(f)
        f = click.option("--seed", default=0, show_default=True, type=SEED, help="Seed of the random split.")(f)
        f = click.option("--val-size", default="0", show_default=True, type=SplitSize(), help="Validation rows: a count or a fraction.")(f)
        f = click.option("--test-size", default=default_test, show_default=True, type=SplitSize(), help="Test rows: a count or a fraction.")(f)
        f = click.option("-o", "--out", "out", required=True, type=OUTPUT_STORE, help="The store to create (a folder, e.g. harrison.zarr, or a URL, s3://bucket/harrison.zarr).")(f)
        return f

    return wrap


class LazyBar:
    """A progress bar that appears with the first progress, not before: a call that refuses its
    input first (an existing output, a bad path) prints its one line and nothing else."""

    def __init__(self, **options) -> None:
        self.options, self.bar = options, None

    def __call__(self, k: int) -> None:
        if self.bar is None:
            from tqdm import tqdm

            self.bar = tqdm(leave=False, **self.options)
        self.bar.update(k)

    def __enter__(self) -> LazyBar:
        return self

    def __exit__(self, *exc) -> None:
        if self.bar is not None:
            self.bar.close()


def said_written(store, out: Path, what: str) -> None:
    """The line every `prepare` ends with."""
    counts = store.split_info["counts"]
    echo_err(f"wrote {out}: {what}; train {counts['train']:,} / test {counts['test']:,} / val {counts['val']:,} "
             f"(seed {store.split_info.get('seed')})")


@cli.group(cls=Group)
def prepare() -> None:
    """Create a store from a dataset: paths, multi-hot labels, vocabulary, seeded split."""


@prepare.command("harrison")
@click.argument("root", type=click.Path(path_type=Path))
@split_options("5000")
def prepare_harrison(root: Path, out: Path, test_size, val_size, seed: int, overwrite: bool) -> None:
    """From the HARRISON label files in ROOT (or ROOT/HARRISON).

    Reads data_list.txt, tag_list.txt and vocab_index.txt; the paper's split is a random
    52,383 train / 5,000 test, drawn here from --seed. Image paths are kept relative to the
    folder holding data_list.txt.
    """
    from hashtagkit import prepare

    store = prepare.harrison(root, out, test_size=test_size, val_size=val_size, seed=seed, overwrite=overwrite)
    said_written(store, out, f"{store.n_rows:,} images, {store.n_classes:,} classes")


@prepare.command("posts")
@click.argument("posts", type=click.Path(path_type=Path))
@click.option("--images", required=True, type=STORE,
              help="Folder (or URL prefix, s3://bucket/photos) the posts' image paths are relative to (it must exist).")
@click.option("--vocab-size", default=1000, show_default=True, type=click.IntRange(min=1), help="Classes kept: the most frequent hashtags.")
@click.option("--min-tags", default=1, show_default=True, type=click.IntRange(min=0), help="Drop posts left with fewer hashtags.")
@click.option("--max-tags", default=10, show_default=True, type=click.IntRange(min=0), help="Drop posts left with more hashtags (likely commercial).")
@click.option("--lemmatize/--no-lemmatize", default=True, show_default=True, help="Lemmatise with WordNet (nouns): #friends -> #friend.")
@split_options("0.1")
def prepare_posts(posts: Path, images: Path, vocab_size: int, min_tags: int, max_tags: int, lemmatize: bool,
                  out: Path, test_size, val_size, seed: int, overwrite: bool) -> None:
    """From raw posts, with the paper's hashtag cleaning (section 2.2).

    POSTS is JSON Lines, one post a line:
    {"image": "rel/path.jpg", "hashtags": ["#LOVE", "walks"]} ('#' optional).
    Counts are printed after each cleaning step.
    """
    from hashtagkit import prepare

    store = prepare.posts(posts, images, out, vocab_size=vocab_size, min_tags=min_tags, max_tags=max_tags,
                          lemmatize=lemmatize, test_size=test_size, val_size=val_size, seed=seed, overwrite=overwrite,
                          log=echo_err)
    said_written(store, out, f"{store.n_rows:,} images, {store.n_classes:,} classes")


@prepare.command("webdataset")
@click.argument("shards", nargs=-1, required=True)
@click.option("--tags-from", type=click.Choice(TAGS_FROM), default="auto", show_default=True,
              help="Where a sample's hashtags are: its json member's 'hashtags' list, the #tags of its txt "
                   "caption, or auto (json when the sample has one with 'hashtags', else txt).")
@click.option("--vocab-size", default=1000, show_default=True, type=click.IntRange(min=1), help="Classes kept: the most frequent hashtags.")
@click.option("--min-tags", default=1, show_default=True, type=click.IntRange(min=0), help="Drop samples left with fewer hashtags.")
@click.option("--max-tags", default=10, show_default=True, type=click.IntRange(min=0), help="Drop samples left with more hashtags (likely commercial).")
@click.option("--lemmatize/--no-lemmatize", default=True, show_default=True, help="Lemmatise with WordNet (nouns): #friends -> #friend.")
@split_options("0.1")
def prepare_webdataset(shards: tuple[str, ...], tags_from: str, vocab_size: int, min_tags: int, max_tags: int,
                       lemmatize: bool, out, test_size, val_size, seed: int, overwrite: bool) -> None:
    """From webdataset tar shards, with the paper's hashtag cleaning (section 2.2).

    SHARDS are tar files or URLs, brace-expanded ('shards/{00000..00099}.tar',
    's3://bucket/laion/{00000..09999}.tar'; quote them so the shell leaves the braces alone). A
    sample is the members sharing a key (000123.jpg, 000123.json, 000123.txt); its photo is the
    jpg, jpeg, png or webp member. Each shard is read once and never unpacked: the store keeps
    each photo's byte range in its shard, and `extract` reads those bytes in place. Shards'
    sizes and ETags (sha256 for local files) are recorded; a resume refuses shards that changed.
    """
    from hashtagkit import prepare

    store = prepare.webdataset(list(shards), out, tags_from=tags_from, vocab_size=vocab_size, min_tags=min_tags,
                               max_tags=max_tags, lemmatize=lemmatize, test_size=test_size, val_size=val_size,
                               seed=seed, overwrite=overwrite, log=echo_err)
    said_written(store, out, f"{store.n_rows:,} images, {store.n_classes:,} classes")


@prepare.command("demo")
@split_options("0.2")
@click.option("--n", default=2000, show_default=True, type=click.IntRange(min=10, max=10_000_000),
              help="Number of images to draw.")
@click.option("--images", type=click.Path(path_type=Path, file_okay=False),
              help="Where to write the JPEGs [default: beside the store, <STORE>_images].")
def prepare_demo(out: Path, test_size, val_size, seed: int, overwrite: bool, n: int, images: Path | None) -> None:
    """Synthetic photo-like scenes whose hashtags follow what is drawn (labelled synthetic).

    Skies, seas, beaches, fields, snow and cities, with suns, moons, clouds and coloured
    objects, plus hashtags with no visual signal (#love ...) on a long tail. Deterministic
    by --seed.
    """
    from hashtagkit import prepare

    with LazyBar(total=n, desc="drawing", unit="img") as bar:
        store = prepare.demo(out, n=n, seed=seed, images=images, test_size=test_size, val_size=val_size,
                             overwrite=overwrite, progress=bar)
    said_written(store, out, f"{store.n_rows:,} images, {store.n_classes:,} classes")


@prepare.command("planted")
@click.option("-o", "--out", "out", required=True, type=OUTPUT_STORE, help="The store to create (a folder or a URL).")
@click.option("--labels", type=click.Path(path_type=Path),
              help="HARRISON label files (ROOT or ROOT/HARRISON) to take the label matrix from [default: Zipf-shaped].")
@click.option("--n", type=click.IntRange(min=10, max=2_000_000),
              help="Rows to keep (a seeded random subset) [default: all, 57,383; at most 2,000,000].")
@click.option("--classes", default=997, show_default=True, type=click.IntRange(min=3, max=20_000),
              help="Vocabulary size of the Zipf-shaped labels (ignored with --labels).")
@click.option("--dim", default=4096, show_default=True, type=click.IntRange(min=8, max=65_536), help="Columns per block.")
@click.option("--strength", default=0.7, show_default=True, type=FiniteFloat(min=0, max=1e3), help="Signal against unit noise.")
@click.option("--test-size", default=None, type=SplitSize(), help="Test rows [default: 5,000, or 20% below 25,000 rows].")
@click.option("--val-size", default="0", show_default=True, type=SplitSize())
@click.option("--seed", default=0, show_default=True, type=SEED, help="Seed of the split and of the features.")
@click.option("--overwrite", is_flag=True, help="Replace STORE if it exists.")
def prepare_planted(out: Path, labels: Path | None, n: int | None, classes: int, dim: int, strength: float, test_size,
                    val_size, seed: int, overwrite: bool) -> None:
    """A synthetic feature store with a known answer, for comparing heads at HARRISON's size.

    Labels are HARRISON's (with --labels) or Zipf-shaped; classes with id % 3 == 1 show in the
    object block, id % 3 == 2 in the scene block, id % 3 == 0 (like #love) nowhere. Features
    are non-negative and half zero, like fc7. Every head and command runs on it unchanged.
    """
    from hashtagkit import prepare
    from hashtagkit.data.planted import HARRISON_ROWS

    with LazyBar(total=n or HARRISON_ROWS, unit="row", desc="generating") as bar:
        store = prepare.planted(out, labels=labels, n=n, classes=classes, dim=dim, strength=strength,
                                test_size=test_size, val_size=val_size, seed=seed, overwrite=overwrite, progress=bar)
    said_written(store, out, f"{store.n_rows:,} rows x {2 * dim:,} planted features, {store.n_classes:,} classes")


# --- fit / evaluate ----------------------------------------------------------------------------
class _NotFinite(ValueError):
    pass


def _finite_float(text: str) -> float:
    number = float(text)
    if not math.isfinite(number):
        raise _NotFinite(text)
    return number


def _no_constant(text: str):
    raise _NotFinite(text)


def parse_sets(pairs: tuple[str, ...]) -> dict:
    """`key=value` pairs; values are JSON where they parse (numbers, true/false, null), else
    text. NaN, Infinity and numbers too large for a float are refused: no hyper-parameter
    means anything with them, and they used to reach the heads unnoticed."""
    params = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            raise UserError(f"--set takes key=value, got {pair!r}")
        try:
            params[key] = json.loads(value, parse_float=_finite_float, parse_constant=_no_constant)
        except _NotFinite:
            raise UserError(f"--set {key}={value}: not a finite number") from None
        except (json.JSONDecodeError, RecursionError):
            params[key] = value
    return params


class FitCommand(Command):
    """`fit`, whose help lists each head's parameters from the heads' own `param_spec`
    (imported only when the help is shown: the heads pull in torch)."""

    def format_epilog(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        from hashtagkit.heads import params_help

        with formatter.section("Hyper-parameters (--set KEY=VALUE; null means the default named)"):
            for line in params_help():
                formatter.write(f"{'':>{formatter.current_indent}}{line}\n")
        super().format_epilog(ctx, formatter)


def postprocess_options(command):
    """--rerank, --rerank-m, --rerank-smoothing and --threshold of `fit` and `bench`: chosen on
    validation rows after the head is fitted and kept in the run (hashtagkit/postprocess.py)."""
    for option in reversed([
        click.option("--rerank", default="none", show_default=True, type=click.Choice(RERANKS),
                     help="cooc: re-rank the head's scores by training-label co-occurrence, its strength chosen on "
                          "validation rows (0 if it does not help); evaluate, recommend and serve apply it."),
        click.option("--rerank-m", default=5, show_default=True, type=click.IntRange(min=1, max=1000),
                     help="cooc: how many top-scored hashtags vote for their companions."),
        click.option("--rerank-smoothing", default=10.0, show_default=True, type=FiniteFloat(min=0, max=1e9),
                     help="cooc: P(j|i) is shrunk towards P(j) as if this many more photos had hashtag i."),
        click.option("--threshold", "threshold", default="none", show_default=True,
                     type=click.Choice(THRESHOLDS),
                     help="Choose score thresholds with the best F1 on validation rows (one for all hashtags, or one "
                          "each): `recommend --threshold` then returns a variable number of hashtags and evaluate "
                          "reports F1 at them."),
    ]):
        command = option(command)
    return command


def postprocess_choice(rerank: str, rerank_m: int, rerank_smoothing: float, threshold: str):
    from hashtagkit.postprocess import Options

    return Options(rerank=rerank, top_m=rerank_m, smoothing=rerank_smoothing, threshold=threshold)


@cli.command(cls=FitCommand)
@click.argument("store", type=STORE)
@click.option("--head", "head_name", required=True, type=click.Choice(HEAD_NAMES),
              help="mlp: the paper's two-layer MLP; knn: FAISS label transfer; ovr: one-vs-rest linear (scikit-learn); "
                   "popularity: the floor; tagprop: kNN with learned weights and per-tag sigmoids (TagProp); "
                   "fusion: a weighted blend of other heads (default mlp + knn).")
@click.option("--features", "view", default="both", show_default=True, type=click.Choice(VIEWS),
              help="Feature view; a single view zero-pads the other block, as the paper does.")
@click.option("--set", "sets", multiple=True, metavar="KEY=VALUE", help="A head hyper-parameter (repeatable).")
@click.option("--seed", default=0, show_default=True, type=SEED, help="Seed for everything random in fitting.")
@click.option("-o", "--out", required=True, type=OutputPath(path_type=Path), help="The run directory to create.")
@click.option("--overwrite", is_flag=True, help="Replace RUN if it exists.")
@postprocess_options
def fit(store: Path, head_name: str, view: str, sets: tuple[str, ...], seed: int, out: Path, overwrite: bool,
        rerank: str, rerank_m: int, rerank_smoothing: float, threshold: str) -> None:
    """Fit a head on the train split of STORE and save it as a run directory.

    --seed sets random_state for the heads that have one. Integer parameters take integers
    only (not true/false, not 3.0); a value out of range is an error naming what is allowed.

    --rerank cooc / --threshold are chosen after fitting, on validation rows (the store's val split,
    else the rows the MLP held out, else held-out training chunks scored by a copy of the head
    fitted without them), and kept in RUN for evaluate, recommend and serve.

    Several processes or GPUs train one MLP under torchrun (DDP; batch_size is the global batch):
    torchrun --standalone --nproc_per_node=K -m hashtagkit.cli fit STORE --head mlp ...
    """
    from hashtagkit.outputs import refuse_existing
    from hashtagkit.runs import fit

    refuse_existing(out, overwrite, kind="run", inputs=[store])
    from hashtagkit import ddp

    options = postprocess_choice(rerank, rerank_m, rerank_smoothing, threshold)
    run = fit(store, head_name, out, params=parse_sets(sets), view=view, seed=seed, overwrite=overwrite,
              postprocess=options)
    if not ddp.from_env().writer:
        return  # under torchrun only rank 0 speaks (and writes)
    record = run.record
    echo_err(f"fitted {record.head} on {record.n_train:,} rows in {record.fit_seconds:.2f}s -> {out}")
    joined = (record.fit_report or {}).get("feature_blocks")
    if joined:
        from hashtagkit.heads.blocks import BlockCombiner

        echo_err(f"joined the {view} view's blocks: {BlockCombiner.from_dict(joined).describe()}")
    post = record.postprocess
    if post:
        chosen = [f"re-ranking strength {post['rerank']['alpha']:g}"] if post.get("rerank") else []
        if post.get("threshold"):
            t = post["threshold"]
            chosen.append(f"{t['kind']} threshold (validation F1 micro {100 * t['val_f1_micro']:.2f}%, "
                          f"{t['val_tags_per_image']:.2f} hashtags per image)")
        echo_err(f"chose {' and '.join(chosen)} on {post['validation']['rows']:,} validation rows "
                 f"({post['validation']['source']})")


def parse_ks(text: str) -> tuple[int, ...]:
    try:
        ks = tuple(int(k) for k in text.split(",") if k.strip())
    except ValueError:
        raise UserError(f"--k takes comma-separated positive integers, got {text!r}") from None
    if not ks or min(ks) < 1:
        raise UserError(f"--k takes comma-separated positive integers, got {text!r}")
    return ks


@cli.command()
@click.argument("run", type=click.Path(path_type=Path))
@click.option("--split", default="test", show_default=True, type=click.Choice(SPLITS))
@click.option("--k", "ks", default="1,5,10", show_default=True,
              help="Cut-offs K (P@1, R@5, A@5 always included); a K above the vocabulary size is computed at it, "
                   "labelled so.")
@click.option("--store", type=STORE, help="Read this store instead of the run's (same split required).")
@click.option("--json", "as_json", is_flag=True, help="Print the metrics as JSON.")
@click.option("--batch-size", default=4096, show_default=True, type=click.IntRange(min=1, max=1_000_000),
              help="Rows scored at once: memory is about this many rows of features and scores, whatever the split's size.")
@click.option("--raw", is_flag=True,
              help="Score the head alone: without the run's co-occurrence re-ranking and thresholds (no F1).")
def evaluate(run: Path, split: str, ks: str, store: Path | None, as_json: bool, batch_size: int, raw: bool) -> None:
    """Score a run on a split of its store: Precision@K, Recall@K, Accuracy@K, mAP.

    The split is read chunk by chunk and scored --batch-size rows at a time (per-class mAP
    needs a second pass: from kept scores when they are small, else scored again), so a split
    of any size is evaluated in the memory of --batch-size rows. A run fitted with --rerank is
    scored re-ranked; one fitted with --threshold adds micro/macro F1 of the hashtags its
    thresholds return and how many they return per image."""
    from hashtagkit.evaluation import evaluate

    result = evaluate(run, split=split, ks=parse_ks(ks), store_path=store, batch_size=batch_size, raw=raw)
    click.echo(json.dumps(result.as_dict(), indent=2) if as_json else result.table())


def run_model_options(command):
    """--device, --precision and --weights of the commands that rebuild a run's models
    (`recommend`, `serve`)."""
    for option in reversed([
        click.option("--device", default="auto", show_default=True, type=click.Choice(DEVICES)),
        click.option("--precision", default="auto", show_default=True,
                     type=click.Choice(PRECISIONS),
                     help="auto: the precision the store was extracted with, where this device supports it."),
        click.option("--weights", "weights", multiple=True, metavar="BACKBONE=PATH",
                     help="Where a backbone's weights are now, if moved (checked against the recorded sha256)."),
    ]):
        command = option(command)
    return command


def moved_weights(items: tuple[str, ...]) -> dict[str, str]:
    """--weights BACKBONE=PATH options as {backbone: path}."""
    moved = {}
    for item in items:
        name, sep, path = item.partition("=")
        if not sep or not path:
            raise UserError(f"--weights takes BACKBONE=PATH, got {item!r}")
        moved[name] = path
    return moved


@cli.command()
@click.argument("run", type=click.Path(path_type=Path))
@click.argument("images", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option("--top", type=click.IntRange(min=1),
              help="Hashtags per image [default: 5]; with --threshold, at most this many [default: no cap].")
@click.option("--threshold", is_flag=True,
              help="Return the hashtags whose score reaches the run's threshold (a variable number, possibly none) "
                   "instead of the top ones; the run must be fitted with --threshold global|per-tag.")
@click.option("--json", "as_json", is_flag=True,
              help='Print JSON: {"results": [{image, hashtags: [{tag, score}], error}]} (as `serve` answers).')
@run_model_options
def recommend(run: Path, images: tuple[Path, ...], top: int | None, threshold: bool, as_json: bool, device: str,
              precision: str, weights: tuple[str, ...]) -> None:
    """Rank hashtags for IMAGES with a fitted RUN.

    Each image is re-extracted with exactly the backbones and weights of the run's store, then
    scored by the run's head. An image that cannot be decoded is reported and the others go on
    (exit status 2 if any failed).
    """
    moved = moved_weights(weights)
    from hashtagkit.recommend import Recommender

    recommender = Recommender.from_run(run, device=device, precision=precision, weights=moved)
    results = recommender.recommend([str(p) for p in images], top=top if top or threshold else 5, threshold=threshold)
    if as_json:
        click.echo(json.dumps({"results": [r.as_json() for r in results]}, indent=2))
    else:
        for r in results:
            if r.error:
                continue
            tags = "  ".join(f"#{t} {s:.3f}" for t, s in r.hashtags) or "(no hashtag reaches its threshold)"
            click.echo(f"{r.image}: {tags}")
    failed = [r for r in results if r.error]
    for r in failed:
        echo_err(f"Error: {r.image}: {r.error}")
    if failed:
        sys.exit(2)


@cli.command()
@click.argument("run", type=click.Path(path_type=Path))
@click.option("--host", default="127.0.0.1", show_default=True,
              help="Address to listen on; anything but loopback lets others reach the API (use --token-file).")
@click.option("--port", default=8000, show_default=True, type=click.IntRange(min=0, max=65535))
@click.option("--max-batch", default=32, show_default=True, type=click.IntRange(min=1, max=4096),
              help="Most photos in one forward pass (1 turns batching off).")
@click.option("--max-wait-ms", default=20.0, show_default=True, type=FiniteFloat(min=0, max=60_000),
              help="How long a batch waits for more photos after its first.")
@click.option("--token-file", type=click.Path(path_type=Path, dir_okay=False),
              help="A file holding a token: every /v1 call must then send 'Authorization: Bearer <token>'.")
@click.option("--max-upload-mb", default=20.0, show_default=True, type=FiniteFloat(min=0, max=4096, min_open=True),
              help="Largest request body (MiB); larger is refused with 413 while it is read.")
@click.option("--grace", default=30.0, show_default=True, type=FiniteFloat(min=0, max=3600),
              help="On Ctrl-C/SIGTERM: stop accepting, answer what is queued for half of this many seconds, "
                   "refuse the rest with 503 + Retry-After, and let the running batch finish within it.")
@run_model_options
def serve(run: Path, host: str, port: int, max_batch: int, max_wait_ms: float, token_file: Path | None,
          max_upload_mb: float, grace: float, device: str, precision: str, weights: tuple[str, ...]) -> None:
    """Serve RUN's hashtags over HTTP: a JSON API and an upload page.

    The models are loaded once, before the port opens; concurrent requests are batched into one
    forward pass. POST /v1/recommend (multipart, field 'files', ?top=K; ?threshold=true for the hashtags
    above the run's thresholds, a run fitted with --threshold), GET /v1/info, GET
    /healthz, the API's documentation at /docs, the upload page at /. Stop with Ctrl-C.
    """
    from hashtagkit.recommend import Recommender

    try:
        from hashtagkit.serve import read_token, run_server
    except ImportError as e:  # fastapi, uvicorn and python-multipart are the 'serve' extra
        raise UserError(f"serve needs the 'serve' extra ({e.name} is missing): pip install 'hashtagkit[serve]'") from None

    moved = moved_weights(weights)
    token = read_token(token_file) if token_file is not None else None
    recommender = Recommender.from_run(run, device=device, precision=precision, weights=moved)
    recommender.check_scores()  # a run that cannot score is refused before the port opens
    try:
        run_server(recommender, host, port, token=token, max_batch=max_batch, max_wait_ms=max_wait_ms,
                   max_upload_mb=max_upload_mb, grace=grace)
    except (KeyboardInterrupt, Terminated):  # uvicorn re-raises the signal after its graceful shutdown
        from hashtagkit.outputs import clear_stop

        clear_stop()  # a signal is how serve ends: not an interruption of its work
        echo_err("hashtagkit serve: stopped")


@cli.command()
@click.argument("run", type=click.Path(path_type=Path))
@click.option("--split", default="test", show_default=True, type=click.Choice(SPLITS))
@click.option("--n", "n", default=12, show_default=True, type=click.IntRange(min=1, max=200), help="Images on the sheet.")
@click.option("--seed", default=0, show_default=True, type=SEED,
              help="Which random sample, or which of the tied worst/best images.")
@click.option("--worst", is_flag=True, help="The images with the lowest Recall@TOP (failure cases).")
@click.option("--best", is_flag=True, help="The images with the highest Recall@TOP (successes).")
@click.option("--random", "random_sample", is_flag=True, help="A seeded random sample (the default).")
@click.option("--top", default=5, show_default=True, type=click.IntRange(min=1, max=20), help="Predicted hashtags per image.")
@click.option("--cols", default=4, show_default=True, type=click.IntRange(min=1, max=12), help="Images per row.")
@click.option("--images", type=STORE,
              help="Image folder or URL prefix [default: the one extraction read].")
@click.option("--store", type=STORE, help="Read this store instead of the run's (same split required).")
@click.option("-o", "--out", required=True, type=OutputPath(path_type=Path, dir_okay=False),
              help="The sheet to write: .png, .pdf, .svg or .jpg.")
@click.option("--overwrite", is_flag=True, help="Replace OUT if it exists.")
def show(run: Path, split: str, n: int, seed: int, worst: bool, best: bool, random_sample: bool, top: int, cols: int,
         images: Path | None, store: Path | None, out: Path, overwrite: bool) -> None:
    """Draw a contact sheet of RUN's predictions, like the paper's Figures 6-8.

    Each photo of the split gets its top predicted hashtags with scores and its ground truth;
    hashtags in both are red and bold. --worst / --best pick failures / successes by the
    image's Recall@TOP; the image list is printed too.
    """
    from hashtagkit.show import contact_sheet

    given = [flag for flag, on in (("--worst", worst), ("--best", best), ("--random", random_sample)) if on]
    if len(given) > 1:
        raise UserError(f"{' and '.join(given)} cannot be used together: choose one")
    entries = contact_sheet(run, out, split=split, n=n, seed=seed, mode=given[0].lstrip("-") if given else "random",
                            top=top, cols=cols, images=images, store=store, overwrite=overwrite)
    for e in entries:
        hits = " ".join(f"#{t}" for t, _, hit in e.predicted if hit) or "-"
        click.echo(f"{e.row}\t{e.path}\tR@{top} {100 * e.recall:.0f}%\tmatched {hits}")
    echo_err(f"wrote {out}: {len(entries)} images")


@cli.command()
@click.argument("store", type=STORE)
@click.option("--heads", default="mlp,knn,ovr,popularity", show_default=True, help="Comma-separated heads.")
@click.option("--features", "views", default="object,scene,both", show_default=True,
              help="Comma-separated feature views; views the store lacks are skipped.")
@click.option("--seeds", default="0", show_default=True, help="Comma-separated seeds (mean ± std over them).")
@click.option("--set", "sets", multiple=True, metavar="HEAD.KEY=VALUE", help="A head hyper-parameter (repeatable).")
@click.option("-o", "--out", required=True, type=OutputPath(path_type=Path, file_okay=False),
              help="Results folder: new, empty, or an earlier bench folder to resume (any other folder is refused).")
@postprocess_options
def bench(store: Path, heads: str, views: str, seeds: str, sets: tuple[str, ...], out: Path, rerank: str,
          rerank_m: int, rerank_smoothing: float, threshold: str) -> None:
    """Fit and evaluate every head x view x seed on STORE; write tables and plots to OUT.

    OUT gets results.json (every metric of every run, K = 1..10, per-class Recall@5),
    results.csv, table.md (P@1, R@5, A@5 as mean ± std over seeds), curves.png (P@K and R@K)
    and per_class_recall.png (recall against class frequency), and runs/ with each fitted run
    (for `hashtagkit show`). Resumable: combinations already in OUT/results.json are not
    redone. --rerank/--threshold are chosen for every run as `fit` chooses them; the records
    then hold the re-ranked metrics and f1_micro/f1_macro at the thresholds. The popularity floor is always a row; on HARRISON labels the paper's reported
    Table 1 rows are added.
    """
    from hashtagkit.benchmark import TABLE, bench
    from hashtagkit.outputs import refuse_existing

    refuse_existing(out, False, kind="bench", inputs=[store], resume=True)
    params: dict[str, dict] = {}
    for key, value in parse_sets(sets).items():
        head, dot, name = key.partition(".")
        if not dot or not name:
            raise UserError(f"--set takes HEAD.KEY=VALUE in bench, got {key!r}")
        params.setdefault(head, {})[name] = value
    seed_list = [parse_seed(x.strip(), "--seeds") for x in seeds.split(",") if x.strip()]
    bench(store, out, [h.strip() for h in heads.split(",") if h.strip()],
          [v.strip() for v in views.split(",") if v.strip()], seed_list or [0], params, log=echo_err,
          postprocess=postprocess_choice(rerank, rerank_m, rerank_smoothing, threshold))
    click.echo((out / TABLE).read_text())


# --- extract / convert-caffe ----------------------------------------------------------------------
@cli.command()
@click.argument("store", type=STORE)
@click.option("--backbone", "backbones", multiple=True, metavar="NAME[=PATH|random]",
              help="A backbone to run (repeatable) [default: vgg16-object and vgg16-scene]. NAME=PATH loads a "
                   "local weights file; NAME=random is random init for smoke tests only (recorded as such).")
@click.option("--images", type=STORE, help="Image folder or URL prefix (s3://bucket/photos) [default: the store's].")
@click.option("--device", default="auto", show_default=True, type=click.Choice(DEVICES))
@click.option("--precision", default="auto", show_default=True, type=click.Choice(PRECISIONS),
              help="auto: fp16 on CUDA, bf16 on a CPU that supports it, else fp32.")
@click.option("--batch-size", default=32, show_default=True, type=click.IntRange(min=1))
@click.option("--workers", type=click.IntRange(min=0),
              help="Decoding processes of an in-process run [default: on the CPU one per 8 cores, on CUDA all "
                   "cores but one, up to 8].")
@click.option("--lanes", type=click.IntRange(min=1),
              help="Batches in the model at once, each on cores/LANES torch threads [default: on the CPU one per "
                   "core, up to 4; on CUDA 1].")
@click.option("--decode", default="default", show_default=True,
              type=click.Choice(DECODE_MODES),
              help="How JPEGs become pixels. fast: decoded reduced (DCT scaling) down to the resize, other pixels; "
                   "gpu: nvJPEG on the CUDA device. Both print and record their fc7 cosine against the exact "
                   "decode on a sample of the photos, and are part of the blocks' preprocessing.")
@click.option("--compile/--no-compile", "compile_", default=None,
              help="Compile the backbones with torch.compile (inductor, frozen weights) before the first photo: "
                   "1.04-1.05x the model's rate on an AVX-512 bf16 CPU, ~1.4x on an AMX one "
                   "(benchmarks/results/roofline_extract.md), after a compile of ~15-100 s per backbone (less "
                   "when inductor's cache has it). [default: auto: on a bf16 CPU, in process, when the photos "
                   "to extract repay the compile twice over; the run records why]")
@click.option("--dtype", default="float16", show_default=True, type=click.Choice(FEATURE_DTYPES),
              help="Storage type of the features.")
@click.option("--chunk-rows", type=click.IntRange(min=1), help="Rows per store chunk [default: about 4 MiB a chunk].")
@click.option("--allow-truncated", is_flag=True, help="Decode truncated JPEGs (grey fill) instead of marking them invalid.")
@click.option("--overwrite", is_flag=True,
              help="Extract again, replacing the existing features (default: resume). The new features are "
                   "written beside the old ones, which stay readable until the new ones are complete; run the "
                   "same command again to resume an interrupted overwrite.")
@click.option("--allow-mixed-precision", is_flag=True,
              help="Resume with another --precision than the done chunks' (info then shows the mix).")
@click.option("--allow-other-images", is_flag=True,
              help="Resume although --images or the photos of done chunks changed (only if they are the same photos).")
@click.option("--seed", default=0, show_default=True, type=SEED, help="Seed for random-weight backbones.")
@click.option("--no-progress", is_flag=True, help="No progress bar.")
@click.option("--preprocessing", "preprocessings", multiple=True, metavar="BACKBONE=NAME",
              help="Feed BACKBONE other pixels than its own (repeatable). NAME: imagenet, places365-caffe, weights "
                   "(what its weights file records) or backbone. Needed for a weights file made for another "
                   "preprocessing or block, which is refused otherwise.")
@click.option("--cluster", metavar="local[:N]",
              help="Compute the chunks on a Dask LocalCluster of N worker processes on this machine "
                   "[N default: one per GPU, else 1].")
@click.option("--scheduler", metavar="ADDRESS",
              help="Compute the chunks on the workers of a running Dask scheduler (tcp://HOST:PORT); the store "
                   "and the images must be at the same path on every worker.")
def extract(store: Path, backbones: tuple[str, ...], images: Path | None, device: str, precision: str, batch_size: int,
            workers: int | None, lanes: int | None, decode: str, compile_: bool | None, dtype: str, chunk_rows: int | None,
            allow_truncated: bool, overwrite: bool, seed: int,
            no_progress: bool, preprocessings: tuple[str, ...], allow_mixed_precision: bool,
            allow_other_images: bool, cluster: str | None, scheduler: str | None) -> None:
    """Compute image features for every row of STORE, resumably.

    Decodes each image once, runs every backbone on it and writes the concatenated features
    (vgg16-object fc7 + vgg16-scene fc7 = 8,192-d by default) into the store, one chunk at a
    time. Killed or interrupted, it resumes where it stopped when run again. Images that are
    missing, unreadable, truncated or decompression bombs become invalid rows, with the reason.
    With --cluster or --scheduler the chunks are computed by Dask workers, this process
    coordinating (see the README's "Extraction on Dask").
    """
    from hashtagkit.extraction import ExtractConfig
    from hashtagkit.extraction import extract as run_extract

    asked = {}
    for item in preprocessings:
        name, sep, value = item.partition("=")
        if not sep or not value:
            raise UserError(f"--preprocessing takes BACKBONE=NAME for a backbone being extracted, got {item!r}")
        asked[name] = value
    config = ExtractConfig(device=device, precision=precision, batch_size=batch_size, workers=workers, lanes=lanes,
                           decode=decode, compile={None: "auto", True: "on", False: "off"}[compile_], dtype=dtype,
                           chunk_rows=chunk_rows, images=images,
                           overwrite=overwrite, allow_truncated=allow_truncated,
                           allow_mixed_precision=allow_mixed_precision, allow_other_images=allow_other_images,
                           cluster=cluster, scheduler=scheduler, progress=not no_progress)
    run_extract(store, list(backbones) or None, config, seed=seed, preprocessing=asked, log=echo_err)


@cli.command("convert-caffe")
@click.argument("model", type=click.Path(path_type=Path))
@click.option("--arch", default="vgg16", show_default=True, type=click.Choice(["vgg16", "raw"]),
              help="vgg16: torchvision vgg16 state dict; raw: <layer>.weight/<layer>.bias for any net.")
@click.option("--keep-fc8", is_flag=True, help="vgg16: keep the classification layer (fc8 / fc8a).")
@click.option("-o", "--out", required=True, type=OutputPath(path_type=Path), help="The .pth file to write.")
@click.option("--overwrite", is_flag=True, help="Replace OUT if it exists.")
@click.option("--preprocessing", "preprocessing", type=click.Choice(["places365-caffe", "imagenet", "none"]),
              help="The pixels these weights expect, recorded in OUT [default: places365-caffe for vgg16 (Caffe "
                   "models take BGR 0-255 minus the mean), none (unknown) for raw].")
@click.option("--block", type=click.Choice(["scene", "object", "none"]),
              help="The feature block these weights fill, recorded in OUT [default: scene for vgg16, none for raw].")
def convert_caffe(model: Path, arch: str, keep_fc8: bool, out: Path, overwrite: bool, preprocessing: str | None,
                  block: str | None) -> None:
    """Convert a Caffe .caffemodel into a PyTorch weights file, without Caffe.

    OUT holds the state dict and what it expects (preprocessing, block, the caffemodel's name and
    sha256), so `extract` refuses to feed it other pixels. For the Places365 VGG-16 (vgg16-scene):
    hashtagkit convert-caffe vgg16_places365.caffemodel -o ~/.cache/hashtagkit/weights/vgg16_places365.pth
    """
    from hashtagkit.backbones.caffe import convert_caffemodel

    done = convert_caffemodel(model, out, arch=arch, keep_fc8=keep_fc8, preprocessing=preprocessing, block=block,
                              overwrite=overwrite)
    echo_err(f"wrote {out}: {done.tensors} tensors, {done.parameters:,} parameters ({done.arch}, block {done.block}, "
             f"preprocessing {done.preprocessing}); sha256 {done.sha256}")


# --- info --------------------------------------------------------------------------------------
@cli.command()
@click.argument("store", type=STORE)
@click.option("--json", "as_json", is_flag=True, help="Print everything as JSON.")
@click.option("--verify", is_flag=True,
              help="Read every chunk marked done; mark damaged ones not done (exit 1) so `extract` redoes them.")
def info(store: Path, as_json: bool, verify: bool) -> None:
    """What STORE holds: rows, classes, split, feature blocks and completeness, provenance."""
    from hashtagkit.extraction.record import extraction_summary
    from hashtagkit.stores import open_store
    from hashtagkit.stores.upgrade import layout_steps

    if verify:
        sys.exit(verify_store(store))
    opened = open_store(store)
    data = opened.info()
    data["extraction"] = extraction_summary(opened)
    data["older_layout"] = bool(layout_steps(opened))  # dimension names, tag array, NaN fill of this version
    if as_json:
        click.echo(json.dumps(data, indent=2))
        return
    s, t = data["split"], data["tags_per_image"]
    prov = data["provenance"]
    lines = [
        f"store      {data['path']}  ({data['kind']}{', SYNTHETIC' if data['synthetic'] else ''})",
        f"rows       {data['rows']:,}   classes {data['classes']:,}   hashtags/image {t['mean']:.2f} ({t['min']}..{t['max']})",
        f"split      train {s['train']:,} / test {s['test']:,} / val {s['val']:,}"
        f"   (seed {data['split_seed']}, sha256 {str(data['split_sha256'])[:12]})",
        f"images     {data['image_root'] or '(none: features only)'}",
        f"format     {data['format']}" + (
            "   (upgrade interrupted: run `hashtagkit upgrade STORE` to finish it)" if data["upgrading"] else
            "   (readable; `hashtagkit upgrade STORE` or any `extract` rewrites it as format 2)"
            if data["format"] < 2 else
            "   (an older layout: `hashtagkit upgrade STORE` gives it the coordinates xarray reads)"
            if data["older_layout"] else ""),
    ]
    if not data["blocks"]:
        lines.append("features   none yet (run `hashtagkit extract`)")
    lines += extraction_lines(data["blocks"], data.get("completeness"), data["extraction"])
    lines.append(f"made       {prov.get('created')} by `{prov.get('command')}`")
    click.echo("\n".join(lines))


@cli.command()
@click.argument("store", type=STORE)
def upgrade(store: Path) -> None:
    """Rewrite STORE in place in the current store format (2), keeping every feature and flag.

    Format 2 keeps each chunk's done flag and log in objects of their own, so that many workers
    can extract into one store at once. Format-1 stores stay readable as they are; `extract`
    upgrades them itself. Safe to interrupt: run it again to finish."""
    from hashtagkit.stores import open_store
    from hashtagkit.stores.upgrade import upgrade_store

    opened = open_store(store, mode="r+")
    with opened.lock("upgraded"):
        opened = open_store(store, mode="r+")  # re-read under the lock
        if not upgrade_store(opened, log=echo_err):
            echo_err(f"{store} is already store format {opened.format}: nothing to do")


def verify_store(path: Path) -> int:
    """`info --verify`: print the store's verification (`hashtagkit.stores.verify`); 1 if damaged."""
    from hashtagkit.stores.verify import verify

    result = verify(path)
    for line in result.lines:
        click.echo(line)
    return 0 if result.ok else 1


def extraction_lines(blocks: list[dict], completeness: list | None, summary: dict | None) -> list[str]:
    """`info`'s lines on how the features were made: per block the backbone, weights and pixels;
    then chunks done, the precision/device of the done chunks (all of them when mixed), dates
    and invalid rows."""
    from hashtagkit.backbones.preprocessing import preprocessing_from_dict, preprocessing_name
    from hashtagkit.extraction.record import reasons_text

    lines = []
    for b in blocks:
        w = b.get("weights") or {}
        pre = preprocessing_name(preprocessing_from_dict(b["preprocessing"])) if b.get("preprocessing") else "?"
        weights = f"random (seed {w.get('seed')})" if w.get("source") == "random" else f"sha256 {str(w.get('sha256'))[:12]}"
        lines.append(f"block      {b['name']}: {b.get('backbone')} columns {b['columns'][0]}..{b['columns'][1]}"
                     + (f"   weights {weights}, preprocessing {pre}" if w else ""))
    if completeness:
        done, total = completeness
        lines.append(f"extracted  {done} of {total} chunks")
    if summary:
        text = " + ".join(f"{s['precision']} on {s['device']}" for s in summary["settings"]) or "no chunk done yet"
        lines.append(f"settings   {text}" + ("   (MIXED: the done chunks come from several settings)"
                                              if summary["mixed"] else ""))
        lines.append(f"runs       {summary['runs']}, first {summary['first']}, last {summary['last']}")
        if summary.get("hosts"):
            lines.append(f"written by {len(summary['workers'])} worker(s) ({', '.join(summary['workers'][:4])}"
                         f"{', ...' if len(summary['workers']) > 4 else ''}) on {', '.join(summary['hosts'][:4])}"
                         f"{', ...' if len(summary['hosts']) > 4 else ''}")
        lines.append(f"invalid    {reasons_text(summary['invalid'])}")
        if summary["overwriting"]:
            o = summary["overwriting"]
            lines.append(f"overwrite  in progress: {o['done']} of {o['total']} new chunks (the features above are "
                         "the old ones until it completes; rerun `extract --overwrite` to resume it)")
    return lines


def _show_warning(message, category, filename, lineno, file=None, line=None) -> None:
    click.echo(f"warning: {message}", err=True)


def main() -> None:
    import warnings

    warnings.showwarning = _show_warning  # one readable line, not a source location
    signal.signal(signal.SIGTERM, _on_sigterm)  # so `finally` blocks remove half-written outputs
    if signal.getsignal(signal.SIGINT) is signal.default_int_handler:  # not where Ctrl-C is ignored (nohup, &)
        signal.signal(signal.SIGINT, _on_sigint)
    cli(prog_name="hashtagkit")


if __name__ == "__main__":
    sys.exit(main())
