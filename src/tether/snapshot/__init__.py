"""Snapshots: content-addressed, incremental, verified copies of folders in a store.

Format: docs/snapshot-format.md. Stores: ``tether.snapshot.stores``.
"""
