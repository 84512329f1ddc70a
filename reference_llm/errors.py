"""Every error the reference library raises on purpose.

Each carries a message meant to be printed as one line to a user. Command-line entry points catch
`ReferenceLLMError` (see `reference_llm.cli.run_main`) and exit with code 2 and no traceback.
"""


class ReferenceLLMError(Exception):
    """Base class: a problem with the user's input, config, data or files, not a bug."""


class ConfigError(ReferenceLLMError):
    """A config file, key, value or preset is missing, unknown or inconsistent."""


class DataError(ReferenceLLMError):
    """A corpus, shard or dataset is missing, empty or malformed."""


class TokenizerError(ReferenceLLMError):
    """A tokenizer file is missing, malformed or does not match the data."""


class CheckpointError(ReferenceLLMError):
    """A checkpoint is missing, corrupt, or does not match the model it is loaded into."""


class DistributedError(ReferenceLLMError):
    """A parallel strategy cannot run as launched or configured."""
