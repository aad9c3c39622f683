"""The engine: a plan of all-ones is the plain diffusers pipeline; reuse applies the current gate; no state leaks."""
import numpy as np
import pytest
import torch

from dsbench.cell import Cell
from methods.engine import Engine
from methods.plan import Plan
from tests.util import tiny_config, with_dit

PROMPTS = ["A cat on a mat.", "Two red buses.", "A bowl of fruit."]


def plain_pipeline_images(cell, pipe, conds, seeds):
    """The diffusers pipeline called directly, as a user would, with diffusers' own uint8 rounding."""
    gens = [torch.Generator("cpu").manual_seed(s) for s in seeds]
    kw = dict(num_inference_steps=cell.num_steps, guidance_scale=cell.model_cfg["guidance_scale"],
              generator=gens, output_type="np")
    if cell.adapter.family == "dit":
        out = pipe(class_labels=conds, **kw).images
    else:
        res = cell.adapter.preset.resolution
        out = pipe(prompt=conds, negative_prompt="", height=res, width=res, use_resolution_binning=False,
                   clean_caption=False, max_sequence_length=cell.adapter.preset.text_tokens, **kw).images
    return (out * 255).round().astype(np.uint8)


@pytest.fixture(scope="module", params=["tiny_pixart", "tiny_dit"])
def cell_and_pipe(request):
    cfg = with_dit(tiny_config())
    cell = Cell(cfg, request.param, "none")
    return cell, cell.build_pipeline()


def conds_for(cell):
    return PROMPTS if cell.adapter.family == "pixart" else [1, 207, 999]


def test_all_ones_plan_equals_plain_pipeline(cell_and_pipe):
    cell, pipe = cell_and_pipe
    seeds = [11, 12, 13]
    plain = plain_pipeline_images(cell, pipe, conds_for(cell), seeds)
    with cell.accelerated(pipe) as engine:
        ours = cell.sample(pipe, engine, conds_for(cell), seeds).numpy()
    assert ours.shape == plain.shape and ours.dtype == np.uint8
    np.testing.assert_array_equal(ours, plain)
    assert plain.std() > 0  # not a degenerate image


def test_reuse_plan_changes_output_and_never_leaks(cell_and_pipe):
    cell, pipe = cell_and_pipe
    conds, seeds = conds_for(cell)[:2], [5, 6]
    steps, blocks, subs = cell.num_steps, len(cell.adapter.blocks(pipe)), cell.adapter.layout(pipe).sublayers
    ratios = torch.ones(steps, blocks, len(subs))
    ratios[1::2, :, subs.index("ff")] = 0.0  # reuse every MLP output on odd steps
    engine = Engine(cell.adapter, pipe, Plan(ratios, subs)).attach()
    try:
        first = cell.adapter.sample(pipe, conds, seeds, num_steps=steps,
                                    guidance_scale=cell.model_cfg["guidance_scale"])
        assert engine.states == {}  # freed after the plan's last step
        engine.reset()
        second = cell.adapter.sample(pipe, conds, seeds, num_steps=steps,
                                     guidance_scale=cell.model_cfg["guidance_scale"])
    finally:
        engine.detach()
    torch.testing.assert_close(first, second, rtol=0, atol=0)  # the second call starts fresh
    full = plain_pipeline_images(cell, pipe, conds, seeds)
    assert not np.array_equal(first.numpy(), full)  # reuse really happened
    # After detach the pipeline is the plain one again.
    np.testing.assert_array_equal(plain_pipeline_images(cell, pipe, conds, seeds), full)


def test_reuse_returns_the_cached_pre_gate_output(cell_and_pipe):
    """The hook sits on the sub-layer (pre-gate), so the block multiplies the reused output by the current gate."""
    cell, pipe = cell_and_pipe
    steps, blocks, subs = cell.num_steps, len(cell.adapter.blocks(pipe)), cell.adapter.layout(pipe).sublayers
    ratios = torch.ones(steps, blocks, len(subs))
    ratios[1, 0, subs.index("ff")] = 0.0
    ff = cell.adapter.blocks(pipe)[0].ff
    seen = []
    handle = ff.register_forward_hook(lambda m, a, out: seen.append(out.clone()))
    with Engine(cell.adapter, pipe, Plan(ratios, subs)) as engine:
        cell.sample(pipe, engine, conds_for(cell)[:1], [3])
    handle.remove()
    # The wrapped forward (our hook's output) returns the cached tensor on step 1: same values as step 0's.
    torch.testing.assert_close(seen[1], seen[0], rtol=0, atol=0)
    assert not torch.equal(seen[2], seen[0])  # step 2 computes again


def test_plan_validation():
    with pytest.raises(ValueError, match="step 0"):
        Plan(torch.zeros(3, 2, 2), ("attn1", "ff"))
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        Plan(torch.full((3, 2, 2), 1.5), ("attn1", "ff"))
    with pytest.raises(ValueError, match="steps, blocks"):
        Plan(torch.ones(3, 2), ("attn1", "ff"))


