"""dreamer_ext: DreamerV3 for PyTorch on custom C++/CUDA kernels (a RePo world-model objective is planned)."""
__version__ = "0.1.0"
