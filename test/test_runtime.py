"""Process-wide CPU thread limits."""
import cv2
import pytest
import torch

from kp2d_ros.runtime import set_cpu_threads


def test_set_cpu_threads_limits_torch_opencv_and_blas():
    pytest.importorskip("threadpoolctl")
    import numpy as np  # noqa: F401 - loads numpy's BLAS so that there is a pool to limit

    from threadpoolctl import threadpool_limits

    before_torch, before_cv = torch.get_num_threads(), cv2.getNumThreads()
    try:
        with threadpool_limits(limits=None, user_api="blas"):  # puts the BLAS pools back on exit
            state = set_cpu_threads(1)
            assert state["torch"] == 1 and state["opencv"] == 1 and state["blas"] == 1
            assert torch.get_num_threads() == 1 and cv2.getNumThreads() == 1
            assert set_cpu_threads(0)["torch"] == 1  # 0 leaves everything as it is
    finally:
        torch.set_num_threads(before_torch)
        cv2.setNumThreads(before_cv)
