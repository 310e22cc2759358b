"""Heartbeats between the processes of a run, so that a lost process is named and the others never hang.

When one rank of a multi-process run dies (kill -9, out of memory, a machine gone), the others learn it only from a
failing collective: gloo says "Connection reset by peer [10.0.0.2]:52897" (an address and a port, never a rank), and
a peer that is stopped rather than dead (a hung machine, a cut network) sends nothing at all, so the survivors block in
the collective until its timeout (30 minutes on gloo). On one machine torchrun's agent kills the survivors; across
machines each agent sees only its own workers, and the survivor's report even blames the survivor.

So every rank runs a daemon thread that, once a second, writes a counter to ``sslnlp/heartbeat/RANK`` in the launch's
rendezvous store (MASTER_ADDR:MASTER_PORT, its own client connection; the counter needs no common clock) and reads the
others'. A peer whose counter has not moved for ``training.peer_timeout`` seconds is lost: the thread logs one line
naming its rank, host and pid, and ends the process (``os._exit``: the main thread may be blocked inside a collective
where no Python runs). A collective that fails first (the dead peer closed its sockets) is diagnosed the same way in
the main thread, within a few heartbeats. A store that stops answering means that machine 0, which hosts it, is lost.
A rank that finishes, or stops on an error of its own, says so in its key, so that nobody mistakes it for lost.
Checkpoints are atomic, so ``training.resume_from_checkpoint=auto`` continues from the last complete one.
"""

from __future__ import annotations

import datetime
import logging
import os
import socket
import sys
import threading
import time

logger = logging.getLogger(__name__)

INTERVAL = 1.0  # seconds between heartbeats
FINISHED, FAILED = "finished", "failed"


class PeerWatch:
    """The heartbeat thread of this rank (a no-op for one process, or with ``timeout`` 0).

    Args:
        timeout: seconds without a peer's heartbeat before it is declared lost.
        rank, world_size: this process's place (default: the launcher's RANK / WORLD_SIZE).
    """

    def __init__(self, timeout: float, rank: int | None = None, world_size: int | None = None):
        self.timeout = timeout
        self.rank = int(os.environ.get("RANK", "0")) if rank is None else rank
        self.world_size = int(os.environ.get("WORLD_SIZE", "1") or 1) if world_size is None else world_size
        self.enabled = bool(timeout) and self.world_size > 1 and "MASTER_ADDR" in os.environ
        self.me = f"{socket.gethostname()} pid {os.getpid()}"
        self.stop_event = threading.Event()
        self.thread: threading.Thread | None = None

    def _store(self):
        import torch.distributed as dist

        return dist.TCPStore(os.environ["MASTER_ADDR"], int(os.environ["MASTER_PORT"]), is_master=False,
                             timeout=datetime.timedelta(seconds=max(5.0, INTERVAL * 5)), wait_for_workers=False)

    def key(self, rank: int) -> str:
        return f"sslnlp/heartbeat/{rank}"

    def __enter__(self) -> PeerWatch:
        if self.enabled:
            self.store = self._store()
            self.store.set(self.key(self.rank), f"0 {self.me}")
            self.thread = threading.Thread(target=self._run, name="sslnlp-heartbeat", daemon=True)
            self.thread.start()
        return self

    def __exit__(self, kind, error, traceback) -> None:
        if not self.enabled:
            return
        self.stop_event.set()
        self.thread.join()
        try:  # tell the others this rank ended on purpose
            reason = FINISHED if error is None else f"{FAILED} {str(error).strip().splitlines()[0][:200] if str(error).strip() else kind.__name__}"
            self.store.set(self.key(self.rank), f"{reason} | {self.me}")
        except Exception:  # noqa: BLE001 - the store's machine is gone; nothing to tell
            pass

    def _beats(self, store) -> list[str]:
        values = store.multi_get([self.key(rank) for rank in range(self.world_size)])
        return [value.decode() for value in values]

    def _run(self) -> None:
        counter, last_seen, last_value, store_ok = 0, {}, {}, time.monotonic()
        started = time.monotonic()
        while not self.stop_event.wait(INTERVAL):
            counter += 1
            now = time.monotonic()
            try:
                self.store.set(self.key(self.rank), f"{counter} {self.me}")
                beats = self._beats(self.store) if self.store.check([self.key(r) for r in range(self.world_size)]) else []
                store_ok = now
            except Exception as error:  # noqa: BLE001 - judged below, after the timeout
                if now - store_ok > self.timeout:
                    self._give_up(self.store_lost(error))
                continue
            for rank, value in enumerate(beats):
                if rank == self.rank or value.startswith((FINISHED, FAILED)):
                    continue
                if last_value.get(rank) != value:
                    last_value[rank], last_seen[rank] = value, now
                elif now - last_seen.get(rank, started) > self.timeout:
                    self._give_up(self.describe(rank, value, f"no heartbeat for {self.timeout:g} s"))

    def _give_up(self, lost: str) -> None:
        message = (f"sslnlp: error: rank {self.rank} ({self.me}) stops: lost {lost}; restart every launch with "
                   "training.resume_from_checkpoint=auto once the machines are back")
        logger.error(message)
        print(message, file=sys.stderr, flush=True)
        os._exit(3)  # the main thread may be blocked inside a collective, where no Python runs

    def describe(self, rank: int, value: str, why: str) -> str:
        where = value.split(" ", 1)[1] if " " in value else "?"
        return f"rank {rank} ({where}): {why}"

    def store_lost(self, error) -> str:
        """Machine 0 hosts the rendezvous store (torchrun's agent there), and its processes are ranks 0 to
        LOCAL_WORLD_SIZE - 1 (torchrun numbers machines' processes in order)."""
        local = int(os.environ.get("LOCAL_WORLD_SIZE", "1") or 1)
        ranks = "rank 0" if local == 1 else f"ranks 0-{local - 1}"
        return (f"{ranks} (machine 0: the rendezvous store it hosts at {os.environ.get('MASTER_ADDR')}:"
                f"{os.environ.get('MASTER_PORT')} stopped answering, "
                f"{str(error).splitlines()[0][:120] if str(error) else type(error).__name__}; or the network is down)")

    def diagnose(self, grace: float | None = None) -> str | None:
        """After a failed collective: which peers stopped beating (watched for ``grace`` seconds, a few heartbeats),
        or None when every peer still beats (the failure was something else)."""
        if not self.enabled:
            return None
        grace = min(self.timeout, 3 * INTERVAL + 0.5) if grace is None else grace
        try:
            store = self._store()
            first = self._beats(store)
            time.sleep(grace)
            second = self._beats(store)
        except Exception as error:  # noqa: BLE001
            return self.store_lost(error)
        lost = []
        for rank, (before, after) in enumerate(zip(first, second)):
            if rank == self.rank:
                continue
            if after.startswith(FAILED):
                lost.append(f"rank {rank} ({after.split(' | ', 1)[-1]}): it stopped on its own error: "
                            f"{after.split(' | ', 1)[0][len(FAILED) + 1:]}")
            elif before == after and not after.startswith(FINISHED):
                lost.append(self.describe(rank, after, f"its heartbeat stopped (unchanged for {grace:.1f} s)"))
        return "; ".join(lost) or None
