"""What a configuration is: the frozen dataclasses of every section and their defaults, and ``ConfigError``, a
mistake worded for the operator (the file, the key, the line when known, what was expected)."""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field
from typing import Literal, Mapping


# RFC 9110 §7.6.1: connection-specific fields a proxy must not forward (nor a cache store, RFC 9111 §3.1),
# plus the legacy ones every proxy strips (Keep-Alive, Proxy-Connection) and the proxy authentication pair,
# which is hop-by-hop in practice. Lower-case names. The one table: accel.http.headers applies it to
# messages, and header rules in the configuration may not set these fields.
HOP_BY_HOP_NAMES = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-connection",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
        "proxy-authenticate",
        "proxy-authorization",
    }
)


# RFC 9112 §6: fields that frame a message, which only the connection that sends it may write.
FRAMING_NAMES = frozenset({"content-length", "transfer-encoding"})


class ConfigError(Exception):
    """A configuration mistake, worded for the operator."""

    def __init__(self, source: str, key: str, expected: str, got: object = None, line: int | None = None):
        self.source, self.key, self.expected, self.got, self.line = source, key, expected, got, line
        where = f"{source}, line {line}" if line else source
        detail = f"{where}: {key}: expected {expected}"
        if got is not None:
            detail += f", got {got!r}"
        super().__init__(detail)


class ConfigProblems(Exception):
    """Every problem that keeps a configuration from starting (``accel.tap.checked_config``); its text is
    theirs in one line, for a log."""

    def __init__(self, problems: list[ConfigError]):
        self.problems = problems
        super().__init__("; ".join(str(problem) for problem in problems))


# Each scheme's default port: the one table (the cache key uses it too). A balancer:// "origin" has no port (0).
DEFAULT_PORTS: Mapping[str, int] = {"http": 80, "https": 443}


@dataclass(frozen=True, slots=True)
class Origin:
    """Where a route's requests go: scheme, host, port and a base path that the route prefix maps onto."""

    url: str
    scheme: str
    host: str
    port: int
    base_path: str
    # Derived from the fields above (every request reads them): the host and port as a Host field names
    # them, and the identity of the origin server (for connection pools and logs), without the path.
    authority: str = field(init=False, compare=False, repr=False)
    key: str = field(init=False, compare=False, repr=False)

    def __post_init__(self) -> None:
        default = DEFAULT_PORTS.get(self.scheme, 0)
        host = f"[{self.host}]" if ":" in self.host else self.host
        authority = host if self.port == default else f"{host}:{self.port}"
        object.__setattr__(self, "authority", authority)
        object.__setattr__(self, "key", f"{self.scheme}://{authority}")


@dataclass(frozen=True, slots=True)
class RouteCache:
    """A route's caching rules (CacheEnable / CacheDisable, default and maximum TTL)."""

    enabled: bool = True
    disable: tuple[str, ...] = ()  # path prefixes, or glob patterns when they contain * ? [, never cached
    default_ttl: float | None = None  # freshness for responses that state none (instead of heuristics)
    max_ttl: float | None = None  # cap on any freshness lifetime
    head_as_get: bool = True  # a HEAD miss is fetched as GET and stored


COMPRESS_TYPES = ("text/*", "application/json", "application/javascript", "application/xml", "image/svg+xml")


@dataclass(frozen=True, slots=True)
class Compress:
    """On-the-fly compression of responses (``[compress]``, and ``[route.compress]`` over it)."""

    enabled: bool = False
    types: tuple[str, ...] = COMPRESS_TYPES  # media types ("text/*" matches every text type)
    min_size: int = 1024  # responses known to be smaller go out as they are
    level: int = 6  # 1 (fastest) to 9 (smallest), for gzip and brotli alike
    brotli: bool = False  # offer br too (needs the brotli package: pip install 'accel[brotli]')


@dataclass(frozen=True, slots=True)
class AddressList:
    """``allow`` / ``deny``: networks, and the word "local" (loopback addresses and UNIX-socket peers)."""

    networks: tuple = ()
    local: bool = False


