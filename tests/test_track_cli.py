"""`diffvos track` end to end on a toy bundle, torch-free, and every bad-input path."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from diffvos.cli import main
from diffvos.export.toy import make_toy_bundle
from diffvos.sample_clip import make_clip

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def clip(tmp_path_factory):
    root = tmp_path_factory.mktemp("clip")
    frames, mask = make_clip(root, frames=8, height=120, width=200)
    return frames, mask


@pytest.fixture(scope="module")
def bundle(tmp_path_factory):
    return make_toy_bundle(tmp_path_factory.mktemp("toy") / "b", height=None, width=None, stride=8, channels=16)


def _track(bundle, frames, mask, out, *extra):
    return main(["track", "--bundle", str(bundle), "--input", str(frames), "--mask", str(mask),
                 "--output", str(out), "--no-progress", *extra])


def test_track_writes_one_indexed_png_per_frame(bundle, clip, tmp_path, capsys):
    frames, mask = clip
    out = tmp_path / "masks"
    assert _track(bundle, frames, mask, out, "--overlay", str(tmp_path / "ov.mp4")) == 0
    summary = capsys.readouterr().out
    assert "tracked 8 frames" in summary and "CPUExecutionProvider" in summary and "frames/s" in summary
    names = sorted(p.name for p in out.glob("*.png"))
    assert names == [f"{i:05d}.png" for i in range(8)]
    first = Image.open(mask)
    for name in names:
        img = Image.open(out / name)
        assert img.mode == "P" and img.size == (200, 120)
        assert img.getpalette()[:9] == first.getpalette()[:9]
    np.testing.assert_array_equal(np.asarray(Image.open(out / "00000.png")), np.asarray(first))
    # the toy features separate the two coloured objects: both survive to the last frame
    assert set(np.unique(np.asarray(Image.open(out / "00007.png")))) == {0, 1, 2}
    assert (tmp_path / "ov.mp4").stat().st_size > 0


def test_runtime_and_track_stay_torch_free(bundle, clip, tmp_path):
    frames, mask = clip
    code = (
        "import sys; import diffvos, diffvos.runtime.session, diffvos.runtime.track_video, diffvos.runtime.capi.status; "
        "diffvos.Runtime, diffvos.InputError; "
        "from diffvos.cli import main; "
        f"rc = main(['track', '--bundle', {str(bundle)!r}, '--input', {str(frames)!r}, '--mask', {str(mask)!r}, "
        f"'--output', {str(tmp_path / 'o')!r}, '--no-progress']); "
        "assert rc == 0, rc; assert 'torch' not in sys.modules, 'torch was imported'; print('ok')"
    )
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT / "tests")
    assert res.returncode == 0, res.stderr
    assert "ok" in res.stdout


def _assert_error(capsys, *needles):
    err = capsys.readouterr().err
    for needle in needles:
        assert needle in err, err
    return err


def test_mask_size_mismatch_then_resize_mask(bundle, clip, tmp_path, capsys):
    frames, mask = clip
    small = tmp_path / "small.png"
    Image.open(mask).resize((100, 60), Image.NEAREST).save(small)
    out = tmp_path / "out"
    assert _track(bundle, frames, small, out) == 1
    _assert_error(capsys, "small.png", "--resize-mask")
    assert not out.exists()
    assert _track(bundle, frames, small, out, "--resize-mask") == 0
    assert len(list(out.glob("*.png"))) == 8


def test_mask_without_object(bundle, clip, tmp_path, capsys):
    frames, _ = clip
    empty = tmp_path / "empty.png"
    Image.fromarray(np.zeros((120, 200), np.uint8)).save(empty)
    assert _track(bundle, frames, empty, tmp_path / "out") == 1
    _assert_error(capsys, "empty.png", "no object")
    assert not (tmp_path / "out").exists()


def test_unreadable_and_empty_video(bundle, clip, tmp_path, capsys):
    _, mask = clip
    bad = tmp_path / "broken.mp4"
    bad.write_bytes(np.random.default_rng(0).bytes(4096))
    assert _track(bundle, bad, mask, tmp_path / "out") == 1
    _assert_error(capsys, "broken.mp4")
    empty_dir = tmp_path / "no_frames"
    empty_dir.mkdir()
    assert _track(bundle, empty_dir, mask, tmp_path / "out") == 1
    _assert_error(capsys, "no_frames")
    assert not (tmp_path / "out").exists()


def test_mixed_frame_sizes(bundle, clip, tmp_path, capsys):
    frames, mask = clip
    mixed = tmp_path / "mixed"
    mixed.mkdir()
    for p in sorted(frames.iterdir())[:3]:
        (mixed / p.name).write_bytes(p.read_bytes())
    Image.new("RGB", (100, 50)).save(mixed / "00003.jpg")
    assert _track(bundle, mixed, mask, tmp_path / "out") == 1
    _assert_error(capsys, "00003.jpg", "100x50")
    assert not (tmp_path / "out").exists()


def test_bundle_from_newer_schema_or_corrupted(bundle, clip, tmp_path, capsys):
    import shutil

    frames, mask = clip
    newer = tmp_path / "newer"
    shutil.copytree(bundle, newer)
    data = json.loads((newer / "diffvos.json").read_text())
    data["schema_version"] = 999
    (newer / "diffvos.json").write_text(json.dumps(data))
    assert _track(newer, frames, mask, tmp_path / "out") == 1
    _assert_error(capsys, "diffvos.json", "schema 999")
    corrupt = tmp_path / "corrupt"
    shutil.copytree(bundle, corrupt)
    with open(corrupt / "features.onnx", "ab") as fh:
        fh.write(b"\0")
    assert _track(corrupt, frames, mask, tmp_path / "out") == 1
    _assert_error(capsys, "features.onnx", "corrupted")
    assert not (tmp_path / "out").exists()


def test_output_not_writable(bundle, clip, tmp_path, capsys):
    frames, mask = clip
    blocker = tmp_path / "a_file"
    blocker.write_text("x")
    assert _track(bundle, frames, mask, blocker / "masks") == 1
    _assert_error(capsys, "a_file", "is a file")


def _davis_root(root: Path, clip) -> Path:
    """A one-sequence DAVIS root from the sample clip (every frame annotated by the first mask,
    enough for the evaluation to run)."""
    import shutil

    frames, mask = clip
    seq_images, seq_gt = root / "JPEGImages" / "480p" / "clip", root / "Annotations" / "480p" / "clip"
    shutil.copytree(frames, seq_images)
    seq_gt.mkdir(parents=True)
    for f in sorted(seq_images.iterdir()):
        shutil.copyfile(mask, seq_gt / f"{f.stem}.png")
    return root


def test_bench_quality_tracks_with_the_seed_and_noise_asked_for(clip, tmp_path, capsys):
    """Defect: `bench quality --seed N` always tracked with seed 0, and its --fresh-noise and
    --threads were accepted and dropped. It now tracks exactly as `diffvos track` does."""
    noisy = make_toy_bundle(tmp_path / "noisy", height=None, width=None, alpha_bar=0.3, ensemble=1)
    root = _davis_root(tmp_path / "davis", clip)
    frames = root / "JPEGImages" / "480p" / "clip"
    mask = root / "Annotations" / "480p" / "clip" / "00000.png"
    options = ["--seed", "3", "--fresh-noise", "--threads", "1"]
    assert main(["bench", "quality", "--bundle", str(noisy), "--davis", str(root), "--output",
                 str(tmp_path / "bench"), "--no-progress", *options]) == 0
    assert "J&F" in capsys.readouterr().out
    assert _track(noisy, frames, mask, tmp_path / "seed3", *options) == 0
    assert _track(noisy, frames, mask, tmp_path / "seed0", "--fresh-noise") == 0
    bench = [np.asarray(Image.open(p)) for p in sorted((tmp_path / "bench" / "clip").glob("*.png"))]
    seed3 = [np.asarray(Image.open(p)) for p in sorted((tmp_path / "seed3").glob("*.png"))]
    seed0 = [np.asarray(Image.open(p)) for p in sorted((tmp_path / "seed0").glob("*.png"))]
    assert len(bench) == len(seed3) == 8
    for a, b in zip(bench, seed3):
        np.testing.assert_array_equal(a, b)
    assert any(not np.array_equal(a, b) for a, b in zip(seed3, seed0))  # the seed matters here
