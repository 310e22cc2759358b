"""Publish runs on the Hugging Face Hub: a generated model card, and pushes that never stall or kill training.

    sslnlp push runs/tiny-cpu your-name/tiny-bert                       # a finished run, once
    sslnlp pretrain recipes/tiny-cpu.yaml hub.push_to_hub=true hub.hub_model_id=your-name/tiny-bert
    accelerate launch --config_file recipes/accelerate/ddp-8gpu.yaml -m sslnlp pretrain recipes/bert-base.yaml \
        hub.push_to_hub=true hub.hub_model_id=your-name/bert hub.hub_strategy=checkpoint

The token comes from where ``huggingface_hub`` looks for it (``HF_TOKEN``, then ``hf auth login``'s cache); it is
never part of a config, never logged and never written to the run directory.

Why pushes cannot hang a distributed run: only the main process talks to the Hub, from one background thread, and
only after the collective part of a save (checkpoint, export) has returned on every rank. The other ranks never wait
on the network; the main process's training thread only hands a folder to the thread. Transient failures (network
errors, 408/429/5xx) are retried with exponential backoff; a push that finally fails is logged as one warning line and
training goes on; at the end the run waits (at most ``hub.hub_wait_timeout`` seconds) for pending pushes and reports
their outcome. Each push uploads an immutable snapshot (hard links of finished files, copies of files that a run may
still append to), so nothing is read while it is being rewritten.
"""

from __future__ import annotations

import json
import logging
import os
import random
import shutil
import tempfile
import threading
import time
from pathlib import Path

from sslnlp.files import write_text_atomic
from sslnlp.publishing.card import (
    CHECKPOINT_IN_REPO,
    LOSS_CHART,
    format_number,
    is_generated_card,
    read_json,
    read_jsonl,
    version,
    write_model_card,
)

logger = logging.getLogger(__name__)

STAGING_DIR = "hub-staging"  # under output_dir: snapshots waiting for (or being) uploaded
# Top-level files of a run that are published: weights, configs, tokenizer files, metrics, results, recipe.
PUBLISHED_FOLDERS = ("generator", "1_Pooling")  # subfolders an objective's export writes, pushed with the model
PUBLISHED_SUFFIXES = (".safetensors", ".json", ".jsonl", ".txt", ".model", ".yaml", ".md", ".jinja")
LINK_AT_LEAST_BYTES = 16 * 2**20  # big files (weights) are hard-linked into snapshots, small ones copied
MAX_RETRY_DELAY = 300.0
_JITTER = random.Random()  # its own generator: the training's seeded `random` state is not touched by retries


class HubPushError(OSError):
    """A push that failed for good (after its retries): one line saying what failed and why."""

    attempts: int = 1


# ------------------------------------------------------------------------------------------------- snapshots


def published_files(output_dir: str | Path) -> list[Path]:
    """The top-level files of a run that go to the Hub (never checkpoints/, hidden or temporary files)."""
    return sorted(path for path in Path(output_dir).iterdir()
                  if path.is_file() and not path.name.startswith(".") and path.name.endswith(PUBLISHED_SUFFIXES))


def _place(source: Path, target: Path, immutable: bool) -> None:
    """Hard-link ``source`` at ``target`` when it will not change (or is big), else copy it."""
    target.parent.mkdir(parents=True, exist_ok=True)
    if immutable or source.stat().st_size >= LINK_AT_LEAST_BYTES:
        try:
            os.link(source, target)
            return
        except OSError:  # filesystems without hard links: copy
            pass
    shutil.copy2(source, target)