@dataclass(frozen=True, slots=True)
class RateLimit:
    """``rate_limit``: a token bucket of ``requests + burst`` tokens refilled at ``requests / per`` a second."""

    requests: int
    per: float = 1.0  # seconds
    burst: int = 0  # requests allowed at once beyond ``requests``
    key: str = "client"  # "client" (the client address), or a request header field name (lower-case)
    hits_count: bool = True  # cache hits take a token too; false: only requests that go to the origin
    scope: str = "server"  # whose buckets: "server" (the [server] limit, shared by routes) or "route[N]"


@dataclass(frozen=True, slots=True)
class HeaderRule:
    """One ``[[route.header]]`` / ``[[server.header]]`` entry (mod_headers' Header / RequestHeader)."""

    side: str  # "request" (to the origin) or "response" (to the client)
    action: str  # "set", "append" or "unset"
    name: str  # as written
    value: str = ""
    always: bool = False  # response rules: also on error responses (4xx, 5xx) and refusals


@dataclass(frozen=True, slots=True)
class Protection:
    """Who may use a route, how, how often, with how large a body, and header rules.

    The ``[server]`` table holds the defaults (``max_body_size`` in ``[limits]``); a route's own keys replace
    them, except header rules, which apply after the server's.
    """

    allow: AddressList | None = None  # None: every client
    deny: AddressList = AddressList()
    methods: tuple[str, ...] | None = None  # None: every method
    max_body_size: int | None = None  # bytes; None: no limit
    rate_limit: RateLimit | None = None
    headers: tuple[HeaderRule, ...] = ()
    strip_untrusted: tuple[str, ...] = ()  # lower-case fields removed from untrusted peers' requests, added
    pass_untrusted: tuple[str, ...] = ()  # lower-case fields let through from untrusted peers


@dataclass(frozen=True, slots=True)
class Route:
    """One ProxyPass line: requests under ``prefix`` go to ``origin`` (or nowhere, when ``exclude``)."""

    prefix: str
    origin: Origin | None = None  # None for an exclusion route (ProxyPass "!")
    hosts: tuple[str, ...] = ()  # lower-case names or "*.domain" patterns; () serves every host
    preserve_host: bool = False
    connect_timeout: float = 5.0
    response_timeout: float = 60.0  # until the response header section has arrived
    idle_timeout: float = 60.0  # longest silence while a body streams in either direction
    max_connections: int = 64  # concurrent connections to this route's origin
    cache: RouteCache = RouteCache()
    tls_verify: bool = True  # https origin: verify its certificate chain and host name
    tls_ca: str | None = None  # https origin: CA bundle (PEM) instead of the system trust store
    tls_client_cert: str | None = None  # https origin: client certificate (PEM) to present
    tls_client_key: str | None = None  # its private key; None: the key is in tls_client_cert
    protection: Protection = Protection()  # with the [server] defaults it inherits filled in
    compress: Compress = Compress()
    websocket: bool = False  # Upgrade: websocket requests are tunnelled (a ws:// or wss:// origin implies it)
    websocket_idle_timeout: float = 300.0  # a tunnel silent both ways this long is closed
    websocket_max_tunnels: int = 1000  # open tunnels on this route; beyond it: 503
    # The ``[balancer.NAME]`` this route sends to (origin = "balancer://NAME/"), or None: derived from origin.
    balancer: str | None = field(init=False, compare=False, repr=False)

    def __post_init__(self) -> None:
        origin = self.origin
        object.__setattr__(self, "balancer", origin.host if origin is not None and origin.scheme == "balancer" else None)

    @property
    def exclude(self) -> bool:
        return self.origin is None


BALANCER_METHODS = ("byrequests", "bytraffic", "bybusyness", "uri-hash")


@dataclass(frozen=True, slots=True)
class BalancerMember:
    """One ``[[balancer.NAME.member]]``: an origin, the route name sticky sessions use, its share."""

    origin: Origin
    route: str  # defaults to the member's position, from 1
    weight: int = 1
    standby: bool = False  # hot standby (Apache status=+H): used only while no other member is usable


@dataclass(frozen=True, slots=True)
class HealthCheck:
    """``[balancer.NAME.health]``: active checks of every member."""

    uri: str = "/"
    method: str = "GET"
    interval: float = 5.0
    expect: frozenset[int] = frozenset(range(200, 300))  # status codes that pass
    fails: int = 2  # consecutive failed checks before a member is taken out
    passes: int = 1  # consecutive passed checks before it is put back


