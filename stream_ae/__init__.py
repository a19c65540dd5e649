"""stream_ae: streaming anomaly detection for sensor time series with autoencoders."""

__version__ = "0.1.0"
