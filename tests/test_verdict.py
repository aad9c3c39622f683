"""The claim's verdict (dsbench/verdict.py), hand-computed on a small CSV."""
import pandas as pd

from dsbench.verdict import front_line, resolved_line, write_verdict

ROWS = [  # method, MACs (T), speedup, LPIPS ± , FID ±
    ("none", 2.0, 1.0, 0.0, 0.0, 100.0, 5.0),
    ("ds", 1.0, 1.6, 0.010, 0.002, 110.0, 5.0),
    ("toca_m", 1.0, 1.8, 0.030, 0.004, 112.0, 5.0),   # faster, worse LPIPS (resolved), FID tied
    ("fbc_m", 1.01, 1.5, 0.011, 0.002, 130.0, 4.0),  # LPIPS tied, FID worse (resolved)
    ("fora_n2", 0.9, 1.9, 0.008, 0.001, 105.0, 5.0),  # cheaper and better: beats ds everywhere
]


def frame():
    return pd.DataFrame([dict(method=m, macs_c1_T=c, speedup=s, lpips=l, lpips_ci=lh, fid=f, fid_ci=fh)
                         for m, c, s, l, lh, f, fh in ROWS])


def test_front_line_names_who_beats_the_subject():
    line = front_line(frame(), "ds")
    # fora_n2 is cheaper, faster and better than ds on both qualities
    assert line.startswith("MACs–LPIPS: off the front (beaten by fora_n2)")
    assert "speedup–FID: off the front (beaten by fora_n2)" in line
    assert front_line(frame(), "fora_n2").count("on the front") == 4


def test_resolved_line_uses_the_intervals():
    line = resolved_line(frame(), "ds", ["toca_m", "fbc_m"])
    # LPIPS: ds [0.008, 0.012] vs toca_m [0.026, 0.034] -> better; vs fbc_m [0.009, 0.013] -> overlap
    assert "LPIPS 0.01 ±0.002: better than toca_m; not resolved from fbc_m" in line
    # FID: ds [105, 115] vs toca_m [107, 117] overlap; vs fbc_m [126, 134] -> better
    assert "FID 110 ±5: better than fbc_m; not resolved from toca_m" in line


def test_write_verdict_refuses_missing_rows(tmp_path):
    frame().to_csv(tmp_path / "m.csv", index=False)
    text = write_verdict(tmp_path / "m.csv", {"ds": ["toca_m", "fbc_m"]}, ["fora_n2"], tmp_path / "v.md", "m",
                         {"toca_m": 0.01, "fbc_m": 0.005})
    assert "**ds** (2 rows matched to ds's MACs, the farthest fbc_m at +1.0%; outside their tolerance: " \
           "fbc_m (+1.0%, tolerance ±0.5%))" in text
    assert "Rows at their nearest budget (an integer knob): fora_n2 (-10% MACs)." in text
    assert (tmp_path / "v.md").read_text() == text
    import pytest

    with pytest.raises(ValueError, match=r"has no rows for \['gone'\]"):
        write_verdict(tmp_path / "m.csv", {"ds": ["gone"]}, [], tmp_path / "w.md", "m")
