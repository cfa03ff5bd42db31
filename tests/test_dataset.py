"""``diffvos track-dataset``: layouts (DAVIS, YouTube-VOS / MOSE with objects first annotated on a
later frame), outputs equal to the API stepped by hand, resumable runs, failures retried and
reported; and the same on a real local Ray cluster (head + 2 worker nodes, all on 127.0.0.1):
outputs identical to the in-process run, and complete after a worker node is killed mid-run."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import cv2
import numpy as np
import pytest

import diffvos
from diffvos.dataset.layout import DAVIS, MOSE, YOUTUBE_VOS, detect
from diffvos.dataset.run import LOCAL_RAY_ENV, track_dataset
from diffvos.dataset.store import MARKER
from diffvos.errors import InputError
from diffvos.export.toy import make_toy_bundle
from diffvos.io.masks import encode_indexed_png, read_label_map
from diffvos.sample_clip import moving_squares

FRAMES_PER_VIDEO = 6
OBJECTS = (
    (1, (0, 0, 255), (8, 8), (0, 2), 20, 0),
    (2, (255, 200, 0), (36, 70), (0, -2), 20, 2),  # first annotated on frame 2
    (3, (200, 0, 200), (40, 10), (-1, 1), 14, 4),  # first annotated on frame 4
)


@pytest.fixture(scope="module")
def bundle(tmp_path_factory):
    return make_toy_bundle(tmp_path_factory.mktemp("toy") / "toy", alpha_bar=0.9, ensemble=2)


def _ytvos(root: Path, videos: int = 2, meta: bool = True) -> Path:
    """A YouTube-VOS-layout root: each object's first mask in the frame where it appears."""
    for v in range(videos):
        objs = tuple((o, c, (y + v, x + v), d, s, start) for o, c, (y, x), d, s, start in OBJECTS)
        frames, truths = moving_squares(8, 64, 96, objects=objs)
        fdir, adir = root / "JPEGImages" / f"vid{v}", root / "Annotations" / f"vid{v}"
        fdir.mkdir(parents=True)
        adir.mkdir(parents=True)
        seen: set[int] = set()
        for t, (f, lab) in enumerate(zip(frames, truths)):
            name = f"{5 * t:05d}"
            cv2.imwrite(str(fdir / f"{name}.png"), f)
            new = {int(i) for i in np.unique(lab) if i and i not in seen}
            if new:
                (adir / f"{name}.png").write_bytes(encode_indexed_png(np.where(np.isin(lab, list(new)), lab, 0)))
                seen |= new
    if meta:
        (root / "meta.json").write_text("{}")
    return root


def _read_all(out: Path) -> dict[str, dict[str, np.ndarray]]:
    return {v.name: {p.stem: read_label_map(p)[0] for p in sorted(v.glob("*.png"))}
            for v in sorted(out.iterdir()) if v.is_dir() and not v.name.startswith(".")}


def test_youtube_vos_and_mose_layouts_add_objects_at_first_appearance(bundle, tmp_path):
    root = _ytvos(tmp_path / "ytvos")
    ds = detect(root)
    assert ds.kind == YOUTUBE_VOS and [v.name for v in ds.videos] == ["vid0", "vid1"]
    assert sorted(ds.videos[0].annotations) == ["00000", "00010", "00020"]
    shutil.move(root / "meta.json", tmp_path / "meta.json.bak")
    assert detect(root).kind == MOSE
    summary = track_dataset(bundle, root, tmp_path / "out", backend="cpu", progress=False)
    assert (len(summary.done), summary.failed, summary.frames) == (2, {}, 16)
    got = _read_all(tmp_path / "out")
    # the reference: the API stepped by hand, objects 2 and 3 added from their first masks
    with diffvos.Runtime(bundle, backend="cpu") as rt:
        for v in ds.videos:
            s = rt.session(96, 64)
            for t in range(8):
                name = f"{5 * t:05d}"
                frame = cv2.imread(str(v.frames / f"{name}.png"))
                ann = v.annotations.get(name)
                if ann is not None:
                    lab = read_label_map(ann)[0]
                    new = [int(i) for i in np.unique(lab) if i]
                    want = s.step(frame, mask=lab, object_ids=new)
                else:
                    want = s.step(frame)
                np.testing.assert_array_equal(got[v.name][name], want, err_msg=f"{v.name} {name}")
            assert s.info.object_ids == [1, 2, 3]


