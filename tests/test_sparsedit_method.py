"""`sparsedit` as a method row: settings, the denoiser swap, the engine pass-through, MACs, sample identity."""
import json

import pytest
import torch

from dsbench import config as config_mod
from dsbench.cell import Cell
from methods.settings import SettingsError, build
from methods.sparsedit import SparseDiT
from models.sparsedit import SparseDiTTransformer2DModel
from tests.util import tiny_config, with_dit

# tiny_dit: 4 blocks, width 32 (2 heads × 16), 8×8 tokens. Pruning range [0.3, 0.9] over DDIM-4's timesteps
# 750, 500, 250, 0: r = 0.7, 0.5, 0.3, 0.3 -> g = round(√(0.3·64)) = 4, round(√32) = 6, round(√44.8) = 7, 7.
PLAN = {"poolingformers": 1, "sdtms": 1, "sdtm_layout": [1, 1, 1, 0], "top_blocks": 0}
TINY = {"method": "sparsedit", "pruning_rates": [0.3, 0.9], "layers": PLAN}
GRIDS = [4, 6, 7, 7]


def config(**variants):
    cfg = tiny_config()
    cfg["methods"].update({"sd": TINY, **variants})
    return with_dit(cfg, methods=["none", "sd", *variants])


def cell(cfg=None, method="sd"):
    return Cell(cfg or config(), "tiny_dit", method)


# ---- settings ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("settings, message", [
    ({"pruning_rates": [0.9, 0.5]}, r"methods.v.pruning_rates must be \[r_min, r_max\] with 0 <= r_min <= r_max < 1, got \[0.9, 0.5\]$"),
    ({"pruning_rates": [0.5]}, "methods.v.pruning_rates must be"),
    ({"pruning_rates": 0.5}, "methods.v.pruning_rates must be"),
    ({"fixed_grid": 0}, "methods.v.fixed_grid must be an integer >= 1 or null, got 0"),
    ({"fixed_grid": 2.5}, "methods.v.fixed_grid must be an integer or null, got 2.5"),
    ({"weights": 3}, "methods.v.weights must be a string or null, got 3"),
    ({"layers": {"sdtms": -1}}, "methods.v.layers.sdtms must be an integer >= 0, got -1"),
    ({"layers": {"sdtm_layout": [2, 2, 1, 1]}}, "methods.v.layers.sdtm_layout needs exactly one generation and one"),
    ({"layers": {"sdtm_layout": [1, 2, 1]}}, r"methods.v.layers.sdtm_layout must be 4 block counts"),
    ({"layers": {"pooling": 1}}, r"methods.v.layers: unknown setting\(s\) \['pooling'\]"),
    ({"layer": {}}, r"methods.v: unknown setting\(s\) \['layer'\]"),
])
def test_settings_are_validated_in_one_line(settings, message):
    with pytest.raises(SettingsError, match=message) as err:
        build(SparseDiT.Config, settings, "methods.v")
    assert "\n" not in str(err.value)


def test_a_plan_not_summing_to_the_depth_is_refused_naming_both():
    cfg = config(paper={"method": "sparsedit"})
    with pytest.raises(ValueError, match=r"^sparsedit's layer plan has 28 blocks \(2 Poolingformers \+ 4 SDTMs × 6 "
                                         r"\+ 2 top\) but tiny_dit has 4 blocks; set `layers` to sum to 4$"):
        cell(cfg, "paper").build_pipeline(meta=True)


def test_non_dit_models_are_refused():
    cfg = tiny_config()
    cfg["methods"]["sd"] = TINY
    cfg["models"]["tiny_pixart"]["methods"].append("sd")
    c = Cell(config_mod.validate(cfg), "tiny_pixart", "sd")
    for run in (c.check_ready, lambda: c.build_pipeline(meta=True)):
        with pytest.raises(ValueError, match=r"^sd \(sparsedit\) replaces the transformer of dit models only; "
                                             r"tiny_pixart is a pixart model$"):
            run()


