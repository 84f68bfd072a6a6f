"""Protecting the origins, end to end: a real origin, accel in front, what the origin received and what the
client got for access rules, methods, body sizes, rate limits, header rules and untrusted forwarding fields."""

from __future__ import annotations

import tempfile
from dataclasses import replace

from twisted.internet import defer
from twisted.trial import unittest

from accel.config import CacheSettings, parse_config
from tests.support import get, http_client, raw_request, start_stack, temporary_directory, until
from tests.test_fast_hits import counted_fast_hits

ORIGIN_PLACEHOLDER = '[[route]]\nprefix = "/"\norigin = "http://127.0.0.1:9/"\n'


def protected_stack(testcase, route: str = "", server: str = "", limits: str = "", cache: bool = False, **config):
    """accel in front of a recording origin, with ``route`` / ``server`` / ``limits`` TOML lines."""
    parsed = parse_config(f"[server]\n{server}\n[limits]\n{limits}\n{ORIGIN_PLACEHOLDER}{route}\n", "test.toml")
    if cache:
        config["cache"] = CacheSettings(dir=temporary_directory(testcase, "accel-protection-"))
    return start_stack(testcase, replace(parsed, **config), protection=parsed.routes[0].protection)


def status(response: bytes) -> int:
    return int(response.split(b" ", 2)[1]) if response.startswith(b"HTTP/1.") else 0


def head_fields(response: bytes) -> dict[bytes, list[bytes]]:
    fields: dict[bytes, list[bytes]] = {}
    for line in response.partition(b"\r\n\r\n")[0].split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        fields.setdefault(name.strip().lower(), []).append(value.strip())
    return fields


class AccessRuleTests(unittest.TestCase):
    @defer.inlineCallbacks
    def test_a_denied_client_gets_403_with_the_error_document_and_is_counted(self):
        page = tempfile.NamedTemporaryFile("w", suffix=".html", delete=False)
        page.write("<p>not for you</p>\n")
        page.close()
        stack = protected_stack(self, route='allow = ["local"]\ndeny = ["127.0.0.0/8"]',
                                error_documents={403: page.name})
        response, body = yield get(http_client(self), stack.url + "/secret")
        self.assertEqual((response.code, body), (403, b"<p>not for you</p>\n"))
        self.assertEqual(stack.origin.seen, [])
        self.assertEqual(stack.accel_site.admission.refusals[("/", 403)], 1)

    @defer.inlineCallbacks
    def test_allow_lists_let_in_only_the_clients_they_name(self):
        local = protected_stack(self, route='allow = ["local"]')
        response, _ = yield get(http_client(self), local.url + "/a")
        self.assertEqual(response.code, 200)
        lan = protected_stack(self, route='allow = ["192.168.1.0/24"]')
        response, _ = yield get(http_client(self), lan.url + "/a")
        self.assertEqual((response.code, lan.origin.seen), (403, []))

    @defer.inlineCallbacks
    def test_the_client_behind_a_trusted_proxy_is_the_first_untrusted_forwarded_address(self):
        stack = protected_stack(self, route='deny = ["203.0.113.0/24"]', server='trusted_proxies = ["127.0.0.0/8"]')
        agent = http_client(self)
        results = []
        for xff in (b"203.0.113.5", b"198.51.100.1, 203.0.113.5", b"203.0.113.5, 198.51.100.1", b"203.0.113.5, 127.0.0.9"):
            response, _ = yield get(agent, stack.url + "/a", headers={b"x-forwarded-for": xff})
            results.append(response.code)
        self.assertEqual(results, [403, 403, 200, 403])
        self.assertEqual([s.header(b"x-forwarded-for") for s in stack.origin.seen], [[b"203.0.113.5, 198.51.100.1, 127.0.0.1"]])

    @defer.inlineCallbacks
    def test_an_untrusted_peer_cannot_pretend_with_x_forwarded_for(self):
        stack = protected_stack(self, route='allow = ["198.51.100.0/24"]')
        response, _ = yield get(http_client(self), stack.url + "/a", headers={b"x-forwarded-for": b"198.51.100.1"})
        self.assertEqual((response.code, stack.origin.seen), (403, []))


