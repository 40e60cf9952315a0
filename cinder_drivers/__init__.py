"""Cinder volume drivers backed by the storage engine (one module a family)."""