def test_davis_layout_resume_failures_and_settings(bundle, tmp_path, davis_subset):
    out = tmp_path / "out"
    broken = davis_subset.parent / "broken"
    shutil.copytree(davis_subset, broken, symlinks=True)
    bad = broken / "JPEGImages" / "480p" / "zz-broken"
    (broken / "Annotations" / "480p" / "zz-broken").mkdir(parents=True)
    bad.mkdir(parents=True)
    shutil.copy(next((davis_subset / "Annotations" / "480p" / "surf").iterdir()),
                broken / "Annotations" / "480p" / "zz-broken" / "00000.png")
    (bad / "00000.jpg").write_bytes(b"not a jpeg")
    assert detect(broken).kind == DAVIS
    first = track_dataset(bundle, broken, out, backend="cpu", progress=False)
    assert sorted(first.done) == sorted(v.name for v in detect(davis_subset).videos)
    assert list(first.failed) == ["zz-broken"] and first.failed["zz-broken"].startswith("failed 3 times")
    assert not (out / "zz-broken").exists() and not [p for p in out.iterdir() if p.name.startswith(".")]
    # a crash leaves a staging folder; the rerun removes it, skips the finished videos, retries the failed one
    (out / ".surf.partial-123abc").mkdir()
    (out / ".surf.partial-123abc" / "00000.png").write_bytes(b"half")
    again = track_dataset(bundle, broken, out, backend="cpu", progress=False)
    assert again.skipped == len(first.done) and again.done == {} and list(again.failed) == ["zz-broken"]
    assert not (out / ".surf.partial-123abc").exists()
    # other settings are not mixed into a finished folder
    with pytest.raises(InputError, match="other settings"):
        track_dataset(bundle, broken, out, backend="cpu", config=diffvos.SessionConfig.from_options(memory=3),
                      progress=False)
    # the command line: a summary, exit status 1 while a video fails
    r = subprocess.run([sys.executable, "-m", "diffvos", "track-dataset", "--bundle", str(bundle), "--input",
                        str(broken), "--output", str(out), "--backend", "cpu", "--no-progress"],
                       capture_output=True, text=True)
    assert r.returncode == 1 and "FAILED zz-broken" in r.stdout and "already done" in r.stdout, r.stdout + r.stderr
    marker = (out / "surf" / MARKER).read_text()
    assert '"frames": 6' in marker


@pytest.fixture(scope="module")
def davis_subset(davis_root, tmp_path_factory) -> Path:
    """The shared DAVIS sequences, FRAMES_PER_VIDEO frames each (symlinks), in DAVIS layout."""
    dst = tmp_path_factory.mktemp("davis") / "davis"
    for kind, ext in (("JPEGImages", "jpg"), ("Annotations", "png")):
        for seq in sorted((davis_root / kind / "480p").iterdir()):
            d = dst / kind / "480p" / seq.name
            d.mkdir(parents=True)
            for i in range(FRAMES_PER_VIDEO):
                src = seq / f"{i:05d}.{ext}"
                if src.exists():
                    os.symlink(src, d / src.name)
    return dst


@pytest.fixture(scope="module")
def in_process(bundle, davis_subset, tmp_path_factory):
    out = tmp_path_factory.mktemp("inproc") / "out"
    summary = track_dataset(bundle, davis_subset, out, backend="cpu", progress=False)
    assert not summary.failed and len(summary.done) == len(detect(davis_subset).videos)
    return _read_all(out)


