"""NBD: the network block device protocol, as sans-IO cores."""