@dataclass(frozen=True, slots=True)
class BalancerSettings:
    """``[balancer.NAME]``: how requests for ``balancer://NAME/`` spread over the members."""

    name: str
    members: tuple[BalancerMember, ...]
    method: str = "byrequests"
    sticky_cookie: str | None = None  # a cookie whose value ends in ".<member route>"
    sticky_set: bool = False  # accel sets that cookie itself
    retry: float = 60.0  # seconds a member stays out after it failed a request
    health: HealthCheck | None = None


@dataclass(frozen=True, slots=True)
class Limits:
    """Protection against oversized or abusive requests."""

    max_header_bytes: int = 16384  # request line + header section; over it: 431
    max_headers: int = 100  # header lines; over it: 431
    max_target_length: int = 8192  # request-target; over it: 414
    header_timeout: float = 20.0  # from a request's first byte to the end of its header section; then 408
    idle_timeout: float = 60.0  # longest a keep-alive connection waits for its next request
    max_body_size: int | None = None  # request body bytes, for routes that set none; over it: 413


@dataclass(frozen=True, slots=True)
class CacheSettings:
    """The ``[cache]`` table. The cache is on when it has a directory."""

    dir: str | None = None
    map_size: int = 1 << 30  # LMDB map size: the disk tier's upper bound
    memory_max_bytes: int = 64 << 20  # MCacheSize
    memory_max_objects: int = 10_000  # MCacheMaxObjectCount
    memory_min_object_size: int = 0  # MCacheMinObjectSize
    memory_max_object_size: int = 1 << 20  # MCacheMaxObjectSize
    max_object_size: int = 256 << 20  # larger responses pass through uncached
    heuristic_fraction: float = 0.1
    heuristic_max: float = 86400.0
    store_set_cookie: bool | Literal["keep"] = False  # true: store without Set-Cookie; "keep": store with it
    targeted_fields: tuple[str, ...] = ("cdn-cache-control",)  # RFC 9213, in precedence order
    forward_targeted_fields: bool = False  # pass CDN-Cache-Control on to clients
    forward_tag_fields: bool = False  # pass Surrogate-Key / Cache-Tag on to clients
    grace: float = 300.0  # serve stale this long while the origin is down, times out or answers 5xx
    client_revalidate: Literal["conditional", "honour", "ignore"] = "conditional"  # a client's no-cache / max-age=0
    min_revalidate_interval: float = 1.0  # "conditional": at most one client-driven revalidation per object
    range_fetch_max: int | None = None  # Range misses of larger objects pass through; None: max_object_size
    sort_query: bool = False
    drop_params: tuple[str, ...] = ()  # query parameters left out of the key (globs: utm_*)
    share_schemes: bool = False  # one entry for http:// and https:// of the same URL
    collapse_timeout: float = 30.0  # longest a request waits for a collapsed fetch
    collapse_max_waiters: int = 1000
    hit_for_miss_ttl: float = 30.0  # how long "not storable" is remembered for a URL


@dataclass(frozen=True, slots=True)
class PurgeSettings:
    """The ``[purge]`` table: who may send PURGE requests."""

    allow: tuple = (ipaddress.ip_network("127.0.0.0/8"), ipaddress.ip_network("::1/128"))
    allow_unix_peers: bool = False  # "unix" in allow: peers on UNIX sockets may purge too
    secret_header: str = "x-purge-secret"  # checked only when a secret is set
    secret: str | None = None


@dataclass(frozen=True, slots=True)
class ClusterSettings:
    """The ``[cluster]`` table: the other accel nodes behind the same balancer, and how a node leaves it."""

    peers: tuple[Origin, ...] = ()  # every purge this node accepts is forwarded to each of them
    purge_timeout: float = 10.0  # a peer that has not answered a forwarded purge by then has failed
    drain_delay: float = 5.0  # SIGTERM: seconds the health answer is 503 before the node stops accepting


