"""The client side: the HTTP/1.1 channel and request, request bodies, header rules, error pages, access log."""
