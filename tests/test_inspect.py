"""`tunnelacct inspect` through the real CLI: each rejected packet with its reason and scapy's
dissection, which names the layers scapy found (scapy, run here on the same bytes, is the
oracle of that dissection)."""

from __future__ import annotations

from pathlib import Path

from scapy.layers.inet import IP, TCP
from scapy.layers.inet6 import IPv6
from scapy.layers.l2 import ARP, Ether
from scapy.packet import Packet, Raw

from tests.helpers.accuracy import run_cli
from tests.helpers.pcapwrite import LINKTYPE_ETHERNET, LINKTYPE_RAW, MAC_SRC, eth, write_pcap

TCP_V4 = bytes(IP(src="100.64.0.2", dst="10.99.0.5") / TCP(sport=40000, dport=443))
# an IPv6 packet whose payload length holds only 10 bytes of its TCP header
TCP_V6_CUT = bytes(
    IPv6(src="fd00:64::2", dst="fd00:99::5", nh=6, plen=10)
    / Raw(bytes(TCP(sport=40000, dport=443))[:10])
)


def bad_ihl(ip: bytes) -> bytes:
    """The IPv4 packet with a header length of 3 words (less than the 20-byte minimum)."""
    return bytes([0x43]) + ip[1:]


def inspect_lines(pcap: Path) -> dict[int, str]:
    """`tunnelacct inspect --all-reasons` of `pcap`: its lines by record number."""
    out = run_cli("inspect", "--all-reasons", str(pcap)).stdout.splitlines()
    return {int(line.split()[0].removeprefix("#")): line for line in out}


def layer_names(packet: Packet) -> str:
    """The layers scapy found, outermost first, as `Ether / IP / Raw`."""
    return " / ".join(layer.__name__ for layer in packet.layers())


def test_inspect_names_the_layers_scapy_dissects_in_rejected_ethernet_frames(
    tmp_path: Path,
) -> None:
    arp = Ether(dst="ff:ff:ff:ff:ff:ff", src=MAC_SRC) / ARP(psrc="100.64.0.2", pdst="100.64.0.1")
    frames = {
        1: eth(TCP_V4),  # decodes: not shown
        2: eth(bad_ihl(TCP_V4)),  # bad_ip_header_length
        3: eth(TCP_V4)[: 14 + 10],  # truncated_ip_header: scapy gets no further than Ethernet
        4: eth(TCP_V6_CUT),  # truncated_tcp_header
        5: bytes(arp),  # not_ip, shown with --all-reasons
    }
    pcap = write_pcap(
        tmp_path / "eth.pcap", [(float(n), f) for n, f in frames.items()], LINKTYPE_ETHERNET
    )
    lines = inspect_lines(pcap)
    assert sorted(lines) == [2, 3, 4, 5], lines
    reasons = {
        2: "bad_ip_header_length",
        3: "truncated_ip_header",
        4: "truncated_tcp_header",
        5: "not_ip",
    }
    outermost = {2: "Ether / IP /", 3: "Ether / Raw", 4: "Ether / IPv6 /", 5: "Ether / ARP"}
    for n, line in lines.items():
        assert f" {reasons[n]}: " in line, line
        dissected = Ether(frames[n])  # scapy's own dissection of the same bytes
        assert layer_names(dissected).startswith(outermost[n]), layer_names(dissected)
        assert f": {layer_names(dissected)} (" in line, line
        assert dissected.summary() in line, line


def test_inspect_names_the_ip_layers_of_rejected_raw_ip_packets(tmp_path: Path) -> None:
    packets = {1: bad_ihl(TCP_V4), 2: TCP_V6_CUT}
    pcap = write_pcap(
        tmp_path / "raw.pcap", [(float(n), p) for n, p in packets.items()], LINKTYPE_RAW
    )
    lines = inspect_lines(pcap)
    assert sorted(lines) == [1, 2], lines
    reasons = {1: "bad_ip_header_length", 2: "truncated_tcp_header"}
    outermost = {1: "IP /", 2: "IPv6 /"}
    for n, line in lines.items():
        assert f" {reasons[n]}: " in line, line
        dissected = IP(packets[n]) if n == 1 else IPv6(packets[n])  # by the version nibble
        assert layer_names(dissected).startswith(outermost[n]), layer_names(dissected)
        assert f": {layer_names(dissected)} (" in line, line
        assert dissected.summary() in line, line
