"""Training: bounded time-split window sampling, autoencoder fitting, artifact building."""
from stream_ae.training.sampling import WindowSet, sample_windows
from stream_ae.training.trainer import TrainConfig, fit_autoencoder, train

__all__ = ["TrainConfig", "WindowSet", "fit_autoencoder", "sample_windows", "train"]
