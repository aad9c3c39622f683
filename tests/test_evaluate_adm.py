"""`dsbench evaluate` on Table 2's path: ADM's reference batch and evaluator metrics, end to end on a
tiny DiT (a fake reference batch and a random-weight Inception stand in for the real files)."""
import numpy as np
import pytest

from dsbench.cell import Cell
from dsbench.config import ConfigError, check_references
from dsbench.evaluate import evaluate, reference_stats
from dsbench.generate import generate
from metrics import adm
from tests.util import tiny_config, with_dit


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore:FID with n=")
@pytest.mark.filterwarnings("ignore::scipy.linalg.LinAlgWarning")  # 6 samples in 2048 dims
def test_evaluate_reports_the_adm_suite(tmp_path):
    res = tmp_path / "resources"
    (res / "weights").mkdir(parents=True)
    (res / "reference").mkdir()
    cfg = with_dit(tiny_config(resources=str(res), fidelity_samples=2), reference="imagenet_adm",
                   allow_partial=True, num_samples=6)
    cfg["models"] = {"tiny_dit": cfg["models"]["tiny_dit"]}
    cfg["tables"] = {}
    cell = Cell(cfg, "tiny_dit", "steps_50")
    out_ref = tmp_path / "results" / "reference" / "tiny_dit.npz"
    with pytest.raises(FileNotFoundError, match="VIRTUAL_imagenet256_labeled.npz"):
        reference_stats(cell, out_ref, tmp_path / "results")  # before any feature work

    rng = np.random.default_rng(0)
    a = rng.normal(size=(adm.POOL_DIM, 8))
    b = rng.normal(size=(adm.SPATIAL_DIM, 8))
    np.savez(res / "reference" / adm.REFERENCE_FILE, mu=rng.normal(size=adm.POOL_DIM), sigma=a @ a.T / 8,
             mu_s=rng.normal(size=adm.SPATIAL_DIM), sigma_s=b @ b.T / 8,
             arr_0=rng.integers(0, 256, (8, 32, 32, 3), dtype=np.uint8))
    adm.write_random_inception_weights(res / "weights" / adm.INCEPTION_FILE, seed=0)

    assert reference_stats(cell, out_ref, tmp_path / "results")["n"] == 8  # P/R reference features, cached
    for method in ("none", "steps_50"):
        generate(Cell(cfg, "tiny_dit", method), tmp_path / "results" / "samples" / "tiny_dit" / method, progress=False)
    out = evaluate(cell, tmp_path / "results", reference=out_ref)
    assert out["n_samples"] == 6 and out["n_ref_pr"] == 8 and out["fid_n_ref"] == "adm-stats"
    assert out["fid"] > 0 and out["sfid"] > 0 and 0 <= out["precision"] <= 1 and 0 <= out["recall"] <= 1
    assert out["fid_network"].startswith("inception-2015-12-05-torch-fidelity")
    assert 0 < out["ssim"] <= 1 and out["psnr"] > 0
    assert out["fid_ci"] is None   # 6 samples in 2048 dimensions: FID unreliable, no interval
    assert out["psnr_ci"] >= 0 and out["lpips_ci"] >= 0 and out["ci_level"] == 0.95

    cfg["models"]["tiny_dit"]["allow_partial"] = False  # 6 samples are not ADM's 50,000
    with pytest.raises(ConfigError, match="exactly 50,000"):
        check_references(cfg)
