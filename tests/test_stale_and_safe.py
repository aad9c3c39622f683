"""Numbers that cannot go stale: a shard, a baseline or reference statistics made under other settings are
refused with the differing key and how to regenerate, and nothing already written is touched. Also the
one-line errors of the unsafe paths (a planted checkpoint, a read-only or full results folder, CUDA asked
for on a machine without it) and the per-shard lock that keeps two generators from making a shard twice."""
import errno
import json
import logging
import os
import subprocess
import sys
import threading
import time

import numpy as np
import pytest
import torch

from dsbench.cell import Cell
from dsbench.evaluate import check_reference_identity, evaluate, reference_stats
from dsbench.generate import generate, shard_lock
from dsbench.io import WriteError, write_json
from dsbench.samples import MissingShardError, StaleShardError, shard_path
from tests.util import REPO, tiny_config


def small(**over):
    model = {"num_samples": 4, "steps": 2, "reference_samples": 4, "methods": ["none", "fora_n2", "toca"],
             **over.pop("model", {})}
    return tiny_config(model=model, shard_size=2, fidelity_samples=4, tables={}, **over)


def snapshot(folder):
    return {p.name: (p.stat().st_ino, p.read_bytes()) for p in sorted(folder.glob("shard_*.npz"))}


@pytest.fixture(scope="module")
def made(tmp_path_factory):
    """A root with `none`, `fora_n2` and `toca` generated under small() and the reference statistics."""
    root = tmp_path_factory.mktemp("results")
    cfg = small()
    for m in ("none", "fora_n2", "toca"):
        generate(Cell(cfg, "tiny_pixart", m), root / "samples" / "tiny_pixart" / m, progress=False)
    reference_stats(Cell(cfg, "tiny_pixart", "none"), root / "reference" / "tiny_pixart.npz", samples_root=root)
    return root


@pytest.mark.parametrize("change, message", [
    (dict(seed=1), "base_seed is 0 there, 1 now"),
    (dict(model={"steps": 3}), "steps is 2 there, 3 now"),
    (dict(model={"guidance_scale": 2.0}), "guidance_scale is 4.5 there, 2.0 now"),
])
def test_generate_refuses_shards_made_under_other_model_settings(made, change, message):
    folder = made / "samples" / "tiny_pixart" / "fora_n2"
    before = snapshot(folder)
    with pytest.raises(StaleShardError, match=message) as e:
        generate(Cell(small(**change), "tiny_pixart", "fora_n2"), folder, progress=False)
    assert f"delete {folder}" in str(e.value)
    assert snapshot(folder) == before


def test_generate_refuses_shards_of_a_retuned_variant(made):
    cfg = small()
    cfg["methods"]["toca"]["fresh_ratio"] = 0.9
    folder = made / "samples" / "tiny_pixart" / "toca"
    before = snapshot(folder)
    with pytest.raises(StaleShardError, match="method.fresh_ratio is 0.3 there, 0.9 now"):
        generate(Cell(cfg, "tiny_pixart", "toca"), folder, progress=False)
    assert snapshot(folder) == before
    # batch size is not part of a sample's identity: the shards are reused as they are
    generate(Cell(small(batch_size=1), "tiny_pixart", "toca"), folder, progress=False)
    assert snapshot(folder) == before


def test_evaluate_refuses_a_baseline_or_cell_made_with_another_seed(made, tmp_path):
    import shutil

    root = tmp_path / "results"
    shutil.copytree(made, root)
    seeded = small(seed=1)
    folder = root / "samples" / "tiny_pixart" / "fora_n2"
    shutil.rmtree(folder)
    generate(Cell(seeded, "tiny_pixart", "fora_n2"), folder, progress=False)  # fora_n2 under seed 1
    # seed 1 asked for: the cell matches, but `none` (the fidelity baseline) was made with seed 0
    with pytest.raises(StaleShardError, match=r"none/shard_00000.npz was generated under other settings: "
                                              r"base_seed is 0 there, 1 now"):
        evaluate(Cell(seeded, "tiny_pixart", "fora_n2"), samples_root=root)
    # seed 0 asked for: now the cell itself is the stale one
    with pytest.raises(StaleShardError, match="fora_n2/shard_00000.npz was generated under other settings: "
                                              "base_seed is 1 there, 0 now"):
        evaluate(Cell(small(), "tiny_pixart", "fora_n2"), samples_root=root)


