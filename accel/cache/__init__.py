"""The HTTP cache: RFC 9111 decisions (pure), the LMDB disk tier and the memory tier, and the cache in the
request path (lookup, serving stored responses, collapsing, storing, purge)."""
