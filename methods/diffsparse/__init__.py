"""DiffSparse: learned layer-wise token sparsity (cost predictor, DP allocation, STE training)."""
