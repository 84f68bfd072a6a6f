"""accel's configuration: the TOML file, its validation, and the command-line overrides.

Everything the server needs is described by the frozen dataclasses of ``settings``. ``load_config`` reads a
TOML file and checks every key (``sections``, with ``reader`` taking the values out of the tables); a mistake
raises ``ConfigError`` whose message names the file, the key (and the line when tomllib knows it) and what
was expected, so ``twistd`` and ``accel check-config`` can print one line and exit non-zero instead of a
traceback. The names below are the ones the rest of accel uses.
"""

from accel.config.reader import located
from accel.config.sections import load_config, local_names, parse_balancer_url, parse_config, parse_origin, with_overrides
from accel.config.settings import (
    COMMAND_LINE,
    COMPRESS_TYPES,
    DEFAULT_PORTS,
    HOP_BY_HOP_NAMES,
    AddressList,
    BalancerMember,
    BalancerSettings,
    CacheSettings,
    CertificateFiles,
    ClusterSettings,
    Compress,
    Config,
    ConfigError,
    ConfigProblems,
    HeaderRule,
    HealthCheck,
    Limits,
    Origin,
    Protection,
    PurgeSettings,
    RateLimit,
    Route,
    RouteCache,
    StatusSettings,
    TLSListener,
    TLSSettings,
)
