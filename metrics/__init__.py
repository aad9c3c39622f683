"""Evaluation metrics for DiffSparse-Bench.

Submodules (imported on demand; this package import stays cheap on purpose so the
CLI and workflow can import ``metrics`` without pulling in torch/open_clip/lpips):

- ``metrics.networks``   feature networks (Inception, CLIP, LPIPS) from local weights, plus tiny test nets
- ``metrics.fid``        streaming feature statistics and Frechet distance (clean-fid compatible)
- ``metrics.clip_score`` streaming raw-cosine CLIP score
- ``metrics.fidelity``   pairwise PSNR / LPIPS against the unaccelerated model's samples
"""
