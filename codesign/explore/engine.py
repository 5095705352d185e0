"""Where jobs run: a local process pool (default) or a Dask distributed cluster (--dask ADDRESS).

Dask was chosen over Ray because it is a pure pip install, a LocalCluster starts in-process inside
a test in seconds, and its Client.get_executor() is a concurrent.futures.Executor: both engines hand
out concurrent.futures.Future objects, so the runner below them is one code path. The context
(model, calibration ranges, held-out images, float outputs) goes to every worker once: through
the pool's initializer, or one Client.scatter(broadcast=True); each job then carries only its
precision and the hardware sweep.
"""
from __future__ import annotations

import concurrent.futures as cf
import multiprocessing
import os
import signal

from .context import ExploreContext
from .point import Job, evaluate_job

DASK_CONNECT_TIMEOUT = "10s"  # how long to keep trying a scheduler address before giving up
_CONTEXT: ExploreContext | None = None  # a pool worker's copy, set once by its initializer


def _install(ctx: ExploreContext) -> None:
    global _CONTEXT
    os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
    # Ctrl-C reaches the whole process group: the parent stops the run (and these workers), so a
    # worker does not die on it with a traceback of its own.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    _CONTEXT = ctx


def _run_installed(job: Job) -> dict:
    return evaluate_job(_CONTEXT, job)


class PoolEngine:
    def __init__(self, ctx: ExploreContext, workers: int):
        # fork: a worker starts with the parent's imports (torch) instead of importing them again
        method = "fork" if "fork" in multiprocessing.get_all_start_methods() else None
        self.pool = cf.ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context(method),
                                           initializer=_install, initargs=(ctx,))
        self.name = f"local process pool ({workers} worker{'s' if workers > 1 else ''})"

    def submit(self, job: Job) -> cf.Future:
        return self.pool.submit(_run_installed, job)

    def close(self, cancel: bool = False) -> None:
        if cancel:  # interrupted: the jobs still running are lost anyway, so do not wait for them
            for process in list(getattr(self.pool, "_processes", {}).values()):
                process.terminate()
        self.pool.shutdown(wait=True, cancel_futures=cancel)


class DaskEngine:
    def __init__(self, ctx: ExploreContext, address):
        """`address`: a scheduler address ("tcp://host:8786") or a distributed.Client."""
        try:
            from distributed import Client
        except ImportError:
            raise ValueError("--dask needs Dask distributed: pip install 'codesign[dask]'") from None
        self.own = not isinstance(address, Client)
        try:
            self.client = Client(address, timeout=DASK_CONNECT_TIMEOUT) if self.own else address
        except (OSError, ValueError) as exc:
            raise ValueError(f"cannot reach the Dask scheduler at {address}: {exc}") from None
        self.ctx = self.client.scatter(ctx, broadcast=True)
        self.executor = self.client.get_executor(pure=False)
        self.name = f"Dask cluster at {self.client.scheduler.address}"

    def submit(self, job: Job) -> cf.Future:
        return self.executor.submit(evaluate_job, self.ctx, job)

    def close(self, cancel: bool = False) -> None:
        self.executor.shutdown(wait=not cancel)
        if self.own:
            self.client.close()
