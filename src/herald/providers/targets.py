"""Which hosts Herald may connect to on a caller's say-so (Web Push endpoints).

A Web Push subscription names the URL Herald posts to, so whoever registers a device picks
a host for Herald to connect to. Without a check that is server-side request forgery: the
cloud metadata service, the database port, anything on the private network. The policy:

- https only, a host name or a public address, no userinfo (`https://user@host/`);
- every address the host resolves to must be public: loopback, private (RFC 1918, ULA),
  link-local (169.254.0.0/16 with the metadata services, fe80::/10), shared (100.64/10),
  unspecified, multicast, reserved and documentation ranges are refused, also when written
  as IPv4-mapped / 6to4 / Teredo / NAT64 IPv6;
- optionally, only the push services a deployment names (HERALD_WEBPUSH_ALLOWED_HOSTS).

The addresses are checked at registration (a 422) and again at connect time by the HTTP
plumbing (http_session.guarded_connector), on the addresses actually connected to: a name
that resolved to a public address at registration and to 127.0.0.1 later (DNS rebinding)
is refused then. Tests and local demos whose fakes listen on 127.0.0.1 set
HERALD_ALLOW_PRIVATE_TARGETS=1.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
from collections.abc import Iterable
from dataclasses import dataclass
from urllib.parse import urlsplit

from herald.config import Settings

# The push services browsers subscribe to (for HERALD_WEBPUSH_ALLOWED_HOSTS):
# Chrome/Edge-on-Android (FCM), Firefox (Mozilla autopush), Edge/Windows (WNS), Safari.
KNOWN_PUSH_SERVICES = (
    "fcm.googleapis.com",
    "updates.push.services.mozilla.com",
    "*.notify.windows.com",
    "web.push.apple.com",
    "*.push.apple.com",
)

# The one reason stored for a refused target: it says nothing about the host's ports.
REFUSED = "endpoint refused: not a public https push service"
RESOLVE_TIMEOUT_S = 3.0

IpAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
_NAT64 = ipaddress.ip_network("64:ff9b::/96")


class TargetRefused(OSError):
    """Raised at connect time for an address the policy forbids (an OSError, so aiohttp
    wraps it as a connection error rather than crashing the request)."""

    def __init__(self, detail: str) -> None:
        super().__init__(f"{REFUSED} ({detail})")
        self.detail = detail


def embedded_ipv4(ip: IpAddress) -> ipaddress.IPv4Address | None:
    """The IPv4 address an IPv6 address carries (mapped, 6to4, Teredo client, NAT64)."""
    if not isinstance(ip, ipaddress.IPv6Address):
        return None
    if ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    if ip.sixtofour is not None:
        return ip.sixtofour
    if ip.teredo is not None:
        return ip.teredo[1]
    if ip in _NAT64:
        return ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
    return None


def address_problem(ip: IpAddress) -> str | None:
    """Why `ip` is no place for a push request, None when it is a public unicast address."""
    inner = embedded_ipv4(ip)
    if inner is not None:
        return address_problem(inner)
    if ip.is_multicast:
        return "multicast address"
    if ip.is_unspecified:
        return "unspecified address"
    if ip.is_loopback:
        return "loopback address"
    if ip.is_link_local:
        return "link-local address"
    if ip.is_private or not ip.is_global or ip.is_reserved:
        return "private or reserved address"
    return None


def parse_ip(host: str) -> IpAddress | None:
    try:
        return ipaddress.ip_address(host.strip("[]").split("%", 1)[0])
    except ValueError:
        return None


def _host_allowed(host: str, patterns: Iterable[str]) -> bool:
    host = host.rstrip(".").lower()
    for pattern in patterns:
        pattern = pattern.strip().lower().rstrip(".")
        if pattern.startswith("*."):
            if host.endswith(pattern[1:]):
                return True
        elif pattern.startswith("."):
            if host.endswith(pattern):
                return True
        elif host == pattern:
            return True
    return False


@dataclass(frozen=True, slots=True)
class TargetPolicy:
    allow_private: bool = False
    # Empty: any public host. Otherwise exact names, or "*.suffix" for a domain's hosts.
    allowed_hosts: tuple[str, ...] = ()

    @classmethod
    def from_settings(cls, settings: Settings) -> TargetPolicy:
        return cls(
            allow_private=settings.allow_private_targets,
            allowed_hosts=tuple(settings.webpush_allowed_hosts),
        )

    def url_problem(self, url: str) -> str | None:
        """What is wrong with `url` as a push endpoint without resolving it, or None."""
        try:
            parts = urlsplit(url)
            parts.port  # noqa: B018 - raises ValueError for a port out of range
        except ValueError:
            return "the endpoint is not a valid URL"
        if parts.scheme != "https":
            return "the endpoint must be an https URL"
        if "@" in parts.netloc or parts.username is not None:
            return "the endpoint must not carry a user name or password"
        host = parts.hostname
        if not host:
            return "the endpoint has no host"
        if self.allowed_hosts and not _host_allowed(host, self.allowed_hosts):
            return f"{host} is not one of the allowed push services (HERALD_WEBPUSH_ALLOWED_HOSTS)"
        if self.allow_private:
            return None
        ip = parse_ip(host)
        if ip is not None:
            problem = address_problem(ip)
            return f"the endpoint is a {problem}" if problem else None
        name = host.rstrip(".").lower()
        if name == "localhost" or name.endswith((".localhost", ".local", ".internal")):
            return f"{host} is a local name"
        return None

    def check_address(self, address: str) -> None:
        """Raise TargetRefused unless Herald may connect to `address` (a resolved IP)."""
        if self.allow_private:
            return
        ip = parse_ip(address)
        if ip is None:
            raise TargetRefused("not an IP address")
        problem = address_problem(ip)
        if problem:
            raise TargetRefused(problem)

    async def endpoint_problem(self, url: str) -> str | None:
        """url_problem, then every address the host resolves to (registration time). A host
        that does not resolve now is let through: the check at connect time still runs."""
        problem = self.url_problem(url)
        if problem or self.allow_private:
            return problem
        host = urlsplit(url).hostname or ""
        if parse_ip(host) is not None:
            return None
        loop = asyncio.get_running_loop()
        try:
            infos = await asyncio.wait_for(
                loop.getaddrinfo(host, 443, type=socket.SOCK_STREAM), RESOLVE_TIMEOUT_S
            )
        except (OSError, TimeoutError, UnicodeError):
            return None
        for info in infos:
            try:
                self.check_address(str(info[4][0]))
            except TargetRefused as refused:
                return f"{host} resolves to a {refused.detail}"
        return None


async def refused_push_endpoint(endpoint: str, settings: Settings) -> str | None:
    """Why a Web Push subscription's endpoint may not be registered (the API's 422), or
    None: the deployment's policy, the URL, and every address its host resolves to."""
    return await TargetPolicy.from_settings(settings).endpoint_problem(endpoint)
