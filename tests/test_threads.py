"""The runtime's thread policy (diffvos.runtime.threads): what BLAS and ONNX Runtime really run
with inside a step, read back from the libraries themselves (threadpoolctl, the session options),
and that a program embedding the runtime keeps its own BLAS setting outside the step."""

from __future__ import annotations

import pytest

import diffvos
from diffvos.export.toy import make_toy_bundle
from diffvos.runtime.threads import ThreadPlan, available_cores, plan_threads
from diffvos.sample_clip import moving_squares

threadpoolctl = pytest.importorskip("threadpoolctl")


def _blas_threads() -> set[int]:
    return {i["num_threads"] for i in threadpoolctl.threadpool_info() if i["user_api"] == "blas"}


def test_plan_for_the_knob():
    assert plan_threads(0) == ThreadPlan(intra_op=available_cores(), blas_threads=1, spinning=False)
    assert plan_threads(3) == ThreadPlan(intra_op=3, blas_threads=3, spinning=False)
    assert ThreadPlan.library_defaults().intra_op == 0  # 0: left to ONNX Runtime


@pytest.mark.parametrize("threads,inside", [(0, 1), (2, 2)])
def test_blas_threads_inside_a_step_and_restored_after(tmp_path, threads, inside):
    if not _blas_threads():
        pytest.skip("numpy's BLAS is not visible to threadpoolctl here")
    frames, truths = moving_squares(3)
    seen: list[set[int]] = []
    with threadpoolctl.threadpool_limits(limits=4, user_api="blas"):  # the host program's own setting
        with diffvos.Runtime(make_toy_bundle(tmp_path / "toy"), backend="cpu", threads=threads) as rt:
            with rt.engines["features"].observe(lambda feed, out: seen.append(_blas_threads())):
                s = rt.session(96, 64)
                s.step(frames[0], mask=truths[0])
                s.step(frames[1])
            assert _blas_threads() == {4}  # untouched outside the step
    assert seen == [{inside}, {inside}]


def test_nested_and_concurrent_blocks_restore_once():
    if not _blas_threads():
        pytest.skip("numpy's BLAS is not visible to threadpoolctl here")
    plan = plan_threads(0)
    with threadpoolctl.threadpool_limits(limits=3, user_api="blas"):
        with plan.blas():
            with plan.blas():
                assert _blas_threads() == {1}
            assert _blas_threads() == {1}  # the outer block still runs
        assert _blas_threads() == {3}