def snapshot_run(output_dir: str | Path, destination: str | Path, checkpoint: str | Path | None = None,
                 extra_files: list[Path] | None = None) -> Path:
    """Build ``destination``: the run's published files (and a checkpoint as last-checkpoint/), frozen for upload.

    Checkpoint directories never change once complete (they are renamed into place, and pruning only unlinks), so
    their files are hard-linked; the run's top-level files are copied unless big (weights, written once at export).
    """
    destination = Path(destination)
    destination.mkdir(parents=True, exist_ok=True)
    for path in published_files(output_dir) + list(extra_files or []):
        if not (destination / path.name).exists():
            _place(path, destination / path.name, immutable=False)
    for folder in PUBLISHED_FOLDERS:  # exports beside the model: ELECTRA's generator, sentence-transformers pooling
        for path in sorted((Path(output_dir) / folder).rglob("*")) if (Path(output_dir) / folder).is_dir() else []:
            if path.is_file() and not path.name.startswith("."):
                _place(path, destination / path.relative_to(output_dir), immutable=False)
    if checkpoint is not None:
        checkpoint = Path(checkpoint)
        for path in sorted(checkpoint.rglob("*")):
            if path.is_file():
                _place(path, destination / CHECKPOINT_IN_REPO / path.relative_to(checkpoint), immutable=True)
    return destination


# -------------------------------------------------------------------------------------------------- pushing


def is_transient(error: BaseException) -> bool:
    """Worth retrying: network errors, timeouts, 408 / 429 / 5xx. Not: auth, permissions, missing repo, bad input,
    offline mode."""
    status = getattr(getattr(error, "response", None), "status_code", None)
    if isinstance(status, int):
        return status in (408, 429) or status >= 500
    if type(error).__name__ == "OfflineModeIsEnabled" or isinstance(error, (ValueError, FileNotFoundError, TypeError)):
        return False
    return True  # connection refused / reset, DNS, timeouts, other OSErrors


def describe_error(error: BaseException, token: str | None = None) -> str:
    """One line, without the token (huggingface_hub never puts it in messages; this makes sure)."""
    text = (str(error).strip().splitlines() or [""])[0] or type(error).__name__
    if token:
        text = text.replace(token, "hf_***")
    return f"{type(error).__name__}: {text}"


def _resolved_token(token: str | None) -> str | None:
    if token:
        return token
    try:
        from huggingface_hub import get_token

        return get_token()
    except Exception:  # noqa: BLE001 - only used to redact messages
        return None


def _quiet_progress_bars():
    """huggingface_hub's upload bars off while a background push runs (the training bar owns the terminal)."""
    import contextlib

    try:
        from huggingface_hub import constants
        from huggingface_hub.utils import are_progress_bars_disabled, disable_progress_bars
    except ImportError:  # pragma: no cover
        return contextlib.nullcontext()
    if constants.HF_HUB_DISABLE_PROGRESS_BARS is False or are_progress_bars_disabled() \
            or not hasattr(disable_progress_bars, "__enter__"):
        return contextlib.nullcontext()  # asked for explicitly, already off, or an older huggingface_hub
    return disable_progress_bars()


def _hub_api(token: str | None, process_index: int = 0):
    from huggingface_hub import HfApi

    # HF_ENDPOINT is read now (huggingface_hub reads it once, at import), so a process can be pointed elsewhere.
    return HfApi(endpoint=os.environ.get("HF_ENDPOINT") or None, token=token, library_name="sslnlp",
                 library_version=version(), user_agent={"sslnlp-process": str(process_index)})


def prepare_repo(repo_id: str, *, private: bool = False, revision: str | None = None, token: str | None = None,
                 process_index: int = 0) -> None:
    """Create the repository (and the branch) if missing; an existing one keeps its visibility."""
    api = _hub_api(token, process_index)
    api.create_repo(repo_id, private=private, exist_ok=True, repo_type="model")
    if revision and revision != "main":
        api.create_branch(repo_id, branch=revision, exist_ok=True, repo_type="model")


def upload_snapshot(folder: str | Path, repo_id: str, *, path_in_repo: str = "", revision: str | None = None,
                    token: str | None = None, commit_message: str = "Upload with sslnlp", process_index: int = 0) -> str:
    """One commit of every file under ``folder`` (through ``upload_folder``); return the commit URL."""
    api = _hub_api(token, process_index)
    info = api.upload_folder(repo_id=repo_id, folder_path=str(folder), path_in_repo=path_in_repo or None,
                             commit_message=commit_message, revision=revision, repo_type="model")
    return str(getattr(info, "commit_url", info))


