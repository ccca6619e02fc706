"""The ``jaxembed`` command: a thin layer over the library's functions.

Commands:
  train        train the embeddings and write a report (the main job)
  neighbors    nearest tokens by cosine similarity, from a run's checkpoint
  export       the token table as .npy plus TensorBoard-projector TSVs
  sample       text from a run's model: a prompt and its sampled continuation
  walkthrough  the seed notebook's walk-through: ids, decoded text, shapes
  tokenize     text files -> a memory-mapped token file to train on (--tokens)
  plan         what a config costs (parameters, memory, FLOPs) before it runs
  compare      the position schemes side by side: one run per model.position, one page
  reference    a run's tables next to GPT-2's own (downloaded once): reference.md

Every user error ends in one line, ``jaxembed <command>: error: ...``, and
exit status 2. The library logs through ``logging``; the CLI shows its info
lines on stdout and its warnings on stderr.

Example:
  $ jaxembed train --workdir runs/tiny --config.train.steps=300
  $ jaxembed neighbors --workdir runs/tiny " the" " return"
  $ jaxembed sample --workdir runs/tiny --prompt "Return the" --tokens 40 --top-k 40
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import json
import logging
import os
import pathlib
import signal
import sys
import threading
import time

# Only the standard library and jaxembed.errors at import time: everything else is imported inside
# main()'s handlers, so a Ctrl-C however early ends in one line, and `jaxembed --help` is instant.
from jaxembed.errors import InvalidArgumentError, JaxembedError


class UsageError(InvalidArgumentError):
    """A command-line mistake; printed without a traceback."""


def _add_text_source(parser: argparse.ArgumentParser, default: str) -> argparse._MutuallyExclusiveGroup:
    from jaxembed.text import corpus

    group = parser.add_mutually_exclusive_group()
    group.add_argument("--corpus", choices=corpus.CORPORA, default=None, help=f"a named corpus (default: {default})")
    group.add_argument(
        "--text",
        metavar="PATH",
        help="a UTF-8 text file, a folder of them or a quoted glob (data.text); over 64 MiB: jaxembed tokenize",
    )
    return group


# --- walkthrough -----------------------------------------------------------


def _walkthrough(args: argparse.Namespace, extra: list[str]) -> int:
    from jaxembed.text import corpus
    from jaxembed.walkthrough import walkthrough

    _no_extra(extra)
    text = corpus.load_text(args.text or args.corpus or "romeo-juliet")
    report = walkthrough(
        text,
        batch_size=args.batch_size,
        max_length=args.max_length,
        features=args.features,
        strip_gutenberg=args.strip_gutenberg,
    )
    print(report.format())
    return 0


# --- train -----------------------------------------------------------------


def load_config(name_or_path: str, overrides: list[str]):
    """``jaxembed.config.load`` for the command line: a config by name or file, with overrides.

    Raises:
      UsageError: see ``jaxembed.config.load``.

    Example:
      >>> load_config("tiny", ["--config.train.steps=5"]).train.steps
      5
    """
    from jaxembed import config as config_lib

    try:
        return config_lib.load(name_or_path, overrides)
    except config_lib.ConfigError as e:
        raise UsageError(str(e)) from None


def _cluster_detected() -> bool:
    """True inside a multi-process SLURM/MPI job or on a multi-host TPU slice."""
    env = os.environ
    tasks = env.get("SLURM_NTASKS") or env.get("OMPI_COMM_WORLD_SIZE") or "1"
    tpu_hosts = env.get("TPU_WORKER_HOSTNAMES", "")
    return (tasks.isdigit() and int(tasks) > 1) or "," in tpu_hosts


def _initialize_distributed(args: argparse.Namespace) -> None:
    """Joins a multi-process run: explicit flags, or JAX's cluster auto-detection."""
    import jax

    if args.coordinator is None:
        if args.num_processes is not None or args.process_id is not None:
            raise UsageError("--num-processes and --process-id need --coordinator HOST:PORT.")
        if _cluster_detected():
            jax.distributed.initialize(heartbeat_timeout_seconds=args.heartbeat_timeout)
        return
    if args.num_processes is None or args.process_id is None:
        raise UsageError("--coordinator needs --num-processes and --process-id too.")
    if not 0 <= args.process_id < args.num_processes:
        raise UsageError(f"--process-id {args.process_id} must lie in [0, {args.num_processes}).")
    # CPU processes reduce across each other through gloo; accelerators ignore this.
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(
        coordinator_address=args.coordinator,
        num_processes=args.num_processes,
        process_id=args.process_id,
        initialization_timeout=args.init_timeout,
        heartbeat_timeout_seconds=args.heartbeat_timeout,
    )


