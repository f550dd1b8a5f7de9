"""Lost and slow ranks: heartbeats, RankLost naming the lost ranks, and a barrier without deadline.

A lost rank (killed, crashed node, hung process) never hangs the others: every collective fails
after collective_timeout() at the latest (gloo and NCCL; a killed local peer fails it at once).
To NAME the lost rank, dist.init() publishes "host h, pid p" of each rank in the process group's
TCPStore and starts a heartbeat thread bumping a per-rank counter every HEARTBEAT_S seconds;
lost_rank_guard() turns a failed collective into RankLost naming the ranks whose counter stopped
(survivors mark themselves as failed first, so they are not named); each rank also warns when the
next rank's counter stalls for WARN_S, before the collective timeout. The store lives in rank 0's
process: when it is unreachable, rank 0 is the lost one.

A SLOW rank is not a lost one: wait_for_all() is the barrier for the places where ranks arrive
far apart (rank 0 writing a 65B export or converting a checkpoint, generation replicas finishing
their shares). It waits as long as the missing ranks' heartbeats move, and names them when their
heartbeat stops for the collective timeout; a plain barrier would fail after that timeout.
"""

from __future__ import annotations

import atexit
import contextlib
import datetime
import os
import socket
import sys
import threading
import time
from collections.abc import Iterator
from typing import Any

from humpback_ds.dist import barrier, collective_timeout, rank, world_size

HEARTBEAT_S = 1.0  # a rank whose counter did not move for 3 beats after a failure is lost
WARN_S = 60.0  # each rank warns when the next rank's counter stalls this long
# (HUMPBACK_HEARTBEAT_WARN_S); a warning only: a long checkpoint save may stall a rank's beats
_KEY = "humpback/{what}/{rank}"
# substrings of the errors a collective raises when a peer is gone (gloo, NCCL, c10d timeouts)
_PEER_ERRORS = ("gloo", "nccl", "connection", "timed out", "timeout", "peer", "socket", "broken")


class RankLost(RuntimeError):
    """A collective failed because the named ranks died or hung."""


class Heartbeat:
    """This rank's identity and a liveness counter in a TCPStore client of its own."""

    _instance: Heartbeat | None = None

    def __init__(self) -> None:
        import torch.distributed as td

        self.addr = os.environ.get("MASTER_ADDR", "127.0.0.1")
        self.port = int(os.environ.get("MASTER_PORT", "29500"))
        self.store = td.TCPStore(
            self.addr, self.port, is_master=False, timeout=datetime.timedelta(seconds=10)
        )
        self.lock = threading.Lock()
        self.store.set(
            _KEY.format(what="who", rank=rank()), f"host {socket.gethostname()}, pid {os.getpid()}"
        )
        self.known: dict[int, str] = {}
        with contextlib.suppress(Exception):  # rank 0 holds the store: name it even without it
            self.known[0] = self.who(0)
        self.stopping = threading.Event()
        self.thread = threading.Thread(target=self._beat, name="humpback-heartbeat", daemon=True)
        self.thread.start()

    @classmethod
    def start(cls) -> None:
        """Start beating (world size > 1, process group up); stopped by `stop` or at exit."""
        import torch.distributed as td

        if cls._instance is None and world_size() > 1 and td.is_initialized():
            cls._instance = cls()
            atexit.register(cls.stop)

    @classmethod
    def stop(cls) -> None:
        """End the thread before the interpreter does: a thread killed inside a store call at
        exit can abort the process ("terminate called without an active exception")."""
        hb, cls._instance = cls._instance, None
        if hb is not None:
            hb.stopping.set()
            hb.thread.join(timeout=2 * HEARTBEAT_S + 10)

    def _call(self, fn: str, *args: Any) -> Any:
        with self.lock:
            return getattr(self.store, fn)(*args)

    def _beat(self) -> None:
        """Bump this rank's counter; warn once when the next rank's counter stops moving (on
        NCCL the timeout may end the process from C++ before lost_rank_guard can name it)."""
        peer = (rank() + 1) % world_size()
        warn_s = float(os.environ.get("HUMPBACK_HEARTBEAT_WARN_S", WARN_S))
        last, since, warned = -1, time.monotonic(), False
        with contextlib.suppress(Exception):  # store gone (rank 0 lost): lost_ranks says so
            while not self.stopping.is_set():
                self._call("add", _KEY.format(what="beat", rank=rank()), 1)
                count = self._call("add", _KEY.format(what="beat", rank=peer), 0)
                if count != last:
                    last, since, warned = count, time.monotonic(), False
                elif not warned and time.monotonic() - since > warn_s:
                    warned = True
                    if not self._call("check", [_KEY.format(what="failed", rank=peer)]):
                        print(
                            f"humpback: rank {peer} ({self.who(peer)}) sent no heartbeat for "
                            f"{warn_s:.0f} s: dead, hung or stalled; collectives with it fail "
                            f"after the collective timeout ({collective_timeout()})",
                            file=sys.stderr,
                            flush=True,
                        )
                self.stopping.wait(HEARTBEAT_S)

    def who(self, r: int) -> str:
        if r in self.known:
            return self.known[r]
        try:
            return self._call("get", _KEY.format(what="who", rank=r)).decode()
        except Exception:
            return "host ?, pid ?"

    def lost_ranks(self) -> dict[int, str]:
        """{rank: why} of the peers whose counter stopped and that did not fail themselves."""
        try:
            self._call("set", _KEY.format(what="failed", rank=rank()), "1")
            peers = [r for r in range(world_size()) if r != rank()]
            before = {r: self._call("add", _KEY.format(what="beat", rank=r), 0) for r in peers}
            time.sleep(3 * HEARTBEAT_S)
            failed = {r for r in peers if self._call("check", [_KEY.format(what="failed", rank=r)])}
            still = [r for r in peers if r not in failed]
            after = {r: self._call("add", _KEY.format(what="beat", rank=r), 0) for r in still}
        except Exception as e:  # the store runs in rank 0's process
            return self.store_lost(e)
        stopped = f"its heartbeat stopped (no beat in {3 * HEARTBEAT_S:.0f} s)"
        return {r: stopped for r in still if after[r] == before[r]}

    def store_lost(self, e: Exception) -> dict[int, str]:
        """{0: why}: the store runs in rank 0's process, so a store error means rank 0 is lost."""
        why = f"the store it hosts at {self.addr}:{self.port} is unreachable ({e})"
        return {0: why.splitlines()[0]}

    def rank_lost(self, lost: dict[int, str], stops: str, hint: str) -> RankLost:
        """RankLost naming each lost rank (host, pid) and why, what this rank stops on, the hint."""
        names = "; ".join(f"rank {r} ({self.who(r)}) was lost: {why}" for r, why in lost.items())
        return RankLost(
            f"{names}. Rank {rank()} of {world_size()} stops{stops}" + (f". {hint}" if hint else "")
        )


