"""TLS: HTTPS listeners with SNI and reload, certificates, HSTS and redirect, verified HTTPS origins."""
