"""A userspace block-storage engine: volume groups, exports, node service."""