# ---- the swap and the engine ----------------------------------------------------------------------
def test_the_cell_swaps_the_transformer_in_real_and_meta_builds():
    c = cell(config())
    for meta in (False, True):
        pipe = c.build_pipeline(meta=meta)
        tr = pipe.transformer
        assert type(tr) is SparseDiTTransformer2DModel and tr.roles == ("pool", "gen", "sparse", "rec")
        assert {p.device.type for p in tr.parameters()} == {"meta" if meta else "cpu"}
        assert c.adapter.denoiser(pipe) is tr and c.adapter.layout(pipe).total_blocks == 4
    assert type(cell(config(), "none").build_pipeline().transformer).__name__ == "DiTTransformer2DModel"
    # DiT's partial guidance hook moves to the network that runs
    guided = cell(with_dit(config(), methods=["none", "sd"], guided_channels=3))
    assert len(guided.build_pipeline().transformer._forward_hooks) == 1


def test_compute_everything_through_the_engine_is_the_sparsedit_pipeline_bit_for_bit():
    """Every block role (Poolingformer, generation, sparse, recovery) keeps DiT's sub-layer names, so the
    engine hooks attn1 and ff on each; with the all-ones plan they pass through: the samples equal those of
    the same SparseDiT in DiTPipeline with no hook at all, its grid read from the timestep by the model."""
    c = cell()
    pipe = c.build_pipeline()
    labels, seeds = [3, 404], [5, 6]
    seen = []
    pipe.transformer.transformer_blocks[1].register_forward_hook(lambda m, a, out: seen.append(out.shape[1]))
    with c.accelerated(pipe) as engine:
        assert [s.module for s in engine._sub_sites] == [getattr(b, n) for b in pipe.transformer.transformer_blocks
                                                         for n in ("attn1", "ff")]
        images = c.sample(pipe, engine, labels, seeds)
        engine.reset()
        floats = c.adapter.sample_float(pipe, labels, seeds, num_steps=c.num_steps, guidance_scale=1.5)
    assert seen[:4] == [g * g for g in GRIDS]

    plain = c.adapter.build("tiny", scheduler="ddim")
    plain.transformer = SparseDiTTransformer2DModel.from_dit(
        plain.transformer, num_poolingformers=1, num_sdtms=1, sdtm_layout=[1, 1, 1, 0], num_top_blocks=0,
        pruning_rates=[0.3, 0.9]).eval().requires_grad_(False)
    with torch.inference_mode():
        want = c.adapter.sample(plain, labels, seeds, num_steps=4, guidance_scale=1.5)
    want_float = c.adapter.sample_float(plain, labels, seeds, num_steps=4, guidance_scale=1.5)
    assert torch.equal(images, want) and torch.equal(floats, want_float)


def test_the_grid_hook_refuses_a_timestep_the_scheduler_is_not_at():
    pipe = cell().build_pipeline()
    pipe.scheduler.set_timesteps(4)
    x = torch.zeros(2, 4, 16, 16)
    with pytest.raises(RuntimeError, match=r"called with timestep \[500, 500\] where the scheduler is at 750.0"):
        pipe.transformer(x, timestep=torch.tensor([500, 500]), class_labels=torch.tensor([1, 1000]))


# ---- MACs -----------------------------------------------------------------------------------------
def _linear_macs_per_step(g: int) -> int:
    """Linear and conv MACs of one forward of one image, by hand. C = 32, N = 64, M = g²; every block has
    DiT's own timestep embedder (256 -> C -> C) and adaLN (C -> 6C); the class embedding is a lookup."""
    C, N, M = 32, 64, g * g
    ada = 256 * C + C * C + 6 * C * C
    pool = ada + 2 * C * C + 8 * N * C * C                          # V and the projection on one (mean) token
    gen = ada + (M + N + N + M) * C * C + 8 * M * C * C             # q on M, k and v on N, out on M, MLP on M
    sparse = ada + 4 * M * C * C + 8 * M * C * C
    rec = ada + 2 * N * C * C + (N + M + M + N) * C * C + 8 * N * C * C   # two merge linears, q on N, k/v on M
    final = 256 * C + C * C + 2 * C * C + N * C * (2 * 2 * 8)      # block 0's embedder again, adaLN, patch proj.
    patch = N * (4 * 2 * 2) * C
    return pool + gen + sparse + rec + final + patch