class MethodAndBodyTests(unittest.TestCase):
    @defer.inlineCallbacks
    def test_other_methods_get_405_with_allow(self):
        stack = protected_stack(self, route='methods = ["GET", "POST"]')
        agent = http_client(self)
        response, _ = yield get(agent, stack.url + "/a", method=b"DELETE")
        self.assertEqual((response.code, response.headers.getRawHeaders(b"allow")), (405, [b"GET, POST, HEAD"]))
        response, _ = yield get(agent, stack.url + "/a", method=b"HEAD")
        self.assertEqual(response.code, 200)
        self.assertEqual([s.method for s in stack.origin.seen], [b"HEAD"])

    @defer.inlineCallbacks
    def test_a_declared_body_over_the_limit_gets_413_before_the_origin_is_contacted(self):
        stack = protected_stack(self, limits="max_body_size = 10")
        port = stack.accel_port.getHost().port
        response = yield raw_request(port, b"POST /up HTTP/1.1\r\nHost: a\r\nContent-Length: 11\r\n\r\nhello world")
        self.assertEqual(status(response), 413)
        response = yield raw_request(port, b"POST /up HTTP/1.1\r\nHost: a\r\nContent-Length: 10\r\nConnection: close"
                                           b"\r\n\r\nhelloworld")
        self.assertEqual(status(response), 200)
        self.assertEqual([s.body for s in stack.origin.seen], [b"helloworld"])
        self.assertEqual(stack.origin_site.connections, 1)

    @defer.inlineCallbacks
    def test_a_chunked_body_growing_past_the_limit_is_cut_with_413_and_the_origin_request_aborted(self):
        stack = protected_stack(self, route="max_body_size = 100")
        chunk = b"x" * 60
        payload = (b"POST /up HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n"
                   + (b"%x\r\n%s\r\n" % (len(chunk), chunk)) * 3 + b"0\r\n\r\n")
        response = yield raw_request(stack.accel_port.getHost().port, payload)
        self.assertEqual(status(response), 413)
        self.assertEqual(head_fields(response)[b"connection"], [b"close"])
        self.assertEqual(stack.origin.seen, [])  # the origin never got a whole request
        # The origin client finishes the connection it had begun (and keeps it idle): let it, before closing.
        yield until(lambda: stack.origin_site.connections == 1)


class RateLimitTests(unittest.TestCase):
    @defer.inlineCallbacks
    def test_over_the_limit_gets_429_with_retry_after(self):
        stack = protected_stack(self, route="[route.rate_limit]\nrequests = 2\nper = 60")
        agent = http_client(self)
        codes = []
        for _ in range(4):
            response, _ = yield get(agent, stack.url + "/a")
            codes.append((response.code, response.headers.getRawHeaders(b"retry-after")))
        self.assertEqual(codes, [(200, None), (200, None), (429, [b"30"]), (429, [b"30"])])
        self.assertEqual(len(stack.origin.seen), 2)

    @defer.inlineCallbacks
    def test_a_header_key_gives_each_value_its_own_bucket(self):
        stack = protected_stack(self, route='[route.rate_limit]\nrequests = 1\nper = 60\nkey = "X-Api-Key"')
        agent = http_client(self)
        codes = []
        for key in (b"one", b"two", b"one"):
            response, _ = yield get(agent, stack.url + "/a", headers={b"x-api-key": key})
            codes.append(response.code)
        self.assertEqual(codes, [200, 200, 429])

    @defer.inlineCallbacks
    def test_cache_hits_count_unless_hits_count_is_false(self):
        for hits_count, expected in (("true", [200, 200, 429, 429]), ("false", [200, 200, 200, 200])):
            stack = protected_stack(self, route=f"[route.rate_limit]\nrequests = 2\nper = 60\nhits_count = {hits_count}",
                                    cache=True)
            stack.origin.handlers[b"/cached"] = lambda request: (request.setHeader(b"cache-control", b"max-age=60"), b"c")[1]
            agent = http_client(self)
            codes = []
            for _ in range(4):
                response, _ = yield get(agent, stack.url + "/cached")
                codes.append(response.code)
            self.assertEqual(codes, expected, hits_count)
            self.assertEqual(len(stack.origin.seen), 1)
            if hits_count == "false":  # misses still count
                codes = []
                for _ in range(2):
                    response, _ = yield get(agent, stack.url + "/uncached")
                    codes.append(response.code)
                self.assertEqual(codes, [200, 429])
                self.assertEqual(len(stack.origin.seen), 2)


    @defer.inlineCallbacks
    def test_a_limited_revalidation_gets_429_not_the_stale_response(self):
        stack = protected_stack(self, route="[route.rate_limit]\nrequests = 1\nper = 60\nhits_count = false", cache=True)
        stack.origin.handlers[b"/s"] = lambda request: (
            request.setHeader(b"cache-control", b"max-age=0, stale-if-error=600"), b"s")[1]
        agent = http_client(self)
        codes = []
        for _ in range(2):
            response, _ = yield get(agent, stack.url + "/s")
            codes.append(response.code)
        self.assertEqual(codes, [200, 429])
        self.assertEqual(len(stack.origin.seen), 1)

    @defer.inlineCallbacks
    def test_a_reload_brings_new_rules_and_keeps_the_buckets(self):
        stack = protected_stack(self)
        agent = http_client(self)
        response, _ = yield get(agent, stack.url + "/a")
        self.assertEqual(response.code, 200)
        limited = parse_config(f"{ORIGIN_PLACEHOLDER}[route.rate_limit]\nrequests = 1\nper = 3600\n", "t.toml")
        route = replace(stack.config.routes[0], protection=limited.routes[0].protection)
        accelerator = stack.accel_site.accelerator
        accelerator.reload(replace(stack.config, routes=(route,)))
        codes = []
        for _ in range(2):
            response, _ = yield get(agent, stack.url + "/a")
            codes.append(response.code)
        accelerator.reload(replace(stack.config, routes=(route,)))  # the same limit: its bucket is spent
        response, _ = yield get(agent, stack.url + "/a")
        self.assertEqual(codes + [response.code], [200, 429, 429])