def _train(args: argparse.Namespace, extra: list[str]) -> int:
    config = load_config(args.config, extra)
    _apply_text_source(config, args)
    if args.val_tokens:
        config.data.val_tokens = args.val_tokens
    _initialize_distributed(args)
    from jaxembed.train.trainer import check_platforms

    check_platforms()  # only now: jax.devices() before jax.distributed.initialize() would forbid joining

    with _interrupts.deferred():  # matplotlib's native modules
        from jaxembed import report, train
    _interrupts.check()  # the training loop notes signals itself, but not one swallowed before it

    train.enable_compilation_cache()  # a re-run loads its compiled programs ($JAXEMBED_COMPILATION_CACHE=off: never)
    result = train.train_and_evaluate(config, args.workdir, progress=not args.no_progress)
    path = report.write_run_report(result, config.report)
    if path is not None:
        val = [m["val_loss"] for m in result.metrics if "val_loss" in m]
        print(f"Validation loss {val[0]:.3f} -> {val[-1]:.3f}. Report: {path}")
    return 0


def _apply_text_source(config, args: argparse.Namespace) -> None:
    if args.text:
        config.data.text, config.data.tokens = args.text, None
    elif args.corpus:
        config.data.corpus, config.data.text, config.data.tokens = args.corpus, None, None
    elif getattr(args, "tokens", None):
        config.data.tokens, config.data.text = args.tokens, None


# --- compare ---------------------------------------------------------------


def _compare(args: argparse.Namespace, extra: list[str]) -> int:
    config = load_config(args.config, extra)
    _apply_text_source(config, args)
    from jaxembed.nn.positions import POSITIONS, check_position

    positions = [p.strip() for p in args.positions.split(",") if p.strip()] if args.positions else list(POSITIONS)
    for position in positions:
        try:
            check_position(position, "--positions")
        except InvalidArgumentError as e:
            raise UsageError(str(e)) from None
    with _interrupts.deferred():
        from jaxembed import report, train
    _interrupts.check()
    train.enable_compilation_cache()
    start = time.perf_counter()
    path = report.compare_positions(config, args.workdir, positions=positions, progress=not args.no_progress)
    print(f"Compared {len(positions)} position schemes in {time.perf_counter() - start:.0f} s. Page: {path}")
    return 0


# --- tokenize --------------------------------------------------------------


def _tokenize(args: argparse.Namespace, extra: list[str]) -> int:
    from jaxembed.text import token_files
    from jaxembed.text.tokenizer import TokenizerUnavailableError

    _no_extra(extra)
    try:
        meta = token_files.tokenize_files(
            args.inputs,
            args.out,
            tokenizer=args.tokenizer,
            glob=args.glob,
            workers=args.workers,
            overwrite=args.overwrite,
            progress=sys.stderr.isatty(),
        )
    except TokenizerUnavailableError as e:  # a RuntimeError: make it one of the errors main() reports
        raise UsageError(str(e)) from None
    path = pathlib.Path(args.out) / token_files.TOKENS_FILE
    print(
        f"Tokenized {meta['num_documents']:,} documents into {meta['num_tokens']:,} {meta['tokenizer']} tokens "
        f"({meta['dtype']}): {path}"
    )
    return 0


# --- neighbors / export ----------------------------------------------------


def _neighbors(args: argparse.Namespace, extra: list[str]) -> int:
    with _interrupts.deferred():
        from jaxembed.report import analysis
        from jaxembed.train.run import load_run

    _no_extra(extra)
    run = load_run(args.workdir, step=args.step)
    ids = analysis.resolve_tokens(run.enc, args.tokens)
    # The same rule and centring as the run report, so the two agree.
    neighbors = analysis.rank_neighbors(run.token_VxD, run.token_counts_V, ids, args.k, args.min_count)
    candidates = analysis.neighbor_candidates(run.token_counts_V, args.min_count)
    mean, std = analysis.random_pair_cosine(run.token_VxD, candidates, centre=True)
    print(
        f"Step {run.step} of {run.workdir}: centred cosine among the {len(candidates):,} tokens seen >= "
        f"{args.min_count} times (random pair: {round(mean, 2) + 0.0:+.2f} ± {std:.2f}):"
    )
    # Flags probes seen fewer than --min-count times; σ above the random pair, as in the report.
    print(
        analysis.format_neighbors(
            run.enc, ids, neighbors, run.token_counts_V, baseline=(mean, std), min_count=args.min_count
        )
    )
    return 0


