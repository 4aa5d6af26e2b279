"""The egress policy on addresses (pure logic): what is refused, and why."""

from ipaddress import ip_network

import pytest

from dashpipe.egress import refusal

REFUSED = {
    "127.0.0.1": "loopback", "127.9.9.9": "loopback", "::1": "loopback",
    "10.1.2.3": "private", "172.16.0.1": "private", "192.168.1.1": "private",
    "169.254.169.254": "link-local", "fe80::1": "link-local",
    "100.64.0.1": "not globally routable", "0.0.0.0": "unspecified", "::": "unspecified",
    "::ffff:127.0.0.1": "carrying 127.0.0.1", "::ffff:10.0.0.1": "carrying 10.0.0.1",
    "64:ff9b::a00:1": "carrying 10.0.0.1", "2002:7f00:1::": "carrying 127.0.0.1",
    "224.0.0.1": "multicast", "fc00::1": "private", "198.18.0.1": "private",
    # translated and deprecated forms, whatever IPv4 address they carry
    "::127.0.0.1": "IPv4-compatible", "::8.8.8.8": "IPv4-compatible",
    "::ffff:0:7f00:1": "SIIT", "::ffff:0:808:808": "SIIT",
    "64:ff9b::808:808": "NAT64", "64:ff9b:1::7f00:1": "local-use NAT64",
    "64:ff9b:1:ffff::808:808": "local-use NAT64",
    # reserved ranges
    "240.0.0.1": "reserved", "4000::1": "reserved", "100::1": "reserved",
}


@pytest.mark.parametrize(("address", "word"), sorted(REFUSED.items()))
def test_internal_addresses_are_refused_with_the_reason(address: str, word: str) -> None:
    reason = refusal(address, [])
    assert reason is not None and word in reason and "DASHPIPE_EGRESS_ALLOW" in reason


@pytest.mark.parametrize("address", ["8.8.8.8", "1.1.1.1", "2606:4700:4700::1111",
                                     "::ffff:8.8.8.8"])
def test_public_addresses_pass(address: str) -> None:
    assert refusal(address, []) is None


def test_the_allow_list_permits_exactly_its_ranges() -> None:
    allow = [ip_network("10.1.0.0/16"), ip_network("::1/128")]
    assert refusal("10.1.2.3", allow) is None
    assert refusal("::1", allow) is None
    assert refusal("10.2.0.1", allow) is not None
    assert refusal("127.0.0.1", allow) is not None
