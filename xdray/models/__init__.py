"""Models: teacher loading and the student builder (plain PyTorch / Hugging Face, no Ray)."""