def with_retries(action, *, max_attempts: int, retry_delay: float, what: str, token: str | None = None,
                 sleep=time.sleep) -> tuple[object, int]:
    """Run ``action()``; retry transient failures with exponential backoff (and jitter); return (result, attempts).

    Raises:
        HubPushError: the last error, in one line, when the attempts are spent or the error is not transient.
    """
    for attempt in range(1, max_attempts + 1):
        try:
            return action(), attempt
        except Exception as error:  # noqa: BLE001 - classified below, re-raised as one line
            message = describe_error(error, token)
            if attempt >= max_attempts or not is_transient(error):
                why = f"after {attempt} attempts" if attempt > 1 else ("(not retried: not a transient error)"
                                                                       if not is_transient(error) else "after 1 attempt")
                failure = HubPushError(f"{what} failed {why}: {message}")
                failure.attempts = attempt
                raise failure from error
            delay = min(retry_delay * 2 ** (attempt - 1), MAX_RETRY_DELAY) * _JITTER.uniform(1.0, 1.25)
            logger.info("%s: attempt %d failed (%s); retrying in %.1f s", what, attempt, message, delay)
            sleep(delay)
    raise AssertionError("unreachable")  # pragma: no cover


def push_to_hub(output_dir: str | Path, repo_id: str, *, private: bool = False, revision: str | None = None,
                token: str | None = None, commit_message: str | None = None, results: str | Path | dict | None = None,
                include_checkpoint: bool = False, max_attempts: int = 5, retry_delay: float = 2.0) -> dict:
    """Push a finished run (weights, config, tokenizer, metrics, summary, recipe and a model card) to the Hub.

    Args:
        output_dir: the run directory (``output_dir`` of ``sslnlp pretrain``).
        repo_id: "owner/name" (or "name" in your namespace); created if missing.
        private: create the repository as private.
        revision: branch to push to (created from main if missing).
        token: a Hugging Face token; default: ``HF_TOKEN`` or the cached login (never written anywhere).
        commit_message: the commit's summary line.
        results: an evaluation's results.json (path or dict) to show in the card; default: output_dir/results.json.
        include_checkpoint: also push the newest checkpoint as last-checkpoint/ (resumable from the Hub).
        max_attempts, retry_delay: retries of transient failures, with exponential backoff.

    Returns:
        {"repo_id", "commit_url", "attempts", "files"}.

    Raises:
        HubPushError (an OSError) when the push fails for good; ValueError when output_dir holds no exported model.
    """
    from sslnlp.files import find_latest_checkpoint

    output_dir = Path(output_dir)
    if not (output_dir / "config.json").is_file() or not list(output_dir.glob("*.safetensors")):
        raise ValueError(f"{output_dir} holds no exported model (config.json + *.safetensors); push the output_dir "
                         "of a finished `sslnlp pretrain` run")
    checkpoint = find_latest_checkpoint(output_dir) if include_checkpoint else None
    if include_checkpoint and checkpoint is None:
        raise ValueError(f"{output_dir}/checkpoints holds no complete checkpoint to push as {CHECKPOINT_IN_REPO}/")
    if isinstance(results, (str, Path)):
        path = Path(results)
        results = read_json(path)
        if results is None:
            raise ValueError(f"{path} is not a readable results.json (from sslnlp probe / finetune)")
    staging = output_dir / STAGING_DIR
    staging.mkdir(exist_ok=True)
    snapshot = Path(tempfile.mkdtemp(prefix="push-", dir=staging))
    try:
        snapshot_run(output_dir, snapshot, checkpoint)
        if results is not None:
            (snapshot / "results.json").write_text(json.dumps(results, indent=2))
        _card(snapshot, output_dir, repo_id, revision=revision, resumable=checkpoint is not None, results=results)
        files = sorted(str(p.relative_to(snapshot)) for p in snapshot.rglob("*") if p.is_file())
        resolved = _resolved_token(token)

        def push():
            prepare_repo(repo_id, private=private, revision=revision, token=token)
            return upload_snapshot(snapshot, repo_id, revision=revision, token=token,
                                   commit_message=commit_message or f"Upload {output_dir.name} with sslnlp")

        commit_url, attempts = with_retries(push, max_attempts=max_attempts, retry_delay=retry_delay,
                                            what=f"push of {output_dir} to {repo_id}", token=resolved)
    finally:
        shutil.rmtree(snapshot, ignore_errors=True)
        _remove_if_empty(staging)
    return {"repo_id": repo_id, "commit_url": commit_url, "attempts": attempts, "files": files}


