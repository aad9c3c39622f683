"""Bootstrap intervals of the quality columns (metrics/bootstrap.py)."""
import numpy as np
import pytest

from metrics.bootstrap import BootstrapSettings, FixedReferenceFrechet, fid_half_width, mean_half_width


def test_mean_interval_matches_the_normal_closed_form():
    # The mean of n normal draws: its 95 % interval is ±1.96 s/√n; the percentile bootstrap converges to it.
    x = np.random.default_rng(1).normal(3.0, 2.0, size=400)
    closed = 1.959964 * x.std() / np.sqrt(len(x))
    got = mean_half_width(x, BootstrapSettings(resamples=4000, seed=0))
    assert got == pytest.approx(closed, rel=0.05)
    # a 90 % interval is narrower by the quantile ratio 1.645 / 1.960
    narrow = mean_half_width(x, BootstrapSettings(resamples=4000, level=0.9, seed=0))
    assert narrow == pytest.approx(closed * 1.644854 / 1.959964, rel=0.06)


def test_same_seed_same_interval_other_seed_other():
    x = np.random.default_rng(2).exponential(size=64)
    a, b = (mean_half_width(x, BootstrapSettings(resamples=500, seed=7)) for _ in range(2))
    assert a == b
    assert mean_half_width(x, BootstrapSettings(resamples=500, seed=8)) != a


def test_constant_and_unsampled_columns():
    assert mean_half_width(np.full(10, 100.0), BootstrapSettings()) == 0.0   # PSNR capped at 100 dB for `none`
    assert mean_half_width([1.0, 2.0], BootstrapSettings(resamples=0)) is None
    assert mean_half_width([1.0], BootstrapSettings()) is None


def test_fixed_reference_frechet_equals_clean_fid():
    from metrics.fid import FeatureStats, frechet_distance

    rng = np.random.default_rng(3)
    gen, ref = rng.normal(0.3, 1.0, (300, 8)), rng.normal(0.0, 1.5, (500, 8)) @ rng.normal(size=(8, 8))
    a, b = FeatureStats(), FeatureStats()
    a.update(gen)
    b.update(ref)
    fixed = FixedReferenceFrechet(gen, b.mean(), b.cov())
    assert fixed(np.arange(300)) == pytest.approx(frechet_distance(a, b), rel=1e-9, abs=1e-9)


def test_fid_interval_shrinks_as_one_over_root_n():
    rng = np.random.default_rng(4)
    mu, sigma = np.zeros(4), np.eye(4)
    s = BootstrapSettings(fid_resamples=300, seed=0)
    small = fid_half_width(rng.normal(0.5, 1.0, (100, 4)), mu, sigma, s)
    large = fid_half_width(rng.normal(0.5, 1.0, (1600, 4)), mu, sigma, s)
    assert 0 < large < small
    assert small / large == pytest.approx(4.0, rel=0.3)   # √(1600 / 100)
    assert fid_half_width(rng.normal(size=(50, 4)), mu, sigma, BootstrapSettings(fid_resamples=0)) is None


@pytest.mark.parametrize("settings, message", [
    ({"resamples": -1}, "bootstrap.resamples: must be an integer >= 0"),
    ({"level": 1.5}, "bootstrap.level: must be a number in (0, 1)"),
    ({"resamples": 10}, "use at least 100 resamples"),
    ({"resample": 100}, "bootstrap: unknown setting(s) ['resample']"),
    ({"seed": "0"}, "bootstrap.seed: must be an integer >= 0, got '0'"),
])
def test_bad_settings_are_refused_by_name(settings, message):
    with pytest.raises(ValueError) as e:
        BootstrapSettings.of(settings)
    assert message in str(e.value)


def test_no_fid_interval_at_or_under_the_feature_dimension():
    # FID itself is unreliable there (singular covariance): no interval rather than a meaningless one
    rng = np.random.default_rng(5)
    assert fid_half_width(rng.normal(size=(8, 8)), np.zeros(8), np.eye(8), BootstrapSettings()) is None
    assert fid_half_width(rng.normal(size=(9, 8)), np.zeros(8), np.eye(8), BootstrapSettings()) is not None
