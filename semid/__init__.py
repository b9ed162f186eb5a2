"""semid: generative retrieval with semantic IDs."""

from semid.errors import SemidError

__version__ = "0.1.0"

__all__ = ["SemidError", "__version__"]