def _export(args: argparse.Namespace, extra: list[str]) -> int:
    with _interrupts.deferred():
        from jaxembed import report
        from jaxembed.report import analysis
        from jaxembed.train.run import load_run

    _no_extra(extra)
    if args.tokens is not None and args.tokens < 1:
        raise UsageError(f"--tokens {args.tokens} is not allowed; it must be an integer >= 1.")
    run = load_run(args.workdir, step=args.step)
    out = pathlib.Path(args.out) if args.out else run.workdir / "projector"
    count = args.tokens if args.tokens is not None else run.config.report.projector_tokens
    frequent = analysis.most_frequent(run.token_counts_V, count)
    paths = report.export_projector(run.enc, run.token_VxD, frequent, out)
    paths.update(report.export_tables(run.token_VxD, run.position_LxD, out))
    print(f"Step {run.step} of {run.workdir}:")
    for name, path in paths.items():
        print(f"{name:>19}: {path}")
    print("Load vectors.tsv and metadata.tsv at projector.tensorflow.org; the .npy tables with numpy.load.")
    return 0


def _reference(args: argparse.Namespace, extra: list[str]) -> int:
    with _interrupts.deferred():
        from jaxembed import report

    _no_extra(extra)
    page = report.write_reference(args.workdir, url=args.url, step=args.step)
    numbers = json.loads((page.parent / "reference.json").read_text(encoding="utf-8"))
    run, gpt2 = numbers["run"], numbers["gpt2"]
    length = min(run["context_length"], gpt2["positions"])
    ours = "none here" if run["position_locality"] is None else f"{run['position_locality']:+.2f}"
    print(
        f"Step {run['step']} of {run['workdir']} next to GPT-2 124M: position locality over {length} positions: "
        f"this run {ours}, GPT-2 {gpt2['position_locality']:+.2f}; "
        f"{numbers['shared_neighbors']} of {numbers['listed_neighbors']} neighbours shared with GPT-2."
    )
    print(f"Page: {page}")
    return 0


# What sampling's error messages call each argument: the command's flags.
SAMPLE_FLAGS = {
    "prompt": "--prompt",
    "num_tokens": "--tokens",
    "temperature": "--temperature",
    "top_k": "--top-k",
    "seed": "--seed",
    "max_length": "data.max_length",
}


def _sample(args: argparse.Namespace, extra: list[str]) -> int:
    with _interrupts.deferred():
        from jaxembed.nn import sampling
        from jaxembed.train.run import load_run

    _no_extra(extra)
    temperature = sampling.SUGGESTED_TEMPERATURE if args.temperature is None else args.temperature
    top_k = sampling.SUGGESTED_TOP_K if args.top_k is None else args.top_k
    settings = {"temperature": temperature, "top_k": top_k, "seed": args.seed}
    # Before loading, to fail fast; --top-k's upper bound (the vocabulary) is known after.
    sampling.check_sampling_args(num_tokens=args.tokens, **{**settings, "top_k": None}, names=SAMPLE_FLAGS)
    run = load_run(args.workdir, step=args.step)
    text = sampling.sample_text(
        run.model,
        run.params,
        run.enc,
        args.prompt,
        args.tokens,
        **settings,
        active_ids=run.active_ids,
        names=SAMPLE_FLAGS,
    )
    top_k_words = "no top-k" if top_k is None else f"top-k {top_k}"
    print(f"Step {run.step} of {run.workdir}, temperature {temperature:g}, {top_k_words}, seed {args.seed}:")
    print(text)
    return 0