def is_peer_error(e: BaseException) -> bool:
    return isinstance(e, RuntimeError) and any(w in str(e).lower() for w in _PEER_ERRORS)


@contextlib.contextmanager
def lost_rank_guard(hint: str = "") -> Iterator[None]:
    """Re-raise a collective's failure as RankLost naming the lost ranks (when any is found)."""
    Heartbeat.start()  # a no-op when init() started it
    try:
        yield
    except RankLost:
        raise
    except RuntimeError as e:
        hb = Heartbeat._instance
        lost = hb.lost_ranks() if hb is not None and is_peer_error(e) else {}
        if not lost:
            raise
        first = str(e).strip().splitlines()[0][:300] if str(e).strip() else type(e).__name__
        raise hb.rank_lost(lost, f": a collective failed with: {first}", hint) from e


_waits = 0  # wait_for_all calls so far: every rank makes the same calls in the same order
POLL_S = 0.2


def wait_for_all(what: str, hint: str = "") -> None:
    """Barrier for ranks that may arrive far apart: waits while the missing ranks' heartbeats move.

    Each rank marks its arrival in the store and polls for the others'. A missing rank whose
    counter has not moved for collective_timeout() (dead, or hung) is named in RankLost; rank 0
    unreachable names rank 0. A plain barrier ends it, so no rank leaves (and rank 0 does not take
    the store away) before every rank has seen all arrivals."""
    global _waits
    hb = Heartbeat._instance
    if hb is None:  # one process, or no process group
        barrier()
        return
    _waits += 1
    key = f"humpback/arrived/{_waits}/{{rank}}"
    limit = collective_timeout().total_seconds()
    peers = [r for r in range(world_size()) if r != rank()]
    stops = f" while waiting for all ranks to finish {what}"
    try:
        hb._call("set", key.format(rank=rank()), "1")
        seen = {r: (-1, time.monotonic()) for r in peers}  # last counter, when it last moved
        while missing := [r for r in peers if not hb._call("check", [key.format(rank=r)])]:
            now = time.monotonic()
            for r in missing:
                count = hb._call("add", _KEY.format(what="beat", rank=r), 0)
                if count != seen[r][0]:
                    seen[r] = (count, now)
            stalled = {
                r: f"no heartbeat for {limit:.0f} s" for r in missing if now - seen[r][1] > limit
            }
            if stalled:
                raise hb.rank_lost(stalled, stops, hint)
            time.sleep(POLL_S)
    except RankLost:
        raise
    except Exception as e:
        raise hb.rank_lost(hb.store_lost(e), stops, hint) from e
    barrier()
