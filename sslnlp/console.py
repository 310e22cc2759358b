"""What a run prints, and where the full detail goes.

The console gets sslnlp's own lines (what the run is doing, one line per evaluation and probe, the result), one
progress bar on a terminal (elsewhere: a plain progress line at most once a minute), and the warnings of other
libraries; their INFO chatter does not reach it. ``--quiet`` keeps warnings and errors only, ``--verbose`` adds every
library's INFO lines with timestamps. Whatever the console shows, the run directory's ``train.log`` gets sslnlp's
lines and the libraries' INFO lines and warnings, with timestamps.

From Python, ``pretrain()`` prints the same lines (sslnlp's logger gets a console handler of its own, as
transformers' does); silence them with ``logging.getLogger("sslnlp").setLevel(logging.WARNING)``.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import time
from pathlib import Path

VERBOSITIES = ("quiet", "normal", "verbose")
CONSOLE_HANDLER = "sslnlp-console"
LIBRARY_HANDLER = "sslnlp-libraries"
DETAILED = "%(asctime)s %(levelname)s %(name)s: %(message)s"

logger = logging.getLogger("sslnlp")


class _LibraryConsoleFilter(logging.Filter):
    """Other libraries on the console: warnings and errors (every record when verbose)."""

    def __init__(self, verbose: bool):
        super().__init__()
        self.verbose = verbose

    def filter(self, record: logging.LogRecord) -> bool:
        return self.verbose or record.levelno >= logging.WARNING


class StderrHandler(logging.StreamHandler):
    """A handler that writes to whatever ``sys.stderr`` is when a record comes: a notebook, a test runner or a caller
    that redirects stderr after the console was set up gets the lines, instead of a stream that may be closed."""

    def __init__(self):
        super().__init__()

    @property
    def stream(self):
        return sys.stderr

    @stream.setter
    def stream(self, value):  # StreamHandler.__init__ / setStream: the stream is always the current stderr
        pass


def _sslnlp_console_handler() -> logging.Handler | None:
    return next((h for h in logger.handlers if h.get_name() == CONSOLE_HANDLER), None)


def set_up_console(verbosity: str | None = None) -> None:
    """sslnlp's console handler (idempotent; with ``verbosity`` also the level and the other libraries' routing).

    Args:
        verbosity: "quiet", "normal" or "verbose" (the CLI's flags); None keeps what is set (Python API).
    """
    handler = _sslnlp_console_handler()
    if handler is None:
        handler = StderrHandler()
        handler.set_name(CONSOLE_HANDLER)
        handler.setFormatter(logging.Formatter("%(message)s"))
        logger.addHandler(handler)
        logger.propagate = False  # its own handler: root handlers (basicConfig) would print each line twice
        if logger.level == logging.NOTSET:
            logger.setLevel(logging.INFO)
    if verbosity is None:
        return
    if verbosity not in VERBOSITIES:
        raise ValueError(f"verbosity {verbosity!r}; choose one of {', '.join(VERBOSITIES)}")
    verbose = verbosity == "verbose"
    logger.setLevel(logging.DEBUG if verbose else logging.INFO)  # train.log gets INFO whatever the console shows
    handler.setLevel({"quiet": logging.WARNING, "normal": logging.INFO, "verbose": logging.DEBUG}[verbosity])
    handler.setFormatter(logging.Formatter(DETAILED if verbose else "%(message)s"))
    root = logging.getLogger()
    for old in [h for h in root.handlers if h.get_name() == LIBRARY_HANDLER]:
        root.removeHandler(old)
    libraries = StderrHandler()
    libraries.set_name(LIBRARY_HANDLER)
    libraries.setFormatter(logging.Formatter(DETAILED))
    libraries.addFilter(_LibraryConsoleFilter(verbose))
    root.addHandler(libraries)
    root.setLevel(logging.INFO)  # INFO reaches the run's log file; the console handler keeps warnings only
    logging.captureWarnings(True)  # Python warnings through the same handlers (and into the log file)
    import transformers

    transformers.utils.logging.disable_default_handler()  # its records go through root's handlers instead
    transformers.utils.logging.enable_propagation()
    if not verbose:
        transformers.utils.logging.disable_progress_bar()  # "Writing model shards" on every save


def chatty() -> bool:
    """True when sslnlp's INFO lines reach the console (not --quiet, not silenced through the logger's level)."""
    handler = _sslnlp_console_handler()
    return logger.isEnabledFor(logging.INFO) and (handler is None or handler.level <= logging.INFO)


@contextlib.contextmanager
def run_log(output_dir: str | Path, main_process: bool):
    """Everything logged while the run lasts also goes to OUTPUT_DIR/train.log (appended: a resumed run adds to it);
    only the main process writes it."""
    if not main_process:
        yield
        return
    from sslnlp.files import ensure_writable

    ensure_writable(Path(output_dir))
    handler = logging.FileHandler(Path(output_dir) / "train.log", encoding="utf-8")
    handler.setFormatter(logging.Formatter(DETAILED))
    handler.setLevel(logging.DEBUG)
    targets = [logger, logging.getLogger()]
    if not logging.getLogger("transformers").propagate:
        targets.append(logging.getLogger("transformers"))
    for target in targets:
        target.addHandler(handler)
    try:
        yield
    finally:
        for target in targets:
            target.removeHandler(handler)
        handler.close()


@contextlib.contextmanager
def without_tied_weight_warnings():
    """Accelerate's checkpoint writer warns "Removed shared tensor ... while saving" for every model whose output
    layer shares the embedding matrix (BERT, ELECTRA, GPT-2, ...): safetensors stores a shared tensor once and loading
    ties it again (the resume tests compare every weight). Nothing for the user to do, so it is dropped while sslnlp
    saves."""

    def drop(record: logging.LogRecord) -> bool:
        return "Removed shared tensor" not in record.getMessage()

    target = logging.getLogger("accelerate.utils.other")
    target.addFilter(drop)
    try:
        yield
    finally:
        target.removeFilter(drop)


class Progress:
    """One progress bar on a terminal; in a log file or CI a plain line at most every ``interval`` seconds (and at
    the end); nothing when sslnlp is quiet, on ranks other than the main one, or with TQDM_DISABLE=1. Lines logged
    while the bar is up are written above it (tqdm's logging redirect)."""

    def __init__(self, total: float, initial: float, unit: str, main_process: bool, interval: float = 60.0):
        self.total, self.done, self.unit, self.interval = total, initial, unit, interval
        shown = main_process and chatty() and os.environ.get("TQDM_DISABLE") != "1"
        self.lines = shown and not sys.stderr.isatty()
        self.postfix = ""
        self.last_line = time.monotonic()
        self.bar, self.redirect = None, contextlib.nullcontext()
        if shown and not self.lines:
            from tqdm.auto import tqdm
            from tqdm.contrib.logging import logging_redirect_tqdm

            count = "{n:.0f}/{total:.0f}" if unit == "s" else "{n_fmt}/{total_fmt}"
            self.bar = tqdm(total=total, initial=initial, unit=unit, desc="pretrain", dynamic_ncols=True,
                            bar_format="{desc}: {percentage:3.0f}%|{bar}| " + count + " {unit} [{elapsed}<{remaining}{postfix}]")
            self.redirect = logging_redirect_tqdm(loggers=[logger, logging.getLogger()])

    def __enter__(self) -> Progress:
        self.redirect.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def update(self, amount: float) -> None:
        self.done += amount
        if self.bar is not None:
            self.bar.update(amount)
        elif self.lines and time.monotonic() - self.last_line >= self.interval:
            self._line()

    def _line(self) -> None:
        self.last_line = time.monotonic()
        share = self.done / self.total if self.total else 0.0
        logger.info(f"pretrain: {share:.0%} ({self.done:,.0f}/{self.total:,.0f} {self.unit}){self.postfix}")

    def set_postfix(self, **values) -> None:
        self.postfix = "".join(f", {key}={value}" for key, value in values.items())
        if self.bar is not None:
            self.bar.set_postfix(values)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
        elif self.lines:
            self._line()
        self.redirect.__exit__(None, None, None)
        self.bar, self.lines = None, False  # closed once
