"""Reference models scored next to NeuroBridge on the same masked cells: the smoothing + GLM
baseline (tuned on validation), the latent posterior-mean ceiling of data with a known ground
truth, and the NDT-style masked transformer (an ``nn.Module`` built by
the model factory, so it lives in :mod:`neurobridge.models.ndt`; exported here with the other
peers)."""

from neurobridge.models.ndt import NDTEncoder, NDTMaskedModel, NDTReadout

from .ceiling import LatentModel, LatentPosteriorCeiling, SplitTruth, fit_latent_model
from .poisson_glm import PoissonGLMFit, fit_poisson_glm
from .smoothing import (
    SmoothingChoice,
    SmoothingGLMBaseline,
    gaussian_kernel,
    gaussian_smooth_observed,
    tune_smoothing,
)

__all__ = [
    "LatentModel",
    "LatentPosteriorCeiling",
    "NDTEncoder",
    "NDTMaskedModel",
    "NDTReadout",
    "PoissonGLMFit",
    "SmoothingChoice",
    "SmoothingGLMBaseline",
    "SplitTruth",
    "fit_latent_model",
    "fit_poisson_glm",
    "gaussian_kernel",
    "gaussian_smooth_observed",
    "tune_smoothing",
]