def _step(text: str):
    from jaxembed.train.run import parse_step

    try:
        return parse_step(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def _no_extra(extra: list[str]) -> None:
    if extra:
        raise UsageError(f"unrecognised arguments: {' '.join(extra)}")


# --- plan ------------------------------------------------------------------


def _force_host_device_count(count: int) -> None:
    """Makes the CPU backend expose ``count`` devices; works only before JAX's backends start."""
    flags = [f for f in os.environ.get("XLA_FLAGS", "").split() if not f.startswith("--xla_force_host_platform_device")]
    os.environ["XLA_FLAGS"] = " ".join([*flags, f"--xla_force_host_platform_device_count={count}"])


def _plan(args: argparse.Namespace, extra: list[str]) -> int:
    if args.devices is not None and args.devices < 1:
        raise UsageError(f"--devices {args.devices} is not allowed; it must be an integer >= 1.")
    from jaxembed.text import corpus

    config = load_config(args.config, extra)
    text = corpus.load_text(args.text or args.corpus) if (args.text or args.corpus) else None
    if args.devices is not None:
        # XLA reads the flag when the first backend starts (the first device query), not at `import jax`.
        _force_host_device_count(args.devices)
    import json

    import jax

    from jaxembed.train import plan as plan_lib
    from jaxembed.train.trainer import make_mesh

    mesh = None
    if args.devices is not None:
        devices = jax.devices()
        if len(devices) < args.devices:
            devices = jax.devices("cpu")  # an accelerator host with fewer chips: plan on N host devices
        if len(devices) < args.devices:
            raise UsageError(
                f"--devices {args.devices}: only {len(devices)} devices are available (JAX had already "
                "started its backends, so XLA_FLAGS could not add host devices)."
            )
        mesh = make_mesh(config.mesh.data, config.mesh.model, devices[: args.devices])
    result = plan_lib.plan(config, mesh=mesh, text=text)
    result["config"] = args.config
    print(json.dumps(result) if args.json else plan_lib.format_plan(result, args.config))
    return 0


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("jaxembed")
    except PackageNotFoundError:
        return "(not installed)"


class _Parser(argparse.ArgumentParser):
    """argparse with its errors in one line (no usage block before them), exit status 2.

    Sub-command parsers are made of the same class (``add_subparsers`` defaults to it).
    """

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} (--help for usage)\n")


