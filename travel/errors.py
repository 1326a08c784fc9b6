"""The package's one exception family: every error a user can cause is a TravelError with a one-line message."""


class TravelError(Exception):
    """A problem the user can fix; the CLI prints its message on one line and exits non-zero."""


class ConfigError(TravelError, ValueError):
    """A setting that makes no sense (negative steps, crop larger than load size, ...).

    `setting` names it where the config layer knows which it is ("TrainConfig.batch_size"): the message then starts
    with that name, and the command line shows its flag instead (travel.options.flag_for).
    """

    def __init__(self, message: str, setting: str | None = None) -> None:
        super().__init__(f"{setting}: {message}" if setting else message)
        self.message, self.setting = message, setting


class DataError(TravelError):
    """A dataset folder or an image that cannot be used."""


class CheckpointError(TravelError):
    """A checkpoint that is missing, damaged, or not a travel checkpoint."""


class WriteError(TravelError, OSError):
    """A file that could not be written (disk full, read-only folder); the previous version is left intact."""