class FastHitTests(unittest.TestCase):
    """Hits the connection answers itself (accel.cache.fast) obey the same rules as the general path."""

    @defer.inlineCallbacks
    def test_a_fast_hit_is_refused_for_a_denied_client_and_limited_by_the_rate(self):
        stack = protected_stack(self, cache=True, server='trusted_proxies = ["127.0.0.1"]',
                                route='deny = ["203.0.113.0/24"]\n[route.rate_limit]\nrequests = 2\nper = 3600')
        stack.origin.handlers[b"/f"] = lambda request: (request.setHeader(b"cache-control", b"max-age=600"), b"f")[1]
        fast = counted_fast_hits(self, stack)
        agent = http_client(self)
        codes = []
        for client in (b"198.51.100.1", b"198.51.100.1", b"203.0.113.5", b"198.51.100.2", b"198.51.100.1"):
            response, _ = yield get(agent, stack.url + "/f", headers={b"x-forwarded-for": client})
            codes.append(response.code)
        # miss, hit (it enters the memory tier), denied, another client's fast hit, then the first client's
        # fast hit is over its 2 tokens: handed to the general path, which answers 429
        self.assertEqual(codes, [200, 200, 403, 200, 429])
        self.assertEqual(fast, [b"/f"])
        self.assertEqual(len(stack.origin.seen), 1)
        refusals = stack.accel_site.admission.refusals
        self.assertEqual((refusals[("/", 403)], refusals[("/", 429)]), (1, 1))  # counted once each

