"""os-brick connectors that attach storage-engine exports on compute hosts."""
