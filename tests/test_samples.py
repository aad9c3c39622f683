"""Sample identity, shard storage, resumable generation."""
import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from dsbench.cell import Cell
from dsbench.generate import generate
from dsbench.samples import CorruptShardError, read_shard, sample_seed, shard_path, shard_ranges, write_shard
from tests.util import REPO, tiny_config


def images_by_index(folder, n, shard_size):
    out = {}
    for k, rng in enumerate(shard_ranges(n, shard_size)):
        s = read_shard(shard_path(folder, k), rng)
        out.update({int(i): img for i, img in zip(s.indices, s.images)})
    return out


def test_seeds_are_per_sample_and_distinct():
    seeds = [sample_seed(0, i) for i in range(1000)]
    assert len(set(seeds)) == 1000
    assert sample_seed(0, 5) == sample_seed(0, 5) != sample_seed(1, 5)
    assert sample_seed(1, 0) != sample_seed(0, 1)  # not base + index


def test_shard_and_batch_size_do_not_change_images(tmp_path):
    runs = {}
    for shard_size, batch in [(2, 1), (4, 1), (4, 3), (6, 2)]:
        cfg = tiny_config(shard_size=shard_size, batch_size=batch, model={"num_samples": 6})
        folder = tmp_path / f"s{shard_size}b{batch}"
        generate(Cell(cfg, "tiny_pixart", "none"), folder, progress=False)
        runs[(shard_size, batch)] = images_by_index(folder, 6, shard_size)
    ref = runs[(2, 1)]
    assert sorted(ref) == list(range(6))
    for key, imgs in runs.items():
        for i in range(6):
            if key[1] == 1:  # the same batch size, another shard size: bit-identical
                np.testing.assert_array_equal(imgs[i], ref[i], err_msg=f"sample {i} differs for {key}")
            # Another batch size: within one grey level (small-batch CPU GEMMs round by batch size; README).
            diff = np.abs(imgs[i].astype(int) - ref[i].astype(int))
            assert diff.max() <= 1 and (diff > 0).mean() < 0.01, f"sample {i} differs for {key}: {diff.max()}"
    assert not np.array_equal(ref[0], ref[1])


def test_shard_roundtrip_and_corruption_is_detected(tmp_path):
    imgs = np.random.default_rng(0).integers(0, 256, (3, 8, 8, 3), dtype=np.uint8)
    p = tmp_path / "shard_00000.npz"
    write_shard(p, imgs, [0, 1, 2], [7, 8, 9], {"model": "m"})
    s = read_shard(p, range(0, 3))
    np.testing.assert_array_equal(s.images, imgs)
    assert list(s.seeds) == [7, 8, 9] and s.meta["model"] == "m"
    with pytest.raises(CorruptShardError, match="were expected"):
        read_shard(p, range(3, 6))
    data = p.read_bytes()
    p.write_bytes(data[: len(data) // 2])  # truncated
    with pytest.raises(CorruptShardError, match=str(p)):
        read_shard(p)
    with pytest.raises(ValueError, match="uint8"):
        write_shard(tmp_path / "x.npz", imgs.astype(np.float32), [0, 1, 2], [0, 1, 2], {})


def test_generation_never_overwrites_a_corrupt_shard(tmp_path):
    cfg = tiny_config(model={"num_samples": 4}, shard_size=2)
    folder = tmp_path / "cell"
    folder.mkdir()
    bad = shard_path(folder, 0)
    bad.write_bytes(b"not a shard")
    with pytest.raises(CorruptShardError, match="delete it and rerun"):
        generate(Cell(cfg, "tiny_pixart", "none"), folder, progress=False)
    assert bad.read_bytes() == b"not a shard"


def _fid(folder, n, shard_size):
    from metrics.fid import FeatureStats, frechet_distance, image_features
    from metrics.networks import load_fid_network
    from dsbench.samples import iter_images

    net = load_fid_network("tiny", None, "cpu")
    a, b = FeatureStats(), FeatureStats()
    for f in image_features(iter_images(folder, n, shard_size), net, "cpu"):
        a.update(f)
    rng = np.random.default_rng(1)  # a fixed synthetic reference
    for f in image_features([rng.integers(0, 256, (n, 32, 32, 3), dtype=np.uint8)], net, "cpu"):
        b.update(f)
    return frechet_distance(a, b)


def test_sigkill_half_way_then_rerun_completes_once(tmp_path):
    n, shard_size = 10, 2
    cfg = tiny_config(model={"num_samples": n, "steps": 30}, shard_size=shard_size, batch_size=2)
    cfg_json = json.dumps(cfg)
    killed = tmp_path / "killed"
    cmd = [sys.executable, "-m", "dsbench", "generate", "--config", cfg_json, "--model", "tiny_pixart",
           "--method", "none", "--root", str(killed)]
    folder = killed / "samples" / "tiny_pixart" / "none"
    proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 240
    while not shard_path(folder, 1).exists():  # two shards written, more to come
        assert proc.poll() is None, "generation ended before it could be killed"
        assert time.time() < deadline
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    done_before = sorted(p.name for p in folder.glob("shard_*.npz"))
    assert 2 <= len(done_before) < n // shard_size, done_before
    mtimes = {p.name: p.stat().st_mtime_ns for p in folder.glob("shard_*.npz")}

    subprocess.run(cmd, cwd=REPO, check=True, capture_output=True)
    for name, t in mtimes.items():  # shards written before the kill are kept, not rewritten
        assert (folder / name).stat().st_mtime_ns == t
    killed_imgs = images_by_index(folder, n, shard_size)
    assert sorted(killed_imgs) == list(range(n))  # every sample present, once

    clean = tmp_path / "clean"
    generate(Cell(cfg, "tiny_pixart", "none"), clean, progress=False)
    clean_imgs = images_by_index(clean, n, shard_size)
    for i in range(n):
        np.testing.assert_array_equal(killed_imgs[i], clean_imgs[i])
    assert _fid(folder, n, shard_size) == _fid(clean, n, shard_size)
