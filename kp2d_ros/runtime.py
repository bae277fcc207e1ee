"""Process-wide CPU thread settings.

On a small CPU the libraries' own thread pools fight each other: OpenBLAS (numpy's and OpenCV's
copies) keeps its worker threads spinning after every matrix product, and those spinning threads
steal the core that the network needs. Measured on the 2-core machine with ``kp2d bench``
(kp2d, 320x240, 500 keypoints; docs/results.md speed table): 26.3 FPS with torch at 2 threads and the rest
at 1, 21.3 FPS with torch at 1 thread and the libraries' default pools.
"""
from __future__ import annotations

import logging
import sys
from contextlib import contextmanager
from typing import Iterator

log = logging.getLogger(__name__)


def set_cpu_threads(n: int, torch_threads: int | None = None) -> dict:
    """Use ``n`` threads in OpenCV and every BLAS pool, and ``torch_threads`` (default ``n``)
    torch intra-op threads; a count <= 0 leaves that pool as it is.

    BLAS pools (numpy's and OpenCV's OpenBLAS) are limited through ``threadpoolctl`` (a dependency);
    without it only torch and OpenCV are set and one warning is logged. OpenMP pools are left to
    torch: limiting libgomp as well silently takes the network back to one thread.

    Returns
    -------
    {"torch": ..., "opencv": ..., "blas": ...} the thread counts now in effect (``blas`` None when unknown).
    """
    import cv2

    torch_threads = n if torch_threads is None else torch_threads
    torch = sys.modules.get("torch")  # not imported for torch's sake: a classical pipeline never needs it
    if torch is None and torch_threads > 0:
        try:
            import torch
        except ImportError:  # pragma: no cover - torch is a dependency
            torch = None
    if torch is not None and torch_threads > 0:
        torch.set_num_threads(torch_threads)
    if n > 0:
        cv2.setNumThreads(n)
        try:
            from threadpoolctl import threadpool_limits

            # set at construction and kept until restored explicitly; torch owns its OpenMP pool
            threadpool_limits(limits=n, user_api="blas")
        except ImportError:
            log.warning("threadpoolctl is not installed: BLAS thread pools keep their default size")
    blas = None
    try:
        from threadpoolctl import threadpool_info

        sizes = [p["num_threads"] for p in threadpool_info() if p["user_api"] == "blas"]
        blas = max(sizes) if sizes else None
    except ImportError:
        pass
    return {"torch": torch.get_num_threads() if torch is not None else None, "opencv": cv2.getNumThreads(),
            "blas": blas}


def apply_thread_settings(pipeline_cfg) -> None:
    """Apply ``pipeline.torch_threads`` / ``pipeline.library_threads`` (0 = leave the pool alone)."""
    if pipeline_cfg.torch_threads or pipeline_cfg.library_threads:
        set_cpu_threads(pipeline_cfg.library_threads, pipeline_cfg.torch_threads)


@contextmanager
def one_thread_fewer(learned: bool) -> Iterator[None]:
    """Inside, the frontend's detection runs on one CPU thread fewer (at least one): torch's intra-op pool for the
    learned frontend (``learned``), OpenCV's pool for SIFT/ORB; restored on leaving. Both counts are read and set in
    the calling thread, the one that detects (``backend.worker_core``: a core for the backend's worker)."""
    if learned:
        import torch

        get, put = torch.get_num_threads, torch.set_num_threads
    else:
        import cv2

        get, put = cv2.getNumThreads, cv2.setNumThreads
    n = get()
    if n > 1:
        put(n - 1)
    try:
        yield
    finally:
        if n > 1:
            put(n)


def cpu_has_native_bf16() -> bool:
    """True when this CPU computes bfloat16 in hardware (AVX512-BF16 or AMX-BF16).

    Without it torch emulates bf16 convolutions, which is far slower than fp32: measured on an
    AVX2-only AMD EPYC, KeyPointNet width 0.5 at 1226x370 took 3.3 s in bf16 against 0.40 s in fp32,
    and a 320x240 training step 13 s against 1.0 s. Reads ``/proc/cpuinfo`` (Linux); elsewhere False.
    """
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    flags = set(line.split(":", 1)[1].split())
                    return bool(flags & {"avx512_bf16", "amx_bf16"})
    except OSError:
        pass
    return False
