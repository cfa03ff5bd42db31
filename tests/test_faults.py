"""Fault injection for issue 11: every way `diffvos track` (and the other writers) could lose or
mix user data. Each case checks the exit code, the message, and that no input or earlier output
changed (every file under the trees hashed before and after, hidden files included).

Fast: the toy bundle (onnx.helper, milliseconds per frame) and generated clips; the damaged
inputs (a truncated JPEG, an mp4 with a damaged middle) are made here. Runs that must be stopped
mid-way (signals, concurrent writers) use a subprocess and a bundle/clip slow enough to catch.
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import Image

from diffvos.cli import main
from diffvos.export.toy import make_toy_bundle
from diffvos.io.outputs import RUN_MANIFEST, OutputLock
from diffvos.sample_clip import make_clip

ROOT = Path(__file__).resolve().parents[1]
N = 10  # frames of the small clip
SLOW_N = 30  # frames of the clip runs are stopped in


# --- fixtures and helpers ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def bundle(tmp_path_factory) -> Path:
    return make_toy_bundle(tmp_path_factory.mktemp("toy") / "b", height=None, width=None, stride=8, channels=16)


@pytest.fixture(scope="module")
def clip(tmp_path_factory) -> tuple[Path, Path]:
    return make_clip(tmp_path_factory.mktemp("clip"), frames=N, height=120, width=200)


@pytest.fixture()
def work(tmp_path, clip) -> dict[str, Path]:
    """A private copy of the clip (frames, mask) and a video of it, so a test may damage them."""
    frames, mask = clip
    own = tmp_path / "in"
    (own / "frames").mkdir(parents=True)
    for p in frames.iterdir():
        (own / "frames" / p.name).write_bytes(p.read_bytes())
    (own / "mask.png").write_bytes(mask.read_bytes())
    video = own / "clip.mp4"
    writer = cv2.VideoWriter(str(video), cv2.VideoWriter_fourcc(*"mp4v"), 10.0, (200, 120))
    for p in sorted((own / "frames").iterdir()):
        writer.write(cv2.imread(str(p)))
    writer.release()
    return {"frames": own / "frames", "mask": own / "mask.png", "video": video, "root": own}


def tree(*paths: Path) -> dict[str, str]:
    """sha256 and mode of every file under ``paths`` (a file stands for itself)."""
    out = {}
    for top in paths:
        files = [top] if top.is_file() else sorted(p for p in top.rglob("*") if p.is_file()) if top.exists() else []
        for p in files:
            out[str(p)] = f"{hashlib.sha256(p.read_bytes()).hexdigest()} {oct(p.stat().st_mode)}"
    return out


def hidden_leftovers(*folders: Path) -> list[str]:
    """Temporary files (hidden names) other than a run manifest."""
    return sorted(str(p) for f in folders if f.exists() for p in f.rglob(".*") if p.name != RUN_MANIFEST)


def track(bundle: Path, inp: Path, mask: Path, out: Path, *extra: str) -> int:
    return main(["track", "--bundle", str(bundle), "--input", str(inp), "--mask", str(mask), "--output", str(out),
                 "--no-progress", *extra])


def err_of(capsys) -> str:
    return capsys.readouterr().err


def pngs(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.glob("*.png"))


# --- 1. outputs never overwrite inputs or anything else -------------------------------------------------


@pytest.mark.parametrize("case", ["output_is_frames", "output_contains_mask", "overlay_is_video",
                                  "output_inside_bundle", "overlay_inside_frames"])
def test_outputs_that_touch_an_input_are_refused(bundle, work, tmp_path, capsys, case):
    frames, mask, video = work["frames"], work["mask"], work["video"]
    if case == "output_is_frames":
        args, needle = (frames, mask, frames), "is the frames input"
    elif case == "output_contains_mask":  # -o ann_copy -m ann_copy/00000.png
        ann = work["root"] / "ann_copy"
        ann.mkdir()
        (ann / "00000.png").write_bytes(mask.read_bytes())
        args, needle = (frames, ann / "00000.png", ann), "contains the mask input"
    elif case == "overlay_is_video":  # --overlay X.mp4 -i X.mp4
        args, needle = (video, mask, tmp_path / "o", "--overlay", str(video)), "is the frames input"
    elif case == "output_inside_bundle":
        args, needle = (frames, mask, bundle / "masks"), "lies inside the bundle input"
    else:
        args, needle = (frames, mask, tmp_path / "o", "--overlay", str(frames / "ov.mp4")), "lies inside the frames input"
    before = tree(work["root"], bundle)
    assert track(bundle, *args) == 1
    err = err_of(capsys)
    assert needle in err and "choose an output apart from the inputs" in err
    assert tree(work["root"], bundle) == before
    assert not (tmp_path / "o").exists()


def test_non_empty_output_is_refused_then_replaced_whole_with_force(bundle, work, tmp_path, capsys):
    out = tmp_path / "o"
    out.mkdir()
    (out / "00002.png").write_bytes(b"the user's own file")
    (out / "00099.png").write_bytes(b"a stale mask of an older run")
    before = tree(out, work["root"])
    assert track(bundle, work["frames"], work["mask"], out) == 1
    err = err_of(capsys)
    assert "folder is not empty (holds 00002.png, 00099.png)" in err and "--force" in err
    assert tree(out, work["root"]) == before
    assert track(bundle, work["frames"], work["mask"], out, "--force") == 0
    assert pngs(out) == [f"{i:05d}.png" for i in range(N)]  # nothing old left, nothing mixed
    assert b"user's own" not in (out / "00002.png").read_bytes()
    assert tree(work["root"]) == {k: v for k, v in before.items() if k.startswith(str(work["root"]))}
    assert hidden_leftovers(out, tmp_path) == []
    assert json.loads((out / RUN_MANIFEST).read_text())["complete"] is True


def test_a_failing_forced_run_leaves_the_old_output_as_it_was(bundle, work, tmp_path, capsys):
    out = tmp_path / "o"
    assert track(bundle, work["frames"], work["mask"], out) == 0
    before = tree(out)
    bad_mask = tmp_path / "tiny.png"  # a mask of another size: fails before the first frame
    Image.fromarray(np.ones((10, 10), np.uint8) * 255).save(bad_mask)
    assert track(bundle, work["frames"], bad_mask, out, "--force") == 1
    assert "--resize-mask" in err_of(capsys)
    assert tree(out) == before and hidden_leftovers(tmp_path) == []


# --- 2. one writer per output ---------------------------------------------------------------------------


def test_a_second_run_into_a_locked_output_fails_at_once(bundle, work, tmp_path, capsys):
    out = tmp_path / "o"
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys; from diffvos.io.outputs import OutputLock; "
         f"l = OutputLock({str(out)!r}); l.acquire(); print('held', flush=True); sys.stdin.read(); l.release()"],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, cwd=ROOT / "tests")
    try:
        assert holder.stdout.readline().strip() == "held"
        t0 = time.perf_counter()
        assert track(bundle, work["frames"], work["mask"], out) == 1
        assert time.perf_counter() - t0 < 30  # no waiting for the other run
        err = err_of(capsys)
        assert "another diffvos run is writing this output" in err and f"pid {holder.pid}" in err
        assert not out.exists()
    finally:
        holder.communicate("", timeout=30)
    assert not OutputLock(out).path.exists()  # the holder removed its lock file
    assert track(bundle, work["frames"], work["mask"], out) == 0


# --- 3, 4. damaged input ----------------------------------------------------------------------------------


def _damage_video(video: Path) -> None:
    data = bytearray(video.read_bytes())
    start, stop = len(data) // 3, len(data) // 3 + len(data) // 4
    for k in range(start, stop):
        data[k] = (data[k] * 31 + 7) & 255
    video.write_bytes(bytes(data))


def test_damaged_video_fails_naming_the_frame_without_ffmpeg_noise(bundle, work, tmp_path, capfd):
    _damage_video(work["video"])
    out = tmp_path / "o"
    before = tree(work["root"])
    assert track(bundle, work["video"], work["mask"], out) == 1
    err = capfd.readouterr().err
    assert "clip.mp4: frame" in err and "--skip-bad-frames" in err
    assert "@ 0x" not in err and len(err.strip().splitlines()) == 1  # FFmpeg's raw lines captured
    assert not out.exists() and tree(work["root"]) == before

    assert track(bundle, work["video"], work["mask"], out, "--skip-bad-frames") == 0
    captured = capfd.readouterr()
    assert "@ 0x" not in captured.err
    skipped = json.loads((out / RUN_MANIFEST).read_text())["skipped"]
    names = {s["name"] for s in skipped}
    assert skipped and f"skipped {len(skipped)} damaged frame(s)" in captured.out
    assert pngs(out) == [f"{i:05d}.png" for i in range(N) if f"{i:05d}" not in names]
    assert tree(work["root"]) == before


def test_video_whose_tail_does_not_decode_is_an_error(bundle, work, tmp_path, capfd):
    """The container lists N frames but the last ones do not decode (their data zeroed)."""
    data = bytearray(work["video"].read_bytes())
    mdat, moov = data.find(b"mdat"), data.find(b"moov")
    assert 0 < mdat < moov, "OpenCV's mp4 writer puts the index after the data"
    start = mdat + 4 + (moov - mdat) * 6 // 10
    data[start : moov - 4] = bytes(moov - 4 - start)
    work["video"].write_bytes(bytes(data))
    out = tmp_path / "o"
    assert track(bundle, work["video"], work["mask"], out) == 1
    err = capfd.readouterr().err
    assert "clip.mp4: frame" in err and "@ 0x" not in err and not out.exists()
    assert track(bundle, work["video"], work["mask"], out, "--skip-bad-frames") == 0
    capfd.readouterr()
    skipped = json.loads((out / RUN_MANIFEST).read_text())["skipped"]
    missing = [s for s in skipped if "does not decode though the container lists 10 frames" in s["reason"]]
    assert missing and missing[-1]["name"] == f"{N - 1:05d}"
    assert pngs(out) == [f"{i:05d}.png" for i in range(skipped[0]["index"])]


def test_truncated_jpeg_fails_naming_the_file(bundle, work, tmp_path, capfd):
    jpg = work["frames"] / "00005.jpg"
    data = jpg.read_bytes()
    jpg.write_bytes(data[: len(data) // 2])
    before = tree(work["root"])
    out = tmp_path / "o"
    assert track(bundle, work["frames"], work["mask"], out) == 1
    err = capfd.readouterr().err
    assert "00005.jpg: damaged image (decoder: Premature end of JPEG file)" in err
    assert len(err.strip().splitlines()) == 1  # libjpeg's own line is not printed raw
    assert not out.exists() and tree(work["root"]) == before

    assert track(bundle, work["frames"], work["mask"], out, "--skip-bad-frames") == 0
    text = capfd.readouterr().out
    assert "skipped 1 damaged frame(s), no mask written: 00005 (damaged image" in text
    assert pngs(out) == [f"{i:05d}.png" for i in range(N) if i != 5]
    assert tree(work["root"]) == before


def test_the_first_frame_cannot_be_skipped(bundle, work, tmp_path, capfd):
    jpg = work["frames"] / "00000.jpg"
    jpg.write_bytes(jpg.read_bytes()[: jpg.stat().st_size // 2])
    assert track(bundle, work["frames"], work["mask"], tmp_path / "o", "--skip-bad-frames") == 1
    assert "the first frame (00000) carries the mask and cannot be skipped" in capfd.readouterr().err


# --- 5. the mask is no frame --------------------------------------------------------------------------


def test_mask_inside_the_frame_folder_is_not_tracked_as_a_frame(bundle, work, tmp_path, capsys):
    inside = work["frames"] / "first_mask.png"
    inside.write_bytes(work["mask"].read_bytes())
    before = tree(work["root"])
    out = tmp_path / "o"
    assert track(bundle, work["frames"], inside, out) == 0
    assert f"tracked {N} frames" in capsys.readouterr().out
    assert pngs(out) == [f"{i:05d}.png" for i in range(N)]
    assert tree(work["root"]) == before


# --- 6. signals ------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def slow(tmp_path_factory) -> dict[str, Path]:
    """A clip and bundle slow enough (tens of ms a frame, with _start's options) to signal a run
    in the middle."""
    root = tmp_path_factory.mktemp("slow")
    frames, mask = make_clip(root / "clip", frames=SLOW_N, height=240, width=432)
    b = make_toy_bundle(root / "b", height=240, width=432, stride=8, channels=16)
    return {"frames": frames, "mask": mask, "bundle": b}


def _start(slow: dict[str, Path], out: Path, *extra: str) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "diffvos.cli", "track", "--bundle", str(slow["bundle"]), "-i", str(slow["frames"]),
           "-m", str(slow["mask"]), "-o", str(out), "--no-progress", "--memory", "3", "--radius", "6", *extra]
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT / "tests")


def _wait_for_masks(proc: subprocess.Popen, out: Path, count: int = 2) -> None:
    deadline = time.monotonic() + 120
    while len(list(out.glob("*.png"))) < count:
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline, "no mask appeared"
        time.sleep(0.02)


@pytest.mark.slow
@pytest.mark.parametrize("signum,code,name", [(signal.SIGTERM, 143, "SIGTERM"), (signal.SIGHUP, 129, "SIGHUP"),
                                              (signal.SIGINT, 130, "SIGINT")])
def test_signal_stops_cleanly_and_resume_finishes_the_same_masks(slow, tmp_path, signum, code, name):
    reference = tmp_path / "ref"
    assert _start(slow, reference).wait(300) == 0
    out, overlay = tmp_path / "o", tmp_path / "ov" / "overlay.mp4"
    inputs_before = tree(slow["frames"], slow["mask"], slow["bundle"])
    proc = _start(slow, out, "--overlay", str(overlay))
    _wait_for_masks(proc, out)
    proc.send_signal(signum)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == code, err
    said = "interrupted" if name == "SIGINT" else f"diffvos track: stopped by {name}; temporary files removed"
    assert said in err
    assert "continue with --resume" in err
    assert hidden_leftovers(out, overlay.parent) == [] and not overlay.exists()
    assert not OutputLock(out).path.exists() and not OutputLock(overlay).path.exists()
    record = json.loads((out / RUN_MANIFEST).read_text())
    done = pngs(out)
    assert not record["complete"] and 0 < len(done) < SLOW_N and record["frames_done"] <= len(done)
    assert tree(slow["frames"], slow["mask"], slow["bundle"]) == inputs_before

    resumed = _start(slow, out, "--overlay", str(overlay), "--resume")
    res_out, res_err = resumed.communicate(timeout=300)
    assert resumed.returncode == 0, res_err
    assert "replayed from the earlier run" in res_out and overlay.is_file()
    ref = {k.replace(str(reference), ""): v for k, v in tree(reference).items() if not k.endswith(RUN_MANIFEST)}
    got = {k.replace(str(out), ""): v for k, v in tree(out).items() if not k.endswith(RUN_MANIFEST)}
    assert got == ref  # the resumed run's masks are the uninterrupted run's, byte for byte
    assert json.loads((out / RUN_MANIFEST).read_text())["complete"] is True


@pytest.mark.slow
def test_sigterm_during_a_forced_replacement_keeps_the_old_output(slow, tmp_path):
    out = tmp_path / "o"
    out.mkdir()
    (out / "keep.txt").write_text("the old output")
    before = tree(out)
    proc = _start(slow, out, "--force")
    deadline = time.monotonic() + 120
    while not any(p.name.startswith(".o.staging-") and any(p.glob("*.png")) for p in tmp_path.iterdir()):
        assert proc.poll() is None and time.monotonic() < deadline
        time.sleep(0.02)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 143 and f"{out} was left as it was" in err
    assert tree(out) == before and hidden_leftovers(tmp_path) == []


@pytest.mark.slow
def test_two_concurrent_runs_one_fails_and_nothing_mixes(slow, tmp_path):
    out = tmp_path / "o"
    first = _start(slow, out)
    _wait_for_masks(first, out, 1)
    second = _start(slow, out)
    _, err2 = second.communicate(timeout=120)
    assert second.returncode == 1 and "another diffvos run is writing this output" in err2
    assert first.wait(300) == 0
    assert pngs(out) == [f"{i:05d}.png" for i in range(SLOW_N)]


# --- 7. checks before the first frame; ordinary permissions -------------------------------------------------


def test_overlay_that_is_a_folder_fails_before_any_frame(bundle, work, tmp_path, capsys):
    (tmp_path / "ovdir").mkdir()
    out = tmp_path / "o"
    assert track(bundle, work["frames"], work["mask"], out, "--overlay", str(tmp_path / "ovdir")) == 1
    assert "--overlay is a folder; give a file name" in err_of(capsys)
    assert not out.exists()


def test_existing_overlay_needs_force_and_outputs_have_ordinary_permissions(bundle, work, tmp_path, capsys):
    overlay = tmp_path / "ov.mp4"
    overlay.write_bytes(b"an older video")
    out = tmp_path / "o"
    assert track(bundle, work["frames"], work["mask"], out, "--overlay", str(overlay)) == 1
    assert "--overlay exists; use --force" in err_of(capsys)
    assert overlay.read_bytes() == b"an older video" and not out.exists()
    assert track(bundle, work["frames"], work["mask"], out, "--overlay", str(overlay), "--force") == 0
    mask_mode = (out / "00000.png").stat().st_mode & 0o777
    assert overlay.stat().st_mode & 0o777 == mask_mode == 0o666 & ~_umask()


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def test_output_that_is_a_file_is_named_as_such(bundle, work, tmp_path, capsys):
    target = tmp_path / "a_file"
    target.write_text("keep me")
    assert track(bundle, work["frames"], work["mask"], target) == 1
    assert "--output must be a folder, but this is a file" in err_of(capsys)
    assert target.read_text() == "keep me"


# --- 9. messages ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("flag,value,needle", [
    ("--memory", "-1", "--memory must be an integer >= 0, got -1"),
    ("--threads", "-2", "--threads must be an integer >= 0, got -2"),
    ("--topk", "0", "--topk must be an integer >= 1, got 0"),
    ("--temperature", "0", "--temperature must be a number > 0, got 0"),
    ("--mag-filter", "wide", "--mag-filter must be 'off', 'adaptive' or a radius"),
])
def test_bad_option_names_the_flag_and_range(bundle, work, tmp_path, capsys, flag, value, needle):
    assert track(bundle, work["frames"], work["mask"], tmp_path / "o", flag, value) == 1
    err = err_of(capsys)
    assert needle in err and "PropagationConfig(" not in err
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize("text,needle", [
    ("[1, 2]", "manifest must be a JSON object, got a JSON list"),
    (None, 'manifest field stride must be an integer, got "eight"'),
])
def test_broken_manifest_names_the_field(bundle, work, tmp_path, capsys, text, needle):
    broken = tmp_path / "bundle"
    broken.mkdir()
    for p in bundle.iterdir():
        (broken / p.name).write_bytes(p.read_bytes())
    manifest = broken / "diffvos.json"
    if text is None:
        data = json.loads(manifest.read_text())
        data["stride"] = "eight"
        text = json.dumps(data)
    manifest.write_text(text)
    assert track(broken, work["frames"], work["mask"], tmp_path / "o") == 1
    assert needle in err_of(capsys)


def test_small_objects_warn_with_the_stride_and_rgb_masks_print_their_ids(bundle, work, tmp_path, capsys):
    rgb = np.zeros((120, 200, 3), np.uint8)
    rgb[40:80, 30:90] = (10, 200, 30)  # a large object
    rgb[10:20, 150:160] = (250, 250, 0)  # 10x10 px
    rgb[100, 100] = (0, 40, 250)  # 1 px
    mask = tmp_path / "rgb.png"
    Image.fromarray(rgb).save(mask)
    assert track(bundle, work["frames"], mask, tmp_path / "o") == 0
    err = err_of(capsys)
    # colours get ids 1..n in sorted colour order (diffvos.io.masks)
    assert "mask colours read as object ids: (0,40,250) -> 1, (10,200,30) -> 2, (250,250,0) -> 3" in err
    warned = [line for line in err.splitlines() if line.startswith("warning: object")]
    assert len(warned) == 2 and "object 1 spans 1x1 px" in warned[0] and "object 3 spans 10x10 px" in warned[1]
    assert "stride 8" in warned[0] and "objects need at least about" in warned[0]


def test_one_frame_summary_has_no_empty_timings(bundle, work, tmp_path, capsys):
    one = tmp_path / "one"
    one.mkdir()
    (one / "00000.jpg").write_bytes((work["frames"] / "00000.jpg").read_bytes())
    assert track(bundle, one, work["mask"], tmp_path / "o") == 0
    line = capsys.readouterr().out
    assert "tracked 1 frames" in line and "mean ms per frame" not in line and "total 0.0" not in line


def test_eval_messages_and_csv_policy(bundle, work, tmp_path, capsys):
    root = tmp_path / "davis"
    seq_gt = root / "Annotations" / "480p" / "clip"
    seq_gt.mkdir(parents=True)
    for i in range(N):  # the first mask as ground truth of every frame: any labels will do
        (seq_gt / f"{i:05d}.png").write_bytes(work["mask"].read_bytes())
    preds = tmp_path / "preds"
    assert track(bundle, work["frames"], work["mask"], preds / "clip") == 0
    capsys.readouterr()
    # a folder given to --csv: refused before the evaluation, named
    assert main(["eval", "-p", str(preds), "-a", str(root), "--csv", str(tmp_path)]) == 1
    assert "--csv is a folder; give a file name" in err_of(capsys)
    # an existing CSV needs --force
    csv = tmp_path / "res.csv"
    csv.write_text("mine")
    assert main(["eval", "-p", str(preds), "-a", str(root), "--csv", str(csv)]) == 1
    assert "--csv exists; use --force" in err_of(capsys) and csv.read_text() == "mine"
    assert main(["eval", "-p", str(preds), "-a", str(root), "--csv", str(csv), "--force"]) == 0
    assert csv.read_text().startswith("J&F-Mean")
    # a flat folder of masks: the hint names the layout
    assert main(["eval", "-p", str(preds / "clip"), "-a", str(root)]) == 1
    assert "put each sequence's masks in ROOT/<sequence>/" in err_of(capsys)
    # an unfinished run is refused by eval
    record = json.loads((preds / "clip" / RUN_MANIFEST).read_text())
    record.update(complete=False, frames_done=4)
    (preds / "clip" / RUN_MANIFEST).write_text(json.dumps(record))
    assert main(["eval", "-p", str(preds), "-a", str(root)]) == 1
    assert "unfinished run (4 of 10 frames)" in err_of(capsys)


def test_resume_refuses_a_run_with_other_options(bundle, work, tmp_path, capsys):
    out = tmp_path / "o"
    assert track(bundle, work["frames"], work["mask"], out) == 0
    before = tree(out)
    assert track(bundle, work["frames"], work["mask"], out, "--resume", "--memory", "5") == 1
    assert "differs in option propagation" in err_of(capsys)
    assert track(bundle, work["frames"], work["mask"], out, "--resume") == 0  # complete: nothing to do
    assert "nothing to do" in err_of(capsys)
    assert tree(out) == before


def test_export_calibrate_fp16_refuse_outputs_in_their_inputs(bundle, work, tmp_path, capsys):
    before = tree(bundle)
    assert main(["fp16", "--bundle", str(bundle), "--output", str(bundle)]) == 1
    assert "is the --bundle input" in err_of(capsys)
    assert main(["calibrate", "--bundle", str(bundle), "--frames", str(work["frames"]),
                 "--output", str(work["frames"] / "int8")]) == 1
    assert "lies inside the --frames" in err_of(capsys)
    weights = tmp_path / "w" / "w.pth"
    weights.parent.mkdir()
    weights.write_bytes(b"not really weights")
    assert main(["export", "mobilenetv2", "--weights", str(weights), "--output", str(weights.parent)]) == 1
    assert "contains the weights input" in err_of(capsys)
    assert tree(bundle) == before and weights.read_bytes() == b"not really weights"


# --- 8. the API: a failing call has no side effect --------------------------------------------------------


def _bad_calls(session, frame: np.ndarray, mask: np.ndarray | None, k_new: int):
    """(description, call, exception type) of calls that must fail without changing anything."""
    from diffvos.errors import InputError, InvalidBufferError

    h, w = frame.shape[:2]
    good_out = np.zeros((h, w), np.uint8)
    read_only = np.zeros((h, w), np.uint8)
    read_only.setflags(write=False)
    k = len(session.info.object_ids) + k_new
    grid = session.info.prob_shape[1:]
    calls = [
        ("flipped out", dict(out=np.zeros((h, w), np.uint8)[::-1]), InvalidBufferError),
        ("Fortran-order out", dict(out=np.asfortranarray(np.zeros((h, w), np.uint8))), InvalidBufferError),
        ("strided out", dict(out=np.zeros((h, 2 * w), np.uint8)[:, ::2]), InvalidBufferError),
        ("read-only out", dict(out=read_only), InvalidBufferError),
        ("int32 out", dict(out=np.zeros((h, w), np.int32)), InvalidBufferError),
        ("frame of another size", dict(frame=frame[:-1]), InvalidBufferError),
        ("float frame", dict(frame=frame.astype(np.float32)), InvalidBufferError),
        ("probs of the old object count", dict(probs=np.zeros((k, *grid), np.float32), out=good_out), InvalidBufferError),
        ("flipped probs", dict(probs=np.zeros((k + 1, *grid), np.float32)[::-1]), InvalidBufferError),
    ]
    if mask is not None:
        calls += [
            ("int64 mask", dict(mask=mask.astype(np.int64)), InvalidBufferError),
            ("object id not in the mask", dict(mask=mask, object_ids=[77]), InputError),
            ("object id that is a bool", dict(mask=mask, object_ids=[True]), InputError),
        ]
    else:
        calls += [("object_ids without a mask", dict(object_ids=[1]), InputError)]
    for name, kw, exc in calls:
        kw.setdefault("frame", frame)
        if mask is not None:
            kw.setdefault("mask", mask)
        yield name, kw, exc


def _state(session) -> tuple:
    info = session.info
    return info.object_ids, info.prob_shape, info.frames, info.memory_bytes


def test_every_failing_step_leaves_the_session_as_if_never_made(tmp_path):
    """Session A gets every bad call before each good one; session B only the good ones. Their
    info and every result must be identical (issue 11, item 8)."""
    import diffvos
    from diffvos.errors import NoSuchObjectError, NotStartedError
    from diffvos.sample_clip import moving_squares

    frames, truths = moving_squares(8)
    b = make_toy_bundle(tmp_path / "toy", height=64, width=96)
    with diffvos.Runtime(b, backend="cpu") as rt:
        a, twin = rt.session(96, 64), rt.session(96, 64)
        with pytest.raises(NotStartedError):
            a.step(frames[0])
        first = np.where(truths[0] == 1, 1, 0).astype(np.uint8)  # object 2 is added mid-video
        later = np.where(truths[3] == 2, 2, 0).astype(np.uint8)
        for t, frame in enumerate(frames):
            mask = first if t == 0 else later if t == 3 else None
            new = 1 if mask is not None else 0
            for name, kw, exc in _bad_calls(a, frame, mask, new):
                before = _state(a)
                with pytest.raises(exc):
                    a.step(**kw)
                assert _state(a) == before, name
            if t > 0:
                with pytest.raises(NoSuchObjectError):
                    a.remove(9)
            pa = np.full((len(a.info.object_ids) + new + 1, *a.info.prob_shape[1:]), -1, np.float32)
            pb = pa.copy()
            flipped = np.ascontiguousarray(frame[::-1])[::-1]  # a non-contiguous frame is fine as input
            out_a = a.step(flipped, mask=mask, probs=pa)
            out_b = twin.step(frame, mask=mask, probs=pb)
            assert np.array_equal(out_a, out_b) and np.array_equal(pa, pb), f"frame {t}"
            assert _state(a) == _state(twin)
        assert a.info.object_ids == [1, 2]


def test_runtime_of_a_non_path_is_an_input_error():
    import diffvos
    from diffvos.errors import InputError
    from diffvos.runtime.capi.status import Status, status_of

    with pytest.raises(InputError, match="bundle must be a path, not int") as caught:
        diffvos.Runtime(42)
    assert status_of(caught.value) == Status.INVALID_ARGUMENT  # not INTERNAL at the C boundary
