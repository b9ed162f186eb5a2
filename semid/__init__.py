"""semid: generative retrieval with semantic IDs."""

import os

# torch and faiss each bring an OpenMP runtime; with the default (spinning) wait policy their idle
# threads starve each other on small machines (10x slower k-means seen on 2 cores). Users can
# still override it by setting the variable before importing semid.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

from semid.errors import SemidError  # noqa: E402

__version__ = "0.1.0"

__all__ = ["SemidError", "__version__"]