def test_evaluate_refuses_reference_statistics_of_other_settings(made):
    from metrics.fid import FeatureStats

    path = made / "reference" / "tiny_pixart.npz"
    meta = FeatureStats.load(path)[3]
    check_reference_identity(Cell(small(), "tiny_pixart", "fora_n2"), path, meta)  # the same settings: fine
    with pytest.raises(StaleShardError, match=r"reference statistics .* were made under other settings: "
                                              r"samples.num_steps is 2 there, 3 now, samples.steps is 2 there, 3 now; delete it and rebuild"):
        check_reference_identity(Cell(small(model={"steps": 3}), "tiny_pixart", "fora_n2"), path, meta)
    with pytest.raises(StaleShardError, match="n is 4 there, 8 now"):
        check_reference_identity(Cell(small(model={"reference_samples": 8}), "tiny_pixart", "none"), path, meta)


def test_a_missing_baseline_shard_is_missing_not_corrupt(made, tmp_path):
    import shutil

    root = tmp_path / "results"
    shutil.copytree(made, root)
    (root / "samples" / "tiny_pixart" / "none" / "shard_00001.npz").unlink()
    with pytest.raises(MissingShardError, match=r"none/shard_00001.npz is missing: generate it first "
                                                r"\(`dsbench generate --model tiny_pixart --method none`"):
        evaluate(Cell(small(), "tiny_pixart", "fora_n2"), samples_root=root)


def test_aggregate_refuses_metrics_computed_under_other_settings(made, tmp_path):
    """`dsbench aggregate` by hand after a retune: the old metrics JSON is refused, not merged."""
    from dsbench import config as config_mod

    root = tmp_path / "results"
    cfg = small()
    cfg["models"]["tiny_pixart"]["methods"] = ["none", "toca"]
    for m in ("none", "toca"):
        digest = config_mod.digest(Cell(cfg, "tiny_pixart", m).sample_identity())
        write_json(root / "metrics" / "tiny_pixart" / f"{m}.json", {"cell_digest": digest})
        write_json(root / "macs" / "tiny_pixart" / f"{m}.json", {"cell_digest": digest})
    cfg["methods"]["toca"]["fresh_ratio"] = 0.9
    r = subprocess.run([sys.executable, "-m", "dsbench", "aggregate", "--config", json.dumps(cfg), "--model",
                        "tiny_pixart", "--root", str(root), "--out", str(tmp_path / "x.csv")],
                       capture_output=True, text=True, cwd=REPO)
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert "toca.json was computed under other settings" in r.stderr and "rerun `dsbench" in r.stderr
    assert not (tmp_path / "x.csv").exists()


def test_a_second_generator_waits_for_the_shard_lock_and_reuses_the_shard(made, tmp_path, caplog):
    """Two generators on one cell: the second waits on the shard's lock, then finds it written and
    skips it (same inode: nothing regenerated or rewritten)."""
    import shutil

    cfg = small()
    folder = tmp_path / "cell"
    folder.mkdir()
    done = {}
    with shard_lock(shard_path(folder, 0)):
        shutil.copy(made / "samples" / "tiny_pixart" / "none" / "shard_00001.npz", shard_path(folder, 1))
        worker = threading.Thread(target=lambda: done.update(
            paths=generate(Cell(cfg, "tiny_pixart", "none"), folder, progress=False)))
        with caplog.at_level(logging.WARNING, logger="dsbench.generate"):
            worker.start()
            deadline = time.time() + 120
            while "waiting for another generator" not in caplog.text and time.time() < deadline:
                time.sleep(0.05)
            assert "waiting for another generator" in caplog.text
            # the "other generator" finishes shard 0 while holding its lock
            shutil.copy(made / "samples" / "tiny_pixart" / "none" / "shard_00000.npz", shard_path(folder, 0))
            before = snapshot(folder)
    worker.join(120)
    assert len(done["paths"]) == 2
    assert snapshot(folder) == before


