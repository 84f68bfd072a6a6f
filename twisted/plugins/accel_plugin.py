"""Makes ``twistd accel`` available; the options and the service live in ``accel.tap``."""

from twisted.application.service import ServiceMaker

accel = ServiceMaker("accel", "accel.tap", "Caching HTTP accelerator (reverse proxy with an RFC 9111 cache).", "accel")
