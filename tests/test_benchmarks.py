"""Smoke tests of the benchmarks at tiny sizes: the code runs, and the published-pipeline baseline
and the project's pipeline give the same masks on the same frames, weights and noise.
Timings are printed by the benchmarks, never asserted."""

from __future__ import annotations

import argparse
import csv

import numpy as np
import pytest

from diffvos.evaluation.benchmarks import load_script


@pytest.fixture(scope="module")
def tiny_clip(tmp_path_factory):
    """Three 64x96 frames (the tiny fixture's input size, so no resampling differs) and the first mask."""
    import cv2
    from PIL import Image

    from diffvos.sample_clip import make_clip

    frame_dir, mask_path = make_clip(tmp_path_factory.mktemp("clip"), frames=3)
    frames = [cv2.resize(cv2.imread(str(f)), (96, 64), interpolation=cv2.INTER_AREA)
              for f in sorted(frame_dir.glob("*.jpg"))]
    labels = np.asarray(Image.open(mask_path).resize((96, 64), Image.NEAREST))
    return frames, labels


def test_baseline_and_project_agree_on_tiny_case(adm_fixture_dir, tiny_clip, tmp_path):
    from tests.adm_bundle import tiny_adm_bundle

    bp = load_script("pipeline")
    frames, labels = tiny_clip
    case = bp.Case("tiny-small", 64, 96, 2, config_json=str(adm_fixture_dir / "adm_tiny_config.json"),
                   state_dict=str(adm_fixture_dir / "adm_tiny_state_dict.pt"), label="tiny 64x96 E=2")
    results = bp.run_case(case, frames, labels, workdir=tmp_path, memory=2, noise="shared", seed=0,
                          dense_chunk=None, feature_dtype="float32", bundle=tiny_adm_bundle(adm_fixture_dir),
                          log=lambda s: None)
    base, proj = results["baseline"], results["project"]
    assert len(base.labels) == len(proj.labels) == 2
    for b, p in zip(base.labels, proj.labels):
        assert b.shape == p.shape == (64, 96)
        assert set(np.unique(b)) <= {0, 1, 2}
        assert np.mean(b == p) > 0.995
        assert bp.mean_iou(b, p) > 0.98
    assert set(base.timings[0]) == set(bp.STAGES)
    text = bp.format_results(case, results)
    assert "mask agreement" in text and "| total |" in text


def test_baseline_dense_step_matches_hand_case():
    """The baseline's dense reference on a 1x2 grid, 2 context frames: hand-computed soft mask."""
    base = load_script("baseline_pipeline")
    mem = base.ListMemory(capacity=1)
    # first frame: cells (0,0) -> class 1, (0,1) -> class 0; C=2 unit features along x and y
    mem.keys.append(np.array([[[1.0, 0.0], [0.0, 1.0]]], np.float32))
    mem.values.append(np.array([[[0.0, 1.0], [1.0, 0.0]]], np.float32))
    view = base.DenseView(base.Settings(temperature=0.5, topk=1, radius=1), 1, 2, 2, mem)
    query = np.array([[[1.0, 0.0]], [[0.0, 1.0]]], np.float32)  # (C, h, w): cell 0 along x, cell 1 along y
    soft = base.dense_reference()(view, query)
    np.testing.assert_allclose(soft[:, 0, 0], [0.0, 1.0], atol=1e-6)  # top-1 = memory cell 0
    np.testing.assert_allclose(soft[:, 0, 1], [1.0, 0.0], atol=1e-6)
    mem.push(mem.keys[0].copy(), mem.values[0].copy())
    mem.push(mem.keys[0].copy(), mem.values[0].copy())
    assert len(mem.keys) == 2  # first frame + a FIFO of one


def test_scaling_writes_csv(tmp_path):
    sc = load_script("scaling")
    out = tmp_path / "scaling.csv"
    args = argparse.Namespace(sizes=["6x8", "8x10"], memories=[1, 2], memory_size="6x8", channels=64, runs=1,
                              feature_dtype="float32", output=str(out))
    assert sc.run(args) == 0
    rows = list(csv.DictReader(out.open()))
    assert [(r["sweep"], r["h"], r["w"], r["context_frames"]) for r in rows] == [
        ("grid", "6", "8", "3"), ("grid", "8", "10", "3"), ("memory", "6", "8", "2"), ("memory", "6", "8", "3")]
    bank = [float(r["bank_mib"]) for r in rows]
    assert bank[1] > bank[0] and bank[3] > bank[2]  # grows with h*w and with N
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        return
    assert out.with_suffix(".png").read_bytes()[:4] == b"\x89PNG"


def test_efficiency_counts_and_peak(adm_fixture_dir):
    import torch

    from diffvos.export.adm import ADMConfig, TruncatedADM, load_adm
    from diffvos.export.flops import count_flops
    from tests.adm_bundle import tiny_adm_bundle

    ef = load_script("efficiency")
    peak = ef.matmul_peak(64, repeats=1)
    assert peak["numpy"] > 0
    bundle = tiny_adm_bundle(adm_fixture_dir)
    config = ADMConfig.from_json(adm_fixture_dir / "adm_tiny_config.json")
    flops, _ = ef.graph_flops(bundle, config)
    model = load_adm(adm_fixture_dir / "adm_tiny_state_dict.pt", config)
    assert flops == 2 * count_flops(TruncatedADM(model, 30, 6), torch.zeros(1, 3, 64, 96))
    _, provider = ef.time_graph(bundle, 1, 1)  # the time is a figure to print, not to judge
    assert provider == "CPUExecutionProvider"


def test_cli_has_bench_subcommands(capsys):
    from diffvos.cli import main

    for name in ("pipeline", "scaling", "efficiency"):
        with pytest.raises(SystemExit) as exc:
            main(["bench", name, "--help"])
        assert exc.value.code == 0
        assert f"bench {name}" in capsys.readouterr().out


def test_propagation_benchmark_tiny(capsys):
    """`diffvos bench propagation` at a tiny size: both kernels through step_to_labels give the
    same labels, and a graph step moves only the label map down (nothing up: the query is on the
    device already)."""
    bench = load_script("propagation")
    from diffvos.config import PropagationConfig

    feats, masks = bench.random_features(8, 16, (12, 20))
    cfg = PropagationConfig(memory=4, radius=3, topk=5)
    result = bench.compare_kernels(feats, masks, cfg, runs=2, threads=1)
    assert result["labels"] == [0, 0, 0] and max(result["diffs"]) < 1e-5
    assert result["moved"] == [(0, 480 * 854)] * 2
    assert result["graph"]["n"] == result["numpy"]["n"] == 2
    bench.print_comparison(result, "tiny")
    assert "numpy / graph" in capsys.readouterr().out