def _attention_macs_per_step(g: int) -> int:
    C, N, M = 32, 64, g * g
    return 2 * M * N * C + 2 * M * M * C + 2 * N * M * C             # QKᵀ and AV: gen, sparse, rec


def test_macs_on_meta_are_the_sum_of_each_steps_grid():
    from dsbench.measure import count_macs

    c = cell()
    result = count_macs(c, device="meta")
    assert result["denoiser_calls"] == 4
    assert result["macs_c1"] == sum(_linear_macs_per_step(g) for g in GRIDS)
    # macs_total: both CFG rows, attention included
    assert result["macs_total"] == 2 * sum(_linear_macs_per_step(g) + _attention_macs_per_step(g) for g in GRIDS)
    assert count_macs(c, device="cpu")["macs_c1"] == result["macs_c1"]  # real run, grid from real timesteps
    fixed = count_macs(cell(config(fixed={**TINY, "fixed_grid": 3}), "fixed"), device="meta")
    assert fixed["macs_c1"] == 4 * _linear_macs_per_step(3)
    # DiT's convention beside ours: one forward of one image, attention included, the Poolingformer's V and
    # projection on every token as the paper counts them; the mean over the run's steps.
    C, N = 32, 64
    paper = [_linear_macs_per_step(g) + _attention_macs_per_step(g) + 2 * (N - 1) * C * C for g in GRIDS]
    assert result["paper_macs_per_forward"] == sum(paper) / len(paper)


def test_prediction_refuses_a_network_whose_costs_change_per_step():
    from dsbench.measure import predict_macs

    with pytest.raises(ValueError, match="count them instead"):
        predict_macs(cell())


# ---- identity and weights -------------------------------------------------------------------------
def _write_weights(folder, seed=0):
    from dsbench.io import sha256_file
    from models import get_adapter

    dit = get_adapter("tiny_dit").build("tiny", scheduler="ddim", seed=seed).transformer
    model = SparseDiTTransformer2DModel.from_dit(dit, num_poolingformers=1, num_sdtms=1, sdtm_layout=[1, 1, 1, 0],
                                                 num_top_blocks=0, density_intervals=4)
    with torch.no_grad():
        model.transformer_blocks[3].linear_1.weight.fill_(0.01 * (seed + 1))  # as if fine-tuned
    model.save_pretrained(folder / "transformer")
    rel = "transformer/diffusion_pytorch_model.safetensors"
    (folder / "provenance.json").write_text(json.dumps({"sha256": {rel: sha256_file(folder / rel)}}))
    return model


def test_fine_tuned_weights_load_with_the_variants_density(tmp_path):
    saved = _write_weights(tmp_path)
    c = cell(config(tuned={**TINY, "weights": str(tmp_path)}), "tuned")
    tr = c.build_pipeline().transformer
    assert tr.config.density_intervals is None and list(tr.config.pruning_rates) == [0.3, 0.9]
    for k, v in saved.state_dict().items():
        assert torch.equal(tr.state_dict()[k], v), k
    (tmp_path / "transformer" / "diffusion_pytorch_model.safetensors").write_bytes(b"tampered")
    with pytest.raises(ValueError, match="does not match the recorded"):
        c.build_pipeline()


def test_a_missing_weights_folder_names_the_command_that_makes_it(tmp_path):
    c = cell(config(tuned={**TINY, "weights": str(tmp_path / "nowhere")}), "tuned")
    for run in (c.check_ready, c.build_pipeline):
        with pytest.raises(FileNotFoundError, match=r"^methods.tuned.weights: .*nowhere holds no fine-tuned SparseDiT "
                                                    r"\(provenance.json missing\); make it with `snakemake --cores 2 "
                                                    r"results/sparsedit/tiny_dit/tuned`$"):
            run()
    assert c.sample_identity()["denoiser"]["weights_sha256"] is None  # MACs need no weights
    from dsbench.measure import count_macs

    assert count_macs(c, device="meta")["macs_c1"] == sum(_linear_macs_per_step(g) for g in GRIDS)


