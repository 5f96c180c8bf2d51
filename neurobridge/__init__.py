"""NeuroBridge: masked pretraining, visual alignment and image reconstruction on torch_brain."""

__version__ = "0.1.0"
