"""Evaluation metrics for DiffSparse-Bench.

Submodules (imported on demand; this package import stays cheap on purpose so the
CLI and workflow can import ``metrics`` without pulling in torch/open_clip/lpips):

- ``metrics.networks``   feature networks (Inception, CLIP, LPIPS) from local weights, plus tiny test nets
- ``metrics.fid``        streaming feature statistics and Frechet distance (clean-fid's clean / legacy_tensorflow)
- ``metrics.adm``        ImageNet FID-50k / sFID / IS / precision-recall as ADM's evaluator (torch-fidelity Inception)
- ``metrics.clip_score`` CLIP score: correct (open_clip cosine) and toca_compat (the paper's protocol)
- ``metrics.fidelity``   pairwise PSNR / SSIM / LPIPS against the unaccelerated model's samples
- ``metrics.external``   the virtual environments and worker boundary of ImageReward and VBench
- ``metrics.imagereward``, ``metrics.vbench``  those two metrics (VBench's aggregation re-implemented)
"""
