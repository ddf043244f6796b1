"""darec's own exception types.

Every error a user can cause by giving bad input derives from :class:`DarecError`; the CLI prints
these as one clear message with no traceback.
"""


class DarecError(Exception):
    """Base class of the errors darec raises for bad input or bad state."""


class DataError(DarecError):
    """Bad or unusable input data: names the file and, where it applies, the line or column."""


class EvaluationError(DarecError):
    """Invalid input to the ranking evaluation (for example a non-finite score)."""


class FingerprintError(DarecError):
    """An artefact (embeddings, cache, checkpoint) was built from a different prepared dataset."""


class ConfigError(DarecError):
    """An invalid configuration value."""