def test_plan_shorter_than_the_run_is_an_error():
    cfg = tiny_config()
    cell = Cell(cfg, "tiny_pixart", "none")
    pipe = cell.build_pipeline()
    plan = Plan.full(2, len(cell.adapter.blocks(pipe)), cell.adapter.layout(pipe).sublayers)
    with Engine(cell.adapter, pipe, plan) as engine:
        with pytest.raises(RuntimeError, match="plan has 2 steps"):
            cell.adapter.sample(pipe, ["x"], [0], num_steps=3, guidance_scale=4.5)
        assert engine.step == -1 and engine.states == {}
        cell.adapter.sample(pipe, ["x"], [0], num_steps=2, guidance_scale=4.5)
        with pytest.raises(RuntimeError, match="reset"):  # a second call without reset() is refused
            cell.adapter.sample(pipe, ["x"], [0], num_steps=2, guidance_scale=4.5)


def test_steps_method_runs_half_the_steps():
    cfg = tiny_config()
    full, half = Cell(cfg, "tiny_pixart", "none"), Cell(cfg, "tiny_pixart", "steps_50")
    assert (full.num_steps, half.num_steps) == (8, 4)
    from methods import make_method

    with pytest.raises(ValueError, match=r"steps.ratio must be in \(0, 1\]"):
        make_method("steps", ratio=1.5)
    with pytest.raises(ValueError, match="unknown setting"):
        make_method("steps", fraction=0.5)
    with pytest.raises(ValueError, match="registered methods"):
        make_method("nosuch")


def test_statistics_no_partial_call_reads_are_not_captured():
    """Hand-computed on tiny DiT (attn1: self-attention, ff: MLP; ToCa's score = self-attention influence):
    step 0 full, step 1 attn1 full + ff partial, step 2 both partial, step 3 reuse, step 4 full. Step 1's
    ff reads step 1's attn1 statistic, step 2 still reads it; step 0's is replaced unread, step 4's is the
    last. Partial self-attention calls capture nothing (influence needs every query). Skipping them leaves
    the images bit for bit as when every full call observes."""
    from methods.rankings import Ranking

    cell = Cell(with_dit(tiny_config(), steps=5), "tiny_dit", "none")
    pipe = cell.build_pipeline()
    layout = cell.adapter.layout(pipe)
    blocks, subs = layout.blocks, layout.sublayers
    a, f = subs.index("attn1"), subs.index("ff")
    ratios = torch.ones(5, blocks, len(subs))
    ratios[1, :, f] = 0.5
    ratios[2] = 0.5
    ratios[3] = 0.0
    plan = Plan(ratios, subs)

    def run(skip_unread: bool):
        ranking = Ranking(score="attention")
        seen = []
        observe = ranking.observe
        ranking.observe = lambda where, kind, *rest: (seen.append((engine.step, where, kind)), observe(where, kind, *rest))
        engine = Engine(cell.adapter, pipe, plan, ranking, cfg_halves=2)
        if not skip_unread:
            engine._unread = frozenset()
        with engine:
            engine.for_samples([0, 1])
            images = cell.adapter.sample(pipe, [1, 207], [0, 1], num_steps=5, guidance_scale=1.5)
        return engine, seen, images

    engine, seen, fast = run(True)
    assert engine._unread == {(s, 0, b, a) for s in (0, 4) for b in range(blocks)}
    assert seen == [(1, (0, b), "self_attn") for b in range(blocks)]
    _, seen_all, every = run(False)
    assert sorted({s for s, _, _ in seen_all}) == [0, 1, 4]   # full calls only: never the partial step 2
    torch.testing.assert_close(fast, every, rtol=0, atol=0)


def test_row_gather_and_scatter_equal_torch_gather_and_scatter():
    from methods.calls import gather, scatter

    g = torch.Generator().manual_seed(0)
    for shape in [(3, 10, 4), (2, 7, 1, 5)]:
        x = torch.randn(*shape, generator=g, requires_grad=True)
        idx = torch.rand(shape[0], shape[1], generator=g).topk(4, dim=1).indices
        index = idx.view(*idx.shape, *[1] * (len(shape) - 2)).expand(-1, -1, *shape[2:])
        torch.testing.assert_close(gather(x, idx), x.gather(1, index), rtol=0, atol=0)
        values = torch.randn(shape[0], 4, *shape[2:], generator=g, requires_grad=True)
        ours, theirs = scatter(x, idx, values), x.scatter(1, index, values)
        torch.testing.assert_close(ours, theirs, rtol=0, atol=0)
        assert not torch.equal(ours, x)   # a copy with the rows replaced, `x` itself untouched
        (grad_x, grad_v), (ref_x, ref_v) = (torch.autograd.grad(t.square().sum(), (x, values)) for t in (ours, theirs))
        torch.testing.assert_close(grad_x, ref_x, rtol=0, atol=0)   # training backpropagates through both
        torch.testing.assert_close(grad_v, ref_v, rtol=0, atol=0)
