"""Snapshot stores: where a repository's objects live (a folder, S3, Hugging Face, Kaggle).

``open_store(url)`` picks the backend by URL scheme; every backend implements ``Store``.
"""

from tether.snapshot.stores.base import Store, StoreCapabilities, check_key, open_store

__all__ = ["Store", "StoreCapabilities", "check_key", "open_store"]