def _remove_if_empty(directory: Path) -> None:
    try:
        directory.rmdir()
    except OSError:  # not empty (another push still uses it) or already gone
        pass


def _card(snapshot: Path, output_dir: Path, repo_id: str, *, summary: dict | None = None, revision: str | None = None,
          resumable: bool = False, results: dict | None = None) -> None:
    """Put the model card in the snapshot; keep a copy in output_dir (unless a person wrote README.md there)."""
    local = output_dir / "README.md"
    if not is_generated_card(local):
        logger.info("%s was written by hand (no sslnlp marker): pushed unchanged", local)
        return  # snapshot_run already placed the person's README.md
    text = write_model_card(snapshot, summary, repo_id=repo_id, revision=revision, resumable=resumable, results=results)
    try:
        write_text_atomic(local, text)
        if (snapshot / LOSS_CHART).is_file():  # the chart the card embeds
            shutil.copy2(snapshot / LOSS_CHART, output_dir / LOSS_CHART)
    except OSError as error:  # the local copy is a convenience
        logger.info("could not keep the model card in %s (%s)", local, error)


class BackgroundPusher:
    """Uploads folders to one Hub repository from a single daemon thread; never raises into the caller.

    ``submit`` returns at once; the thread creates the repository on first use, uploads each folder as one commit,
    retries transient failures with exponential backoff, and logs one warning line when a push fails for good.
    A folder submitted while an older one for the same ``path_in_repo`` still waits replaces it (the older one is
    superseded: under a slow network, snapshots do not pile up on disk). ``wait`` returns the outcomes.

    Args:
        repo_id, private, revision, token: where to push (token: default from HF_TOKEN / the cached login).
        max_attempts: tries per push.
        retry_delay: seconds before the first retry, doubling after each (at most 5 minutes).
        process_index: sent in the user agent, so a server can tell which process pushed.
    """

    def __init__(self, repo_id: str, *, private: bool = False, revision: str | None = None, token: str | None = None,
                 max_attempts: int = 5, retry_delay: float = 2.0, process_index: int = 0):
        self.repo_id, self.private, self.revision, self.token = repo_id, private, revision, token
        self.max_attempts, self.retry_delay, self.process_index = max(1, max_attempts), retry_delay, process_index
        self.outcomes: list[dict] = []
        self._pending: list[dict] = []
        self._running: dict | None = None
        self._repo_ready = False
        self._closed = threading.Event()
        self._condition = threading.Condition()
        self._thread: threading.Thread | None = None

    def submit(self, folder: str | Path, path_in_repo: str = "", message: str = "Upload with sslnlp", *,
               cleanup: bool = False) -> None:
        """Queue ``folder`` for upload under ``path_in_repo`` as one commit (``cleanup``: delete it afterwards)."""
        try:
            job = {"folder": Path(folder), "path_in_repo": path_in_repo, "message": message, "cleanup": cleanup}
            with self._condition:
                for older in [j for j in self._pending if j["path_in_repo"] == path_in_repo]:
                    self._pending.remove(older)
                    self._finish(older, status="superseded", error=f"replaced by the newer push {message!r}")
                self._pending.append(job)
                if self._thread is None:
                    self._thread = threading.Thread(target=self._work, name="sslnlp-hub-push", daemon=True)
                    self._thread.start()
                self._condition.notify_all()
        except Exception as error:  # noqa: BLE001 - the training loop must never see a push problem
            logger.warning("Hub push of %s could not be queued (%s); training goes on", folder, describe_error(error))

    def _finish(self, job: dict, status: str, error: str | None = None, commit_url: str | None = None,
                attempts: int = 0, seconds: float = 0.0) -> None:
        self.outcomes.append({"message": job["message"], "path_in_repo": job["path_in_repo"], "status": status,
                              "ok": status == "pushed", "attempts": attempts, "commit_url": commit_url,
                              "error": error, "seconds": round(seconds, 3)})
        if job["cleanup"]:
            shutil.rmtree(job["folder"], ignore_errors=True)

    def _work(self) -> None:
        resolved = _resolved_token(self.token)
        while True:
            with self._condition:
                while not self._pending and not self._closed.is_set():
                    self._condition.wait()
                if self._closed.is_set():
                    return
                job = self._running = self._pending.pop(0)
            start = time.perf_counter()
            try:
                def push():
                    if self._closed.is_set():  # not transient: no further attempt once the run stopped waiting
                        raise ValueError("abandoned: the run stopped waiting for pushes")
                    if not self._repo_ready:
                        prepare_repo(self.repo_id, private=self.private, revision=self.revision, token=self.token,
                                     process_index=self.process_index)
                        self._repo_ready = True
                    return upload_snapshot(job["folder"], self.repo_id, path_in_repo=job["path_in_repo"],
                                           revision=self.revision, token=self.token, commit_message=job["message"],
                                           process_index=self.process_index)

                with _quiet_progress_bars():
                    commit_url, attempts = with_retries(push, max_attempts=self.max_attempts, retry_delay=self.retry_delay,
                                                        what=f"Hub push {job['message']!r} to {self.repo_id}",
                                                        token=resolved, sleep=self._closed.wait)
                outcome = {"status": "pushed", "commit_url": commit_url, "attempts": attempts}
                logger.info("pushed %r to %s in %.1f s (%s)", job["message"], self.repo_id,
                            time.perf_counter() - start, commit_url)
            except BaseException as error:  # noqa: BLE001 - reported, never raised: training goes on
                outcome = {"status": "failed", "error": str(error), "attempts": getattr(error, "attempts", 1)}
                logger.warning("%s; training goes on", error)
            with self._condition:
                self._running = None
                self._finish(job, seconds=time.perf_counter() - start, **outcome)
                self._condition.notify_all()

    def wait(self, timeout: float | None = None) -> list[dict]:
        """Wait until every submitted push has finished (or ``timeout`` seconds passed); return all outcomes,
        including the ones still pending (``status`` "pending"), which are then abandoned."""
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._condition:
            while self._pending or self._running is not None:
                left = None if deadline is None else deadline - time.monotonic()
                if left is not None and left <= 0:
                    break
                self._condition.wait(left)
            outcomes = list(self.outcomes)
            for job in ([self._running] if self._running else []) + self._pending:
                outcomes.append({"message": job["message"], "path_in_repo": job["path_in_repo"], "status": "pending",
                                 "ok": False, "attempts": 0, "commit_url": None,
                                 "error": f"still uploading after waiting {timeout:.0f} s; abandoned", "seconds": 0.0})
        return outcomes

    def close(self) -> None:
        """Stop the thread after its current attempt (pending pushes are abandoned)."""
        self._closed.set()
        with self._condition:
            self._condition.notify_all()