def build_parser() -> argparse.ArgumentParser:
    """The argument parser (sub-commands: train, neighbors, export, sample, tokenize, walkthrough, plan)."""
    from jaxembed.config import CONFIGS

    parser = _Parser(prog="jaxembed", description="Token and positional embeddings in JAX/Flax.")
    parser.add_argument("--version", action="version", version=f"%(prog)s {_version()}")
    commands = parser.add_subparsers(dest="command", required=True)

    train = commands.add_parser(
        "train",
        help="train the embeddings and write a report (the main job)",
        epilog="Override any config field with --config.FIELD=VALUE, e.g. --config.train.steps=300.",
    )
    train.add_argument(
        "--config",
        default="tiny",
        help=f"a named config ({', '.join(CONFIGS)}; default: tiny) or an ml_collections config file",
    )
    train.add_argument("--workdir", required=True, help="metrics, checkpoints and report go here; rerun to resume")
    source = _add_text_source(train, "the config's data.corpus")
    source.add_argument("--tokens", metavar="DIR", help="a token directory made by `jaxembed tokenize` (data.tokens)")
    train.add_argument(
        "--val-tokens", metavar="DIR", help="a token directory held out for validation (data.val_tokens)"
    )
    train.add_argument("--no-progress", action="store_true", help="no progress bar")
    multi = train.add_argument_group("multi-process (one command per process)")
    multi.add_argument("--coordinator", metavar="HOST:PORT", help="address of process 0's coordinator")
    multi.add_argument("--num-processes", type=int)
    multi.add_argument("--process-id", type=int)
    multi.add_argument("--init-timeout", type=int, default=300, help="seconds to wait for all processes")
    multi.add_argument(
        "--heartbeat-timeout", type=int, default=60, help="seconds without a heartbeat before a process counts as dead"
    )
    train.set_defaults(run=_train, starts_jax_itself=True)

    compare = commands.add_parser(
        "compare",
        help="the position schemes side by side: one run per model.position, one page",
        description="Trains the config once per position scheme (learned, sinusoidal, rope, alibi, none) on the "
        "same corpus, seed and steps into WORKDIR/<scheme>, and writes WORKDIR/compare.md: validation loss at the "
        "trained length and at 2x and 4x it, locality and the shuffled-positions gap where defined, and the "
        "learned and sinusoidal tables side by side. Rerun to resume.",
        epilog="Override any config field with --config.FIELD=VALUE, e.g. --config.train.steps=300.",
    )
    compare.add_argument("--config", default="tiny", help=f"a named config ({', '.join(CONFIGS)}) or a config file")
    compare.add_argument("--workdir", required=True, help="one run folder per scheme goes here, and compare.md")
    _add_text_source(compare, "the config's data.corpus")
    compare.add_argument(
        "--positions", metavar="A,B", help="comma-separated schemes (default: learned,sinusoidal,rope,alibi,none)"
    )
    compare.add_argument("--no-progress", action="store_true", help="no progress bars")
    compare.set_defaults(run=_compare)

    step_help = "which checkpoint: latest (default), best (lowest validation loss) or a step number"
    neighbors = commands.add_parser(
        "neighbors",
        help="nearest tokens by centred cosine similarity",
        description="Ranks by cosine after subtracting the candidates' mean vector, among the tokens seen at least "
        "--min-count times in training: the same rule as the run report. Each cosine is followed by how many "
        "standard deviations of a random pair's cosine it lies above their mean (σ). A probe seen fewer than "
        "--min-count times is flagged instead of ranked (exit status 0).",
    )
    neighbors.add_argument("--workdir", required=True)
    neighbors.add_argument("tokens", nargs="+", help='single GPT-2 tokens, e.g. " Romeo" (mind the space)')
    neighbors.add_argument("-k", type=int, default=8, help="neighbours per token")
    neighbors.add_argument(
        "--min-count",
        type=int,
        default=3,
        help="rank among tokens seen at least this often in training (default 3, as the report)",
    )
    neighbors.add_argument("--step", type=_step, default="latest", help=step_help)
    neighbors.set_defaults(run=_neighbors)

    export = commands.add_parser("export", help="token and position tables as .npy, and projector TSVs")
    export.add_argument("--workdir", required=True)
    export.add_argument(
        "--tokens",
        type=int,
        help="export the N most frequent tokens to the TSVs (default: the run's report.projector_tokens, as TensorBoard's)",
    )
    export.add_argument("--out", help="output folder (default: WORKDIR/projector)")
    export.add_argument("--step", type=_step, default="latest", help=step_help)
    export.set_defaults(run=_export)

    reference = commands.add_parser(
        "reference",
        help="a run's tables next to GPT-2's own: WORKDIR/reference.md",
        description="Compares a run's token and position tables with GPT-2 124M's (wte and wpe, 157.5 MB "
        "downloaded once by byte range into $JAXEMBED_CACHE, then read from there): the position tables' "
        "similarity maps and principal-component paths (GPT-2's helix), and the nearest neighbours of the run "
        "report's probes in both tables by the same rule. Writes reference.md, reference.json and three "
        "pictures into WORKDIR, and links the page from its report.md. Offline with nothing cached: one line, "
        "exit status 2, nothing written.",
    )
    reference.add_argument("--workdir", required=True)
    reference.add_argument(
        "--url",
        help="GPT-2's model.safetensors: a mirror's address or a local copy (default: $JAXEMBED_GPT2_URL, else the "
        "pinned Hugging Face file)",
    )
    reference.add_argument(
        "--step", type=_step, default="best", help="which checkpoint: best (default), latest or a step number"
    )
    reference.set_defaults(run=_reference)

    sample = commands.add_parser(
        "sample",
        help="text from a run's model: the prompt and its sampled continuation",
        description="Samples one token at a time from the checkpoint's model (one compiled step per token). Past "
        "the context (data.max_length) the window slides: each token sees the last max_length tokens. The same "
        "--seed gives the same text; --top-k 1 is greedy decoding.",
    )
    sample.add_argument("--workdir", required=True)
    sample.add_argument("--prompt", required=True, help="the text to continue, at most data.max_length tokens")
    sample.add_argument("--tokens", type=int, default=60, help="tokens to sample (default 60)")
    # Defaults: nn.sampling.SUGGESTED_* (the run report's), filled in by _sample so that --help
    # does not import JAX.
    sample.add_argument(
        "--temperature", type=float, default=None, help="divide the logits by this (> 0; default 0.8, as the report)"
    )
    sample.add_argument(
        "--top-k",
        type=int,
        default=None,
        help="sample among the K most likely tokens (default 40, as the report; the vocabulary size: all)",
    )
    sample.add_argument("--seed", type=int, default=0, help="sampling seed (default 0)")
    sample.add_argument("--step", type=_step, default="latest", help=step_help)
    sample.set_defaults(run=_sample)

    tok = commands.add_parser(
        "tokenize",
        help="text files -> a memory-mapped token directory (then: train --tokens DIR)",
        epilog="Example: jaxembed tokenize books/ --out tok/ && jaxembed train --workdir runs/books --tokens tok/",
    )
    tok.add_argument("inputs", nargs="+", metavar="INPUT", help="text files, directories or glob patterns")
    tok.add_argument("--out", required=True, metavar="DIR", help="writes DIR/tokens.npy and DIR/meta.json")
    tok.add_argument("--tokenizer", default="gpt2", help="tiktoken encoding (default: gpt2, works offline)")
    tok.add_argument("--workers", type=int, default=None, help="encoding threads (default: one per CPU)")
    tok.add_argument("--glob", default="*.txt", help="file name pattern inside directories (default: *.txt)")
    tok.add_argument("--overwrite", action="store_true", help="replace a different corpus already in --out")
    tok.set_defaults(run=_tokenize)

    walk = commands.add_parser("walkthrough", help="print the seed notebook's walk-through")
    _add_text_source(walk, "romeo-juliet")
    walk.add_argument("--batch-size", type=int, default=8)
    walk.add_argument("--max-length", type=int, default=4)
    walk.add_argument("--features", type=int, default=256)
    walk.add_argument(
        "--strip-gutenberg",
        action="store_true",
        help="cut a Project Gutenberg header and licence first, as train does (default: keep them, as the seed did)",
    )
    walk.set_defaults(run=_walkthrough)

    plan = commands.add_parser(
        "plan",
        help="parameters, per-device memory and FLOPs of a config's train step (compiles, never runs)",
        epilog="Override any config field with --config.FIELD=VALUE, e.g. --config.model.loss_tile_tokens=0.",
    )
    plan.add_argument(
        "--config",
        default="tiny",
        help=f"a named config ({', '.join(CONFIGS)}; default: tiny) or an ml_collections config file",
    )
    plan.add_argument("--json", action="store_true", help="print one JSON object instead of the table")
    plan.add_argument(
        "--devices",
        type=int,
        metavar="N",
        help="plan for N devices (default: all of this backend's); on CPU, N host devices are made",
    )
    _add_text_source(plan, "none: no tokens-per-epoch figure")
    plan.set_defaults(run=_plan)
    return parser


