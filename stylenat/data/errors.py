"""Error and warning classes of the data package (one place, so callers can catch them)."""


class DatasetError(ValueError):
    """A data set path, layout, option or image that cannot be used; the message names the bad value."""


class DatasetWarning(UserWarning):
    """A recoverable data problem (a skipped unreadable file, upscaled small images)."""