def test_sample_identity_follows_weights_and_density(tmp_path):
    _write_weights(tmp_path / "a", seed=0)
    _write_weights(tmp_path / "b", seed=1)
    variants = {"a": {**TINY, "weights": str(tmp_path / "a")}, "b": {**TINY, "weights": str(tmp_path / "b")},
                "rates": {**TINY, "pruning_rates": [0.4, 0.9]}, "fixed": {**TINY, "fixed_grid": 4}}
    cfg = config(**variants)
    ids = {v: cell(cfg, v).sample_identity()["denoiser"] for v in ("sd", *variants)}
    assert ids["sd"]["weights_sha256"] == "zero-shot"
    assert ids["a"]["weights_sha256"] != ids["b"]["weights_sha256"]
    assert len({json.dumps(i, sort_keys=True) for i in ids.values()}) == 5
    # the same settings written two ways (defaults explicit or not) are one identity
    same = config(explicit={**TINY, "fixed_grid": None, "weights": ""})
    assert cell(same, "explicit").sample_identity()["denoiser"] == ids["sd"]


# ---- DiT's convention (the paper's per-forward figures) ---------------------------------------------
def test_paper_convention_per_forward_figures():
    """One forward of one image, every matmul (attention products included), on the meta device, against the
    figures SparseDiT's paper prints: DiT-XL/2 118.64 G at 256 px, 525 G at 512 px (524.5 by DiT's own
    formula); SparseDiT-XL at a fixed 8×8 grid 68.2 G (the paper's per-grid figure). Its headline 68.05 G
    for r ∈ [0.61, 0.86] is not a time average of our schedule: printed beside ours, see the README."""
    from diffusers import DiTTransformer2DModel

    from metrics.macs import paper_macs_mean, paper_macs_per_forward
    from models.registry import DIT_XL_2

    with torch.device("meta"):
        dit, dit512 = DiTTransformer2DModel(**DIT_XL_2), DiTTransformer2DModel(**{**DIT_XL_2, "sample_size": 64})
        sparse = SparseDiTTransformer2DModel(**DIT_XL_2)
    for m in (dit, dit512, sparse):
        m.to("meta")
    figures = {"DiT-XL/2 256": (paper_macs_per_forward(dit), 118.64e9),
               "DiT-XL/2 512": (paper_macs_per_forward(dit512), 524.5e9),
               "SparseDiT-XL 8×8": (paper_macs_per_forward(sparse, 8), 68.2e9)}
    for name, (ours, paper) in figures.items():
        print(f"{name}: {ours / 1e9:.2f} G (paper {paper / 1e9:.2f} G)")
        assert abs(ours / paper - 1) < 0.01, name
    # as executed, each Poolingformer's V and projection see one token instead of N = 256
    executed = paper_macs_per_forward(sparse, 8, pooling="ours")
    assert figures["SparseDiT-XL 8×8"][0] - executed == 2 * 2 * 255 * 1152 ** 2
    ddim50 = range(980, -1, -20)                      # Table 2's DDIM-50 timesteps
    ddpm250 = [round(i * 999 / 249) for i in range(250)]   # DiT's 250-step DDPM (guided-diffusion's respacing)
    for name, steps in (("DDIM-50", ddim50), ("DDPM-250", ddpm250)):
        print(f"SparseDiT-XL r ∈ [0.61, 0.86], mean over {name}: {paper_macs_mean(sparse, steps) / 1e9:.2f} G "
              f"(paper 68.05 G)")


def test_latency_times_sparsedit_on_its_own_pipeline():
    from dsbench.measure import measure_latency

    result = measure_latency(config(), "tiny_dit", ["none", "sd"])
    assert set(result["methods"]) == {"none", "sd"} and result["methods"]["sd"]["speedup"] > 0


def test_library_attach_refuses_a_method_that_replaces_the_network():
    from methods import accelerate

    with pytest.raises(ValueError, match="replaces the pipeline's transformer"):
        accelerate(cell(config(), "none").build_pipeline(), "sparsedit")
