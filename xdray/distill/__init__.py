"""The distillation algorithm in plain PyTorch: losses and the per-stage step. No Ray, no DeepSpeed here."""
