"""The HTTP cache: RFC 9111 decisions (pure), the LMDB disk tier and the memory tier."""
