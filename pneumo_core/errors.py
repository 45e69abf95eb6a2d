"""Error types shared by the whole library.

The split matters to orchestration: `InputError` is deterministic (retrying cannot help),
`TransientStorageError` is what a retry is for. The command line exits 2 for the user's
errors and 1 for the machine's and the network's (`StorageError`, `TransientStorageError`,
`NetworkError`).
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


class NetworkError(PneumoError):
    """A remote service (Kaggle, a weights server) could not be reached, failed on its side
    or sent a corrupt file: nothing the user typed is wrong, a later try may succeed."""