class HeaderRuleTests(unittest.TestCase):
    RULES = (
        '[[route.header]]\nside = "response"\naction = "set"\nname = "X-Frame-Options"\nvalue = "DENY"\nalways = true\n'
        '[[route.header]]\nside = "response"\naction = "set"\nname = "X-Served"\nvalue = "accel"\n'
        '[[route.header]]\nside = "response"\naction = "unset"\nname = "X-Powered-By"\n'
        '[[route.header]]\nside = "request"\naction = "set"\nname = "X-Env"\nvalue = "prod"\n'
        '[[route.header]]\nside = "request"\naction = "unset"\nname = "Cookie"\n'
    )

    @defer.inlineCallbacks
    def test_rules_on_misses_hits_and_errors(self):
        stack = protected_stack(self, route=self.RULES, cache=True)

        def cached(request):
            request.setHeader(b"cache-control", b"max-age=60")
            request.setHeader(b"x-powered-by", b"PHP/8.1")
            request.setHeader(b"x-frame-options", b"SAMEORIGIN")
            return b"page"

        stack.origin.handlers[b"/page"] = cached
        agent = http_client(self)
        seen = []
        for path in ("/page", "/page", "/status/503"):
            response, _ = yield get(agent, stack.url + path, headers={b"cookie": b"s=1", b"x-env": b"dev"})
            h = response.headers
            seen.append((response.code, h.getRawHeaders(b"x-frame-options"), h.getRawHeaders(b"x-served"),
                         h.hasHeader(b"x-powered-by"), h.getRawHeaders(b"cache-status")[0].split(b";")[1].strip()))
        self.assertEqual(seen, [
            (200, [b"DENY"], [b"accel"], False, b"fwd=uri-miss"),
            (200, [b"DENY"], [b"accel"], False, b"hit"),
            (503, [b"DENY"], None, False, b"fwd=uri-miss"),  # without always: not on errors
        ])
        self.assertEqual([(s.header(b"x-env"), s.header(b"cookie")) for s in stack.origin.seen], [([b"prod"], [])] * 2)
        # the stored response is the origin's: the rules' values are added when it is served
        stored = stack.accel_site.cache.store.lookup(stack.origin_url + "/page")  # the key names the origin
        fields = dict(stored[0][0].fields)
        self.assertEqual((fields.get("x-frame-options"), fields.get("x-powered-by"), "x-served" in fields),
                         ("SAMEORIGIN", "PHP/8.1", False))

    @defer.inlineCallbacks
    def test_always_rules_reach_refusals_and_accels_own_error_pages(self):
        stack = protected_stack(self, route='deny = ["127.0.0.0/8"]\n' + self.RULES, server=(
            '[[server.header]]\nside = "response"\naction = "set"\nname = "X-Frame-Options"\nvalue = "DENY"\nalways = true\n'))
        port = stack.accel_port.getHost().port
        for payload, code in ((b"GET /a HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n", 403),  # route refusal
                              (b"GET /a/%2Fb HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n", 400),  # before routing
                              (b"GET /a HTTP/1.1\r\n\r\n", 400)):  # the channel's refusal
            response = yield raw_request(port, payload)
            fields = head_fields(response)
            self.assertEqual((status(response), fields.get(b"x-frame-options"), fields.get(b"x-served")),
                             (code, [b"DENY"], None))
        self.assertEqual(stack.origin.seen, [])

    @defer.inlineCallbacks
    def test_rules_on_hits_answered_from_the_prepared_header_section(self):
        stack = protected_stack(self, cache=True, route=(
            '[[route.header]]\nside = "response"\naction = "set"\nname = "X-Served"\nvalue = "accel"\n'
            '[[route.header]]\nside = "response"\naction = "unset"\nname = "Server"\n'))
        stack.origin.handlers[b"/p"] = lambda request: (request.setHeader(b"cache-control", b"max-age=60"), b"p")[1]
        port = stack.accel_port.getHost().port
        answers = []
        for _ in range(3):
            response = yield raw_request(port, b"GET /p HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n")
            fields = head_fields(response)
            answers.append((fields[b"x-served"], b"server" in fields, fields[b"cache-status"][0].split(b";")[1].strip()))
        self.assertEqual(answers, [([b"accel"], False, b"fwd=uri-miss")] + [([b"accel"], False, b"hit")] * 2)
        self.assertEqual(len(stack.origin.seen), 1)


class ForwardingTests(unittest.TestCase):
    POISON = {b"x-original-url": b"/admin", b"x-rewrite-url": b"/admin", b"x-http-method-override": b"DELETE",
              b"x-forwarded-prefix": b"/evil", b"x-host": b"evil.example", b"x-debug": b"1", b"x-keep": b"1"}

    @defer.inlineCallbacks
    def test_fields_origins_trust_are_removed_from_untrusted_peers(self):
        stack = protected_stack(self, server='strip_untrusted = ["X-Debug"]\npass_untrusted = ["X-Forwarded-Prefix"]')
        yield get(http_client(self), stack.url + "/a", headers=self.POISON)
        names = {n.lower() for n, _ in stack.origin.seen[0].headers}
        self.assertEqual(names & set(self.POISON), {b"x-forwarded-prefix", b"x-keep"})

    @defer.inlineCallbacks
    def test_trusted_proxies_keep_them(self):
        stack = protected_stack(self, server='trusted_proxies = ["127.0.0.1"]')
        yield get(http_client(self), stack.url + "/a", headers=self.POISON)
        self.assertEqual(stack.origin.seen[0].header(b"x-original-url"), [b"/admin"])

    @defer.inlineCallbacks
    def test_error_pages_never_reveal_versions_and_server_header_false_sends_none(self):
        for server, expected in (("", [b"accel"]), ("server_header = false", None)):
            stack = protected_stack(self, server=server, route='methods = ["GET"]')
            port = stack.accel_port.getHost().port
            for payload in (b"POST /a HTTP/1.1\r\nHost: a\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
                            b"GET /a HTTP/1.1\r\n\r\n", b"GET /status/502 HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n"):
                response = yield raw_request(port, payload)
                self.assertEqual(head_fields(response).get(b"server"), expected)
                self.assertNotIn(b"twisted", response.lower())
                self.assertNotIn(b"python", response.lower())
