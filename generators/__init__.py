"""Generative retrieval models, importable as ``semid.generators``."""
