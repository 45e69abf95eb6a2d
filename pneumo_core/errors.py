"""Error types shared by the whole library.

The split matters to orchestration: `InputError` is deterministic (retrying cannot help),
`TransientStorageError` is what a retry is for.
"""


class PneumoError(Exception):
    """Base of every error pneumo raises on purpose; the CLI prints it in one line."""


class InputError(PneumoError):
    """Bad user input: a file, row or field that is wrong. Never retried."""


class StorageError(PneumoError):
    """A permanent object-store failure (no bucket, access denied)."""


class ObjectNotFound(StorageError):
    """The key does not exist in the store."""


class TransientStorageError(PneumoError):
    """The store kept failing transiently after its own retries; a later retry may succeed."""