@pytest.fixture(scope="module")
def ray_cluster():
    """Head (no CPU: it schedules only) + 2 worker nodes of 1 CPU, all on 127.0.0.1, in a short
    temporary folder of their own; stopped by the fixture (never ``ray stop``)."""
    saved = {k: os.environ.get(k) for k in LOCAL_RAY_ENV}
    os.environ.update(LOCAL_RAY_ENV)  # before ray is imported: it reads them at import
    pytest.importorskip("ray", reason="needs ray (pip install 'diffvos[ray]')")
    from ray.cluster_utils import Cluster

    tmp = tempfile.mkdtemp(prefix="dvr", dir="/tmp")  # short: Ray's socket paths are limited to 107 chars
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 0, "include_dashboard": False,
                                                            "object_store_memory": 80 << 20, "temp_dir": tmp})
    try:
        assert cluster.address.startswith("127.0.0.1:"), cluster.address  # loopback only
        workers = [cluster.add_node(num_cpus=1, object_store_memory=80 << 20) for _ in range(2)]
        cluster.wait_for_nodes()
        yield cluster, workers
    finally:
        import ray

        ray.shutdown()
        cluster.shutdown()
        shutil.rmtree(tmp, ignore_errors=True)
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def test_ray_cluster_outputs_equal_the_in_process_run(bundle, davis_subset, in_process, ray_cluster, tmp_path):
    cluster, _ = ray_cluster
    summary = track_dataset(bundle, davis_subset, tmp_path / "out", backend="cpu", ray_address=cluster.address,
                            progress=False)
    assert not summary.failed and "on Ray (2 actors, 1 CPU each)" in summary.where
    hosts = {r["host"] for r in summary.done.values()}
    print(summary.lines(), hosts)
    got = _read_all(tmp_path / "out")
    assert got.keys() == in_process.keys()
    for video, frames in in_process.items():
        assert got[video].keys() == frames.keys()
        for name, labels in frames.items():
            np.testing.assert_array_equal(got[video][name], labels, err_msg=f"{video} {name}")


def test_ray_run_completes_after_a_worker_node_is_killed(bundle, davis_subset, in_process, ray_cluster, tmp_path):
    cluster, workers = ray_cluster
    out = tmp_path / "out"
    state = {"killed_with_done": None}

    def kill_when_one_is_done() -> None:
        done = [p for p in out.iterdir() if (p / MARKER).exists()] if out.exists() else []
        if state["killed_with_done"] is None and done:
            cluster.remove_node(workers[0], allow_graceful=False)
            state["killed_with_done"] = len(done)

    summary = track_dataset(bundle, davis_subset, out, backend="cpu", ray_address=cluster.address, progress=False,
                            on_tick=kill_when_one_is_done)
    assert state["killed_with_done"] is not None and state["killed_with_done"] < len(in_process)
    print(summary.lines(), state)
    assert not summary.failed and len(summary.done) == len(in_process)
    assert _read_all(out).keys() == in_process.keys()
    for video, frames in _read_all(out).items():
        for name, labels in frames.items():
            np.testing.assert_array_equal(labels, in_process[video][name], err_msg=f"{video} {name}")
    assert not [p for p in out.iterdir() if p.name.startswith(".")]


def test_output_policy_of_a_dataset_run(bundle, tmp_path):
    """The output folder lies apart from the inputs, holds only this command's results, and one
    run writes into it at a time; a refused run changes nothing."""
    from diffvos.errors import OutputError
    from diffvos.io.outputs import OutputLock

    root = _ytvos(tmp_path / "ytvos", videos=1)
    with pytest.raises(OutputError, match="inside"):
        track_dataset(bundle, root, root / "results", progress=False)
    assert not (root / "results").exists()
    out = tmp_path / "out"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    with pytest.raises(OutputError, match="notes.txt"):
        track_dataset(bundle, root, out, progress=False)
    assert sorted(p.name for p in out.iterdir()) == ["notes.txt"]
    fresh = tmp_path / "fresh"
    import fcntl

    with open(OutputLock(fresh).path, "w") as held:  # as another process holding the folder's lock would
        fcntl.flock(held, fcntl.LOCK_EX)
        with pytest.raises(OutputError, match="another diffvos run"):
            track_dataset(bundle, root, fresh, progress=False)
    OutputLock(fresh).path.unlink()
    summary = track_dataset(bundle, root, fresh, progress=False)
    assert not summary.failed and (fresh / "vid0" / MARKER).is_file()