class _ConsoleHandler(logging.Handler):
    """The library's log lines as the CLI shows them: info on stdout, warnings on stderr."""

    def emit(self, record: logging.LogRecord) -> None:
        # sys.stdout/sys.stderr are looked up per record, so redirection (and pytest's capsys) sees them.
        if record.levelno >= logging.WARNING:
            print(f"warning: {record.getMessage()}", file=sys.stderr, flush=True)
        else:
            print(record.getMessage(), flush=True)


@contextlib.contextmanager
def _console_logging():
    logger = logging.getLogger("jaxembed")
    handler, level, propagate = _ConsoleHandler(), logger.level, logger.propagate
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    logger.propagate = False  # shown once, here, even if something configured the root logger
    try:
        yield
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)
        logger.propagate = propagate


class _Interrupts:
    """SIGINT and SIGTERM outside the training loop stop the command like Ctrl-C, and are remembered.

    The training loop installs its own handlers (finish the step, save, stop). Elsewhere a signal
    raises KeyboardInterrupt; Python drops one raised inside a garbage-collector callback (JAX
    registers one: "Exception ignored in: <function _xla_gc_callback>"), so ``signum`` remembers
    it and ``check()`` raises it again where the command can act on it. A signal the parent set
    to be ignored (``nohup``, ``cmd &`` in a script) stays ignored, as in any Unix program.
    """

    def __init__(self):
        self.signum: int | None = None
        self._previous: dict = {}
        self._deferring = 0

    def _handle(self, signum, frame) -> None:
        self.signum = signum
        if not self._deferring:
            raise KeyboardInterrupt

    def check(self) -> None:
        """Raises KeyboardInterrupt if a signal came and its KeyboardInterrupt was deferred or swallowed."""
        if self.signum is not None:
            raise KeyboardInterrupt

    @contextlib.contextmanager
    def deferred(self):
        """Signals inside are noted, and raised as KeyboardInterrupt when the block ends.

        For imports: a KeyboardInterrupt raised while a native extension initialises (jaxlib's and
        matplotlib's modules call back into Python) aborts the process ("terminate called after
        throwing an instance of 'nanobind::python_error'", or a segmentation fault).
        """
        self._deferring += 1
        try:
            yield
        finally:
            self._deferring -= 1
        self.check()

    def _unraisable(self, unraisable) -> None:
        # The swallowed KeyboardInterrupt is remembered in signum: no "Exception ignored" traceback.
        if not isinstance(unraisable.exc_value, KeyboardInterrupt):
            self._previous_unraisablehook(unraisable)

    def __enter__(self) -> _Interrupts:
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                if signal.getsignal(sig) is not signal.SIG_IGN:
                    self._previous[sig] = signal.signal(sig, self._handle)
        self._previous_unraisablehook, sys.unraisablehook = sys.unraisablehook, self._unraisable
        return self

    def __exit__(self, *exc) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous.clear()
        sys.unraisablehook = self._previous_unraisablehook


