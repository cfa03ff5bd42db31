"""Video/mask I/O: frame sources, mask reading and writing, overlays, and every user-facing error."""

from __future__ import annotations

import os
from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import Image

from diffvos.errors import InputError, OutputError
from diffvos.io.frames import natural_key, open_frames
from diffvos.io.masks import DAVIS_PALETTE, MaskWriter, check_mask_size, read_mask
from diffvos.io.overlay import OverlayWriter, blend_overlay


def _frame(h: int, w: int, value: int) -> np.ndarray:
    """A frame whose content identifies it: a flat level plus a gradient (survives lossy codecs)."""
    y, x = np.mgrid[0:h, 0:w]
    img = np.stack([np.full((h, w), value), (x * 255 // max(w - 1, 1)), (y * 255 // max(h - 1, 1))], -1)
    return img.astype(np.uint8)


def _write_video(path: Path, frames: list[np.ndarray], fps: float = 12.0) -> None:
    h, w = frames[0].shape[:2]
    vw = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), fps, (w, h))
    assert vw.isOpened()
    for f in frames:
        vw.write(f)
    vw.release()


def _count_video(path: Path) -> tuple[int, tuple[int, int]]:
    cap = cv2.VideoCapture(str(path))
    n, shape = 0, (0, 0)
    while True:
        ok, f = cap.read()
        if not ok:
            break
        n, shape = n + 1, f.shape[:2]
    cap.release()
    return n, shape


# ---------------------------------------------------------------- frame sources


def test_folder_natural_order_and_names(tmp_path: Path) -> None:
    for i, name in enumerate(["10.jpg", "2.png", "1.jpg", "frame_b.bmp"]):
        cv2.imwrite(str(tmp_path / name), _frame(16, 24, 40 * i))
    (tmp_path / "notes.txt").write_text("not a frame")
    (tmp_path / ".hidden.jpg").write_bytes(b"junk")  # hidden files are ignored
    src = open_frames(tmp_path)
    assert len(src) == 4 and src.size == (16, 24) and src.fps == 24.0 and src.exact_length
    frames = list(src)
    assert [f.name for f in frames] == ["1", "2", "10", "frame_b"]  # natural, not '1','10','2'
    assert [f.index for f in frames] == [0, 1, 2, 3]
    # PNG and BMP are lossless: the decoded pixels are the written ones
    np.testing.assert_array_equal(frames[1].bgr, _frame(16, 24, 40))
    np.testing.assert_array_equal(frames[3].bgr, _frame(16, 24, 120))
    assert all(f.bgr.dtype == np.uint8 and f.bgr.shape == (16, 24, 3) for f in frames)
    assert [f.name for f in src] == [f.name for f in frames]  # iterable twice


def test_natural_key_zero_padded_agrees_with_lexicographic() -> None:
    names = [f"{i:05d}.jpg" for i in (0, 9, 10, 99, 100)]
    assert sorted(names, key=natural_key) == sorted(names)
    assert sorted(["img10", "img9", "Img1"], key=natural_key) == ["Img1", "img9", "img10"]


def test_video_round_trip(tmp_path: Path) -> None:
    frames = [_frame(48, 64, 30 * i) for i in range(7)]
    path = tmp_path / "clip.mp4"
    _write_video(path, frames, fps=12.0)
    src = open_frames(path)
    assert src.size == (48, 64) and abs(src.fps - 12.0) < 1e-6
    assert len(src) == 7  # the container's count; exact for this file
    got = list(src)
    assert [f.name for f in got] == [f"{i:05d}" for i in range(7)]
    for f, ref in zip(got, frames):
        assert f.bgr.shape == (48, 64, 3)
        err = np.abs(f.bgr.astype(int) - ref.astype(int)).mean()
        assert err < 8, f"frame {f.index} differs by {err:.1f} on average"
    # frames are told apart: each is closest to its own reference
    assert [int(np.argmin([np.abs(f.bgr[..., 0].astype(int) - r[..., 0]).mean() for r in frames])) for f in got] == list(
        range(7)
    )


def test_missing_path(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="not found") as e:
        open_frames(tmp_path / "nope.mp4")
    assert "nope.mp4" in str(e.value)


@pytest.mark.parametrize("content", [b"", os.urandom(4096)], ids=["empty", "random-bytes"])
def test_unreadable_video(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "bad.mp4"
    path.write_bytes(content)
    with pytest.raises(InputError) as e:
        open_frames(path)
    assert "bad.mp4" in str(e.value)


def test_empty_folder(tmp_path: Path) -> None:
    (tmp_path / "readme.txt").write_text("x")
    with pytest.raises(InputError, match="no frames found") as e:
        open_frames(tmp_path)
    assert str(tmp_path) in str(e.value)


def test_mixed_sizes_detected_at_open(tmp_path: Path) -> None:
    cv2.imwrite(str(tmp_path / "00000.png"), _frame(16, 24, 0))
    cv2.imwrite(str(tmp_path / "00001.png"), _frame(16, 24, 0))
    cv2.imwrite(str(tmp_path / "00002.png"), _frame(20, 24, 0))
    with pytest.raises(InputError) as e:
        open_frames(tmp_path)
    msg = str(e.value)
    assert "00002.png" in msg and "24x20" in msg and "24x16" in msg and "00000.png" in msg


def test_unreadable_image_detected_at_open(tmp_path: Path) -> None:
    cv2.imwrite(str(tmp_path / "00000.jpg"), _frame(16, 24, 0))
    (tmp_path / "00001.jpg").write_bytes(b"this is not a jpeg")
    with pytest.raises(InputError, match="cannot read") as e:
        open_frames(tmp_path)
    assert "00001.jpg" in str(e.value)


def test_truncated_image_fails_while_reading(tmp_path: Path) -> None:
    """A valid header with missing pixel data passes the cheap check and fails at decode."""
    cv2.imwrite(str(tmp_path / "00000.png"), _frame(16, 24, 0))
    data = cv2.imencode(".png", _frame(16, 24, 9))[1].tobytes()
    (tmp_path / "00001.png").write_bytes(data[: len(data) // 2])
    src = open_frames(tmp_path)
    it = iter(src)
    assert next(it).name == "00000"
    with pytest.raises(InputError) as e:
        next(it)
    assert "00001.png" in str(e.value)


def test_duplicate_stems_rejected(tmp_path: Path) -> None:
    cv2.imwrite(str(tmp_path / "00000.jpg"), _frame(16, 24, 0))
    cv2.imwrite(str(tmp_path / "00000.png"), _frame(16, 24, 0))
    with pytest.raises(InputError, match="share the name"):
        open_frames(tmp_path)


def test_davis_folder_and_greyscale_mask(davis_root: Path) -> None:
    seq = "dog-agility"
    src = open_frames(davis_root / "JPEGImages" / "480p" / seq)
    assert len(src) == 25 and src.size == (480, 854)
    first = next(iter(src))
    assert first.name == "00000"
    ref = np.asarray(Image.open(davis_root / "JPEGImages" / "480p" / seq / "00000.jpg").convert("RGB"))[..., ::-1]
    assert np.abs(first.bgr.astype(int) - ref.astype(int)).mean() < 2  # two JPEG decoders agree
    mask_path = davis_root / "Annotations" / "480p" / seq / "00000.png"
    mask = read_mask(mask_path)
    raw = np.asarray(Image.open(mask_path))
    assert mask.kind == "grey" and mask.palette is None and mask.object_ids == [1]
    np.testing.assert_array_equal(mask.labels, (raw > 127).astype(np.uint8))
    assert check_mask_size(mask, src.size) is mask.labels


# ---------------------------------------------------------------- masks


def _save_p(path: Path, labels: np.ndarray, palette: np.ndarray = DAVIS_PALETTE) -> None:
    im = Image.fromarray(labels.astype(np.uint8))
    im.putpalette(palette.tobytes())
    im.save(path)


def test_palette_mask_void_and_noncontiguous_ids(tmp_path: Path) -> None:
    labels = np.zeros((10, 12), np.uint8)
    labels[1:4, 1:4] = 1
    labels[5:9, 6:10] = 3
    labels[0, :] = 255  # void
    _save_p(tmp_path / "m.png", labels)
    m = read_mask(tmp_path / "m.png")
    assert m.kind == "palette" and m.object_ids == [1, 3]
    expected = labels.copy()
    expected[expected == 255] = 0
    np.testing.assert_array_equal(m.labels, expected)
    np.testing.assert_array_equal(m.palette, DAVIS_PALETTE)


def test_rgb_masks(tmp_path: Path) -> None:
    # grey RGB (0/255) reads as DAVIS-2016
    grey = np.zeros((8, 8, 3), np.uint8)
    grey[2:5, 2:5] = 255
    Image.fromarray(grey).save(tmp_path / "grey.png")
    m = read_mask(tmp_path / "grey.png")
    assert m.kind == "grey" and m.object_ids == [1] and int(m.labels.sum()) == 9
    # a DAVIS-coloured mask saved as RGB keeps its DAVIS indices
    ids = np.zeros((8, 8), np.uint8)
    ids[0:2, 0:2], ids[4:6, 4:6] = 2, 5
    Image.fromarray(DAVIS_PALETTE[ids]).save(tmp_path / "davis_rgb.png")
    m = read_mask(tmp_path / "davis_rgb.png")
    np.testing.assert_array_equal(m.labels, ids)
    assert m.object_ids == [2, 5]
    # arbitrary colours: ids 1..n in sorted colour order, palette built from them
    rgb = np.zeros((8, 8, 3), np.uint8)
    rgb[0:3, 0:3] = (250, 10, 10)
    rgb[5:8, 5:8] = (10, 250, 10)
    Image.fromarray(rgb).save(tmp_path / "rgb.png")
    m = read_mask(tmp_path / "rgb.png")
    assert m.kind == "rgb" and m.object_ids == [1, 2]
    assert (m.labels[5:8, 5:8] == 1).all() and (m.labels[0:3, 0:3] == 2).all()  # (10,250,10) < (250,10,10)
    assert tuple(m.palette[1]) == (10, 250, 10) and tuple(m.palette[2]) == (250, 10, 10)


def test_small_index_greyscale_mask(tmp_path: Path) -> None:
    labels = np.zeros((6, 6), np.uint8)
    labels[1, 1], labels[4, 4] = 1, 2
    Image.fromarray(labels).save(tmp_path / "idx.png")  # mode L holding ids
    m = read_mask(tmp_path / "idx.png")
    assert m.kind == "index" and m.object_ids == [1, 2]
    np.testing.assert_array_equal(m.labels, labels)


def test_mask_errors(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="not found") as e:
        read_mask(tmp_path / "missing.png")
    assert "missing.png" in str(e.value)
    (tmp_path / "junk.png").write_bytes(b"\x89PNG but not really")
    with pytest.raises(InputError, match="cannot read") as e:
        read_mask(tmp_path / "junk.png")
    assert "junk.png" in str(e.value)
    Image.fromarray(np.zeros((5, 5), np.uint8)).save(tmp_path / "empty.png")
    with pytest.raises(InputError, match="mask has no object"):
        read_mask(tmp_path / "empty.png")
    void_only = np.full((5, 5), 255, np.uint8)
    void_only[0, 0] = 0
    _save_p(tmp_path / "void.png", void_only)
    with pytest.raises(InputError, match="mask has no object"):
        read_mask(tmp_path / "void.png")


def test_mask_size_mismatch_and_resize(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 4, (24, 30)).astype(np.uint8)
    labels[0, 0] = 3
    _save_p(tmp_path / "m.png", labels)
    m = read_mask(tmp_path / "m.png")
    with pytest.raises(InputError) as e:
        check_mask_size(m, (37, 53))
    msg = str(e.value)
    assert "m.png" in msg and "30x24" in msg and "53x37" in msg and "--resize-mask" in msg
    for hw in [(37, 53), (12, 15), (50, 23)]:
        out = check_mask_size(m, hw, resize=True)
        ref = np.asarray(Image.fromarray(labels).resize((hw[1], hw[0]), Image.NEAREST))
        np.testing.assert_array_equal(out, ref)  # PIL NEAREST semantics
    tiny = np.zeros((100, 100), np.uint8)
    tiny[50, 50] = 1
    _save_p(tmp_path / "tiny.png", tiny)
    with pytest.raises(InputError, match="vanish"):
        check_mask_size(read_mask(tmp_path / "tiny.png"), (10, 10), resize=True)


def test_mask_writer_round_trip_no_temp_files(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    palette = rng.integers(0, 256, (256, 3)).astype(np.uint8)
    out = tmp_path / "out" / "masks"
    w = MaskWriter(out, palette)
    frames = {f"{i:05d}": rng.choice(np.array([0, 1, 3, 7], np.uint8), (9, 13)) for i in range(3)}
    for name, lab in frames.items():
        assert w.write(name, lab) == out / f"{name}.png"
    assert sorted(os.listdir(out)) == [f"{n}.png" for n in frames]  # nothing left behind
    for name, lab in frames.items():
        with Image.open(out / f"{name}.png") as im:
            assert im.mode == "P" and im.size == (13, 9)
            np.testing.assert_array_equal(np.asarray(im), lab)
            np.testing.assert_array_equal(np.asarray(im.getpalette(), np.uint8).reshape(-1, 3), palette)
        back = read_mask(out / f"{name}.png")
        np.testing.assert_array_equal(back.labels, lab)
        np.testing.assert_array_equal(back.palette, palette)


def test_mask_writer_default_palette_for_greyscale(tmp_path: Path) -> None:
    w = MaskWriter(tmp_path, None)
    w.write("00000", np.eye(4, dtype=np.uint8))
    with Image.open(tmp_path / "00000.png") as im:
        assert im.mode == "P"
        np.testing.assert_array_equal(np.asarray(im.getpalette(), np.uint8).reshape(-1, 3), DAVIS_PALETTE)


def test_output_dir_not_writable(tmp_path: Path) -> None:
    blocker = tmp_path / "a_file"
    blocker.write_text("x")
    with pytest.raises(OutputError) as e:
        MaskWriter(blocker / "masks", None)
    assert "a_file" in str(e.value)
    with pytest.raises(OutputError):
        OverlayWriter(blocker / "overlay.mp4", 10, (16, 16))


# ---------------------------------------------------------------- overlays


def test_blend_overlay_hand_computed() -> None:
    bgr = np.full((20, 20, 3), 100, np.uint8)
    labels = np.zeros((20, 20), np.uint8)
    labels[5:15, 5:15] = 1
    out = blend_overlay(bgr, labels, alpha=0.5, contours=False)
    # DAVIS colour 1 is RGB (128, 0, 0) -> BGR (0, 0, 128); 0.5*100 + 0.5*c
    np.testing.assert_array_equal(out[10, 10], [50, 50, 114])
    np.testing.assert_array_equal(out[0, 0], [100, 100, 100])
    with_c = blend_overlay(bgr, labels)
    np.testing.assert_array_equal(with_c[10, 10], [50, 50, 114])  # interior untouched by contour
    assert not np.array_equal(with_c[5, 10], out[5, 10])  # the border is drawn
    np.testing.assert_array_equal(with_c[0, 0], [100, 100, 100])
    np.testing.assert_array_equal(bgr, 100)  # input not modified


@pytest.mark.parametrize("hw", [(32, 48), (31, 45)], ids=["even", "odd"])
def test_overlay_video_written_atomically(tmp_path: Path, hw: tuple[int, int]) -> None:
    dest = tmp_path / "overlay.mp4"
    labels = np.zeros(hw, np.uint8)
    labels[4:12, 4:20] = 2
    with OverlayWriter(dest, 8.0, hw) as ow:
        for i in range(5):
            ow.write(_frame(*hw, 20 * i), labels)
        assert not dest.exists()  # only the temporary file exists until close
    assert os.listdir(tmp_path) == ["overlay.mp4"]
    n, shape = _count_video(dest)
    assert n == 5 and shape == (hw[0] + hw[0] % 2, hw[1] + hw[1] % 2)


def test_overlay_aborted_on_error(tmp_path: Path) -> None:
    dest = tmp_path / "overlay.mp4"
    dest.write_bytes(b"previous")
    with pytest.raises(ValueError):
        with OverlayWriter(dest, 8.0, (16, 16)) as ow:
            ow.write(_frame(16, 16, 0), np.zeros((16, 16), np.uint8))
            ow.write(_frame(16, 18, 0), np.zeros((16, 18), np.uint8))  # wrong size
    assert os.listdir(tmp_path) == ["overlay.mp4"] and dest.read_bytes() == b"previous"


def test_overlay_unknown_container(tmp_path: Path) -> None:
    with pytest.raises(OutputError, match="video writer"):
        OverlayWriter(tmp_path / "overlay.notavideo", 8.0, (16, 16))
    assert os.listdir(tmp_path) == []