# ------------------------------------------------------------------------------------------ the training loop


class HubSync:
    """The training loop's side of publishing; every method is a no-op unless ``hub.push_to_hub``.

    Call on every rank: ``checkpoint_saved`` right after ``save_checkpoint`` returned (for every_save / checkpoint it
    exports the model into a snapshot folder, a collective that ends with a barrier), ``finish`` after the final
    export and summary.json, ``wait`` before an early return. Only the main process queues uploads; the network is
    touched by its background thread alone.

    Args:
        options: the config's ``hub`` section (HubConfig).
        accelerator: the run's Accelerator.
        output_dir: the run directory.
    """

    def __init__(self, options, accelerator, output_dir: str | Path):
        self.options, self.accelerator, self.output_dir = options, accelerator, Path(output_dir)
        self.enabled = bool(options.push_to_hub)
        self.pusher: BackgroundPusher | None = None
        if not (self.enabled and accelerator.is_main_process):
            return
        shutil.rmtree(self.output_dir / STAGING_DIR, ignore_errors=True)  # snapshots a crashed run left behind
        try:
            token = _resolved_token(None)
        except Exception:  # noqa: BLE001
            token = None
        if not token:
            logger.warning("hub.push_to_hub is set but no Hugging Face token was found (set HF_TOKEN or run "
                           "`hf auth login`); pushes to %s will likely fail, training goes on", options.hub_model_id)
        self.pusher = BackgroundPusher(options.hub_model_id, private=options.hub_private, revision=options.hub_revision,
                                       max_attempts=options.hub_max_attempts, retry_delay=options.hub_retry_delay,
                                       process_index=accelerator.process_index)

    def checkpoint_saved(self, export, checkpoint: Path, final: bool = False) -> None:
        """After a checkpoint (every_save / checkpoint strategies): push its exported model (and training state).
        ``export(folder)`` writes the model(s) (a collective: every rank calls it). ``final``: the end of the budget,
        whose model ``finish`` pushes anyway. Same decision on every rank."""
        if not self.enabled or self.options.hub_strategy == "end" or final:
            return
        loop_state = read_json(Path(checkpoint) / "loop_state.json") or {}
        step = loop_state.get("step", 0)
        snapshot = self.output_dir / STAGING_DIR / f"step-{step:08d}"
        if self.accelerator.is_main_process:
            shutil.rmtree(snapshot, ignore_errors=True)
        export(snapshot)  # every rank (a collective); ends with a barrier
        if self.pusher is None:
            return
        try:
            with_state = self.options.hub_strategy == "checkpoint"
            # metrics.jsonl and config.yaml are copied (training appends to the first); the export is fresh
            for name in ("metrics.jsonl", "config.yaml"):
                if (self.output_dir / name).is_file():
                    shutil.copy2(self.output_dir / name, snapshot / name)
            if with_state:
                for path in sorted(Path(checkpoint).rglob("*")):
                    if path.is_file():
                        _place(path, snapshot / CHECKPOINT_IN_REPO / path.relative_to(checkpoint), immutable=True)
            last = next((r for r in reversed(read_jsonl(snapshot / "metrics.jsonl")) if r.get("loss") is not None), {})
            progress = {"steps": step, "tokens": loop_state.get("tokens"), "train_runtime": loop_state.get("elapsed"),
                        "train_loss": last.get("loss"), "world_size": self.accelerator.num_processes}
            write_model_card(snapshot, progress, repo_id=self.options.hub_model_id, revision=self.options.hub_revision,
                             resumable=with_state)
            self.pusher.submit(snapshot, message=f"Checkpoint at step {step}" + (" (with training state)" if with_state else ""),
                               cleanup=True)
        except Exception as error:  # noqa: BLE001 - a push problem never stops training
            logger.warning("Hub push of step %s skipped (%s); training goes on", step, describe_error(error))
            shutil.rmtree(snapshot, ignore_errors=True)

    def finish(self, summary: dict) -> list[dict]:
        """Push the final model (main process), wait for every pending push, log and return the outcomes."""
        if self.pusher is None:
            return []
        from sslnlp.files import find_latest_checkpoint

        try:
            checkpoint = find_latest_checkpoint(self.output_dir) if self.options.hub_strategy == "checkpoint" else None
            snapshot = snapshot_run(self.output_dir, self.output_dir / STAGING_DIR / "final", checkpoint)
            _card(snapshot, self.output_dir, self.options.hub_model_id, summary=summary, revision=self.options.hub_revision,
                  resumable=checkpoint is not None)
            self.pusher.submit(snapshot, message=f"End of training: step {summary.get('steps')}, "
                                                 f"{format_number(summary.get('tokens'))} tokens", cleanup=True)
        except Exception as error:  # noqa: BLE001
            logger.warning("Hub push of the final model skipped (%s)", describe_error(error))
        return self.wait()

    def wait(self) -> list[dict]:
        """Wait (at most hub.hub_wait_timeout seconds) for pending pushes; log and return their outcomes."""
        if self.pusher is None:
            return []
        outcomes = self.pusher.wait(self.options.hub_wait_timeout)
        self.pusher.close()
        _remove_if_empty(self.output_dir / STAGING_DIR)
        for outcome in outcomes:
            if outcome["ok"]:
                logger.info("hub: pushed %r to %s (%s)", outcome["message"], self.options.hub_model_id,
                            outcome["commit_url"])
            elif outcome["status"] != "superseded":
                logger.warning("hub: %r was NOT pushed to %s: %s", outcome["message"], self.options.hub_model_id,
                               outcome["error"])
        return outcomes


# -------------------------------------------------------------------------------------------------- command