@dataclass(frozen=True, slots=True)
class CertificateFiles:
    """One certificate a TLS listener can present, as PEM files (absolute paths)."""

    cert: str  # the certificate, optionally followed by its chain (and its key)
    key: str | None = None  # None: the private key is in the cert file
    chain: str | None = None  # intermediates; None: the certificates after the first in the cert file
    default: bool = False  # presented when no certificate matches the client's server name (SNI)
    where: str = "tls.certificates"  # the config key, for messages


@dataclass(frozen=True, slots=True)
class TLSListener:
    """One HTTPS listener: a plain stream endpoint that accel wraps in TLS, and its certificates."""

    endpoint: str  # tcp:443, tcp6:443:interface=::, unix:..., systemd:... (never ssl:)
    certificates: tuple[CertificateFiles, ...] = ()
    directory: str | None = None  # plus every certificate found in this directory
    where: str = "tls"


@dataclass(frozen=True, slots=True)
class TLSSettings:
    """The ``[tls]`` table: HTTPS listeners (SSL offload), the HTTP→HTTPS redirect and HSTS."""

    listeners: tuple[TLSListener, ...] = ()
    min_version: str = "1.2"  # "1.2" or "1.3"
    ciphers: str | None = None  # OpenSSL cipher string for TLS 1.2; None: Mozilla "intermediate"
    check_interval: float = 60.0  # certificate files are checked for renewal at most this often
    redirect_listen: tuple[str, ...] = ()  # plain HTTP listeners answering 301 to https://
    redirect_port: int | None = None  # port in the redirect URL; None: the first TLS listener's, or 443
    hsts_max_age: int | None = None  # Strict-Transport-Security on HTTPS responses when set
    hsts_include_subdomains: bool = False
    hsts_preload: bool = False


@dataclass(frozen=True, slots=True)
class StatusSettings:
    """``[status]``: where the status page (with the balancer manager), the Prometheus metrics and the health
    check for a balancer in front are served, and to whom."""

    path: str = "/accel-status"
    metrics_path: str = "/metrics"
    allow: tuple = (ipaddress.ip_network("127.0.0.0/8"), ipaddress.ip_network("::1/128"))
    allow_unix_peers: bool = False
    health_path: str = "/accel-health"  # 200 while serving, 503 while draining (accel.http.health)
    metrics: bool = True  # count requests (the status page's traffic figures, /metrics); false: /metrics is 404


ACCESS_LOG_FORMATS = ("combined", "json")


DEFAULT_LISTEN = ("tcp:8080",)


COMMAND_LINE = "command line"  # the source of a configuration made from options alone


@dataclass(frozen=True, slots=True)
class Config:
    source: str = COMMAND_LINE
    listen: tuple[str, ...] = DEFAULT_LISTEN
    shutdown_timeout: float = 10.0  # SIGTERM: how long in-flight requests may take to finish
    routes: tuple[Route, ...] = ()
    server_header: str | None = "accel"  # None: send no Server field
    server_names: tuple[str, ...] = ()  # hosts accepted in absolute-form targets (besides local names)
    trusted_proxies: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...] = ()
    trusted_unix_peers: bool = False  # "unix" in trusted_proxies: trust peers on UNIX sockets too
    via_pseudonym: str = "accel"
    access_log: str | None = None  # path, "-" for stdout, None for no access log
    access_log_format: str = "combined"  # or "json": one object a line
    workers: int = 1  # worker processes; 1: this process serves, with no supervisor
    cache: CacheSettings = CacheSettings()
    purge: PurgeSettings = PurgeSettings()
    cluster: ClusterSettings = ClusterSettings()
    error_documents: dict[int, str] = field(default_factory=dict)
    limits: Limits = Limits()
    tls: TLSSettings = TLSSettings()
    protection: Protection = Protection()  # the [server] defaults of the routes' protection
    balancers: dict[str, BalancerSettings] = field(default_factory=dict)
    status: StatusSettings = StatusSettings()
    compress: Compress = Compress()  # the server-wide default of [route.compress]
    overridden_by: tuple[str, ...] = ()  # the command-line options that replaced values of the file ("--cache-dir")

    def origin_of(self, key: str, option: str) -> tuple[str, str]:
        """(source, key) naming a value in messages: the option, when the command line set it."""
        return (COMMAND_LINE, option) if option in self.overridden_by or self.source == COMMAND_LINE else (self.source, key)
