"""xdray: XtremeDistilTransformers on Ray — corpus → label → distill → search, tracked in MLflow."""

__version__ = "0.1.0"
