"""Project exceptions. Every message is written for the user: what is wrong and what to fix."""


class StreamAEError(Exception):
    """Root of every error this package raises on purpose."""


class ConfigError(StreamAEError):
    """A setting, flag or hyperparameter is invalid."""


class DataError(StreamAEError):
    """Input data is unusable: a file, a column, a type or a value. The message names which."""


class ArtifactError(StreamAEError):
    """A model artifact is missing, corrupt, of an unknown format, or does not fit the data."""


class SchemaMismatch(ArtifactError):
    """The data's channels differ from the channels the model was trained on."""