_interrupts = _Interrupts()


def main(argv: list[str] | None = None, *, own_process: bool = False) -> int:
    """Entry point of the ``jaxembed`` console script.

    ``own_process=True`` (the console script) says the process exists for this command, so settings
    of the whole process are made before JAX starts: ``jaxembed.train.tune_cpu_allocator``.
    """
    command = "jaxembed"
    try:
        # First of all: a Ctrl-C during the imports below (seconds) must be neither lost nor fatal.
        with _interrupts:
            with _interrupts.deferred():  # tiktoken, jax, flax, orbax, grain
                args, extra = build_parser().parse_known_args(argv)
                command = f"jaxembed {args.command}"
                from jaxembed.train.allocator import tune_cpu_allocator
                from jaxembed.train.loop import Interrupted, Preempted
                from jaxembed.train.trainer import check_platforms
            if own_process:
                tune_cpu_allocator()  # before JAX's CPU client starts its threads (check_platforms, the run)
                # The modules' objects (about 200,000: jax, flax, orbax, grain) live as long as the
                # process; no collection of the oldest generation need walk them again (0.15 s a run).
                gc.freeze()
            # What a user can fix ends in one line: jaxembed's own errors, and OSError (a disk that is
            # full or a folder that is not writable: the environment, not a bug). Anything else is a
            # bug and keeps its traceback.
            user_errors = (JaxembedError, OSError)
            with _console_logging():
                try:
                    if not getattr(args, "starts_jax_itself", False):
                        check_platforms()
                    code = args.run(args, extra)
                    _interrupts.check()
                    return code
                except (Preempted, Interrupted) as e:  # not errors: the run stopped cleanly
                    print(f"{command}: {e}", file=sys.stderr)
                    return 128 + e.signum
                except user_errors as e:
                    print(f"{command}: error: {e}", file=sys.stderr)
                    return 2
    except KeyboardInterrupt:  # Ctrl-C or SIGTERM outside the training loop (or a second one inside it)
        print(f"{command}: interrupted; files already written are complete.", file=sys.stderr)
        return 128 + (_interrupts.signum or signal.SIGINT)  # 143 for SIGTERM, as the README says
    finally:
        _interrupts.signum = None  # main() may be called again in the same process (tests)


def console_main() -> None:
    """The ``jaxembed`` console script: ``main()``, then exit with its status.

    Once main() has returned, the work is done and its files are complete: a Ctrl-C during the
    interpreter's shutdown (background threads of orbax, Grain, TensorBoard finishing) must not
    turn a finished command into death by SIGINT.
    """
    code = main(own_process=True)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    # Every file is closed: spare the interpreter's exit its collections over objects it is about to
    # drop (half a second after a run); nothing left holds a file or a lock to release.
    gc.freeze()
    sys.exit(code)


if __name__ == "__main__":
    console_main()