# ---- safety and one-line errors -------------------------------------------------------------------
class Payload:
    def __reduce__(self):
        return (os.system, (f"touch {os.environ.get('DSBENCH_PAYLOAD', '/tmp/dsbench-payload-ran')}",))


def test_a_planted_training_checkpoint_is_refused_without_running(tmp_path, monkeypatch):
    from methods.diffsparse.train import load_checkpoint

    marker = tmp_path / "payload-ran"
    monkeypatch.setenv("DSBENCH_PAYLOAD", str(marker))
    ckpt = tmp_path / "planted.ckpt"
    torch.save({"fingerprint": Payload()}, ckpt)
    with pytest.raises(ValueError, match=f"refusing checkpoint {ckpt}: it is not a plain tensor checkpoint"):
        load_checkpoint(ckpt)
    assert not marker.exists()
    plain = tmp_path / "plain.ckpt"
    torch.save({"predictor": {"w": torch.ones(2)}, "log": [{"loss": 0.5}], "iteration": 3}, plain)
    assert load_checkpoint(plain)["iteration"] == 3


def _dsbench(*args, cwd=REPO):
    return subprocess.run([sys.executable, "-m", "dsbench", *args], capture_output=True, text=True, cwd=cwd)


def test_cuda_on_a_machine_without_it_is_one_line_naming_the_fix(tmp_path):
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    cfg = small(device="cuda")
    r = _dsbench("generate", "--config", json.dumps(cfg), "--model", "tiny_pixart", "--method", "none",
                 "--root", str(tmp_path))
    assert r.returncode == 2, r.stderr
    assert r.stderr.strip().splitlines() == [
        "dsbench generate: error: device: cuda is configured but this machine has no CUDA device "
        "(torch.cuda.is_available() is False); set `device: cpu` in the config to run on the CPU"]
    assert not (tmp_path / "samples").exists() or not any((tmp_path / "samples").rglob("*.npz"))


def test_a_full_results_disk_is_one_line_naming_the_file(made, tmp_path):
    """`dsbench evaluate` when the disk fills while its JSON is written (ENOSPC raised from fsync in the
    child process: this machine's disk cannot be filled safely): one line, the target named, exit 2."""
    import shutil

    root = tmp_path / "results"
    shutil.copytree(made, root)
    out = root / "metrics" / "tiny_pixart" / "fora_n2.json"
    code = ("import errno, os, sys\n"
            "def full(*a): raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))\n"
            "os.fsync = full\n"
            "from dsbench.cli import main\n"
            "sys.exit(main(sys.argv[1:]))\n")
    r = subprocess.run([sys.executable, "-c", code, "evaluate", "--config", json.dumps(small()), "--model",
                        "tiny_pixart", "--method", "fora_n2", "--root", str(root), "--out", str(out)],
                       capture_output=True, text=True, cwd=REPO)
    errors = [line for line in r.stderr.splitlines() if "error" in line.lower()]
    assert r.returncode == 2 and len(errors) == 1 and "Traceback" not in r.stderr, r.stderr
    assert f"dsbench evaluate: error: [Errno 28] cannot write {out}: No space left on device (" in r.stderr
    assert "MiB free on" in r.stderr and not out.exists()


def test_a_full_or_read_only_disk_names_the_file_and_the_free_space(tmp_path, monkeypatch):
    """ENOSPC (28) and EROFS (30) while a result is written: WriteError names the target (not the temporary
    file) and, for a full disk, the space left; the earlier file is untouched."""
    target = tmp_path / "out.json"
    write_json(target, {"old": 1})
    for code, words in ((errno.ENOSPC, "No space left on device ("), (errno.EROFS, "Read-only file system; make")):
        def full(*a, **k):
            raise OSError(code, os.strerror(code))

        monkeypatch.setattr(os, "fsync", full)
        with pytest.raises(WriteError, match=f"cannot write {target}: ") as e:
            write_json(target, {"new": 2})
        assert words in str(e.value) and e.value.errno == code
        monkeypatch.undo()
        assert json.loads(target.read_text()) == {"old": 1}
        assert sorted(p.name for p in tmp_path.iterdir()) == ["out.json"]  # no temporary left behind
