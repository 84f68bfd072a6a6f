"""The origin side: routing, forwarding and relaying, origin connection pools, ProxyPassReverse rewriting."""
