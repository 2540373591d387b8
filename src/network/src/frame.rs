//! Building the announcement frames (pure functions, no I/O).
//!
//! - IPv4: a gratuitous ARP, as `arping -U` sends: an ARP request, broadcast, whose sender and
//!   target protocol addresses are both the VIP and whose sender hardware address is the
//!   interface's MAC (target hardware address zero, as RFC 5227 "ARP announcement").
//! - IPv6: an unsolicited neighbour advertisement (RFC 4861 §7.2.6) to all-nodes (`ff02::1`),
//!   Override flag set, Solicited and Router flags clear, with a target link-layer address option.

use std::net::{Ipv4Addr, Ipv6Addr};

/// A MAC address.
pub type Mac = [u8; 6];

/// Ethernet broadcast.
pub const BROADCAST: Mac = [0xff; 6];
/// Ethernet multicast address of `ff02::1` (all nodes): 33:33 + the last 32 bits.
pub const ALL_NODES_MAC: Mac = [0x33, 0x33, 0, 0, 0, 1];
/// `ff02::1`.
pub const ALL_NODES: Ipv6Addr = Ipv6Addr::new(0xff02, 0, 0, 0, 0, 0, 0, 1);

pub const ETH_P_ARP: u16 = 0x0806;
pub const ETH_P_IPV4: u16 = 0x0800;
pub const ETH_P_IPV6: u16 = 0x86dd;
const ARPHRD_ETHER: u16 = 1;
const ARPOP_REQUEST: u16 = 1;
const IPPROTO_ICMPV6: u8 = 58;
const ND_NEIGHBOR_ADVERT: u8 = 136;
const ND_OPT_TARGET_LL_ADDR: u8 = 2;
/// Override flag of a neighbour advertisement (first byte of the flags word).
const NA_FLAG_OVERRIDE: u8 = 0x20;

/// Length of a gratuitous ARP frame: Ethernet header (14) + ARP for IPv4 over Ethernet (28).
/// The NIC pads it to the 60-byte Ethernet minimum.
pub const GARP_LEN: usize = 42;
/// Length of an unsolicited NA frame: Ethernet (14) + IPv6 (40) + NA (24) + TLLA option (8).
pub const NA_LEN: usize = 86;

/// A gratuitous ARP from `mac` for `ip` (`arping -U`): broadcast ARP request with
/// sender IP = target IP = `ip`.
pub fn garp_frame(mac: Mac, ip: Ipv4Addr) -> [u8; GARP_LEN] {
    let mut f = [0u8; GARP_LEN];
    // Ethernet header.
    f[0..6].copy_from_slice(&BROADCAST);
    f[6..12].copy_from_slice(&mac);
    f[12..14].copy_from_slice(&ETH_P_ARP.to_be_bytes());
    // ARP.
    f[14..16].copy_from_slice(&ARPHRD_ETHER.to_be_bytes()); // hardware type
    f[16..18].copy_from_slice(&ETH_P_IPV4.to_be_bytes()); // protocol type
    f[18] = 6; // hardware address length
    f[19] = 4; // protocol address length
    f[20..22].copy_from_slice(&ARPOP_REQUEST.to_be_bytes());
    f[22..28].copy_from_slice(&mac); // sender hardware address
    f[28..32].copy_from_slice(&ip.octets()); // sender protocol address
                                             // f[32..38]: target hardware address, zero.
    f[38..42].copy_from_slice(&ip.octets()); // target protocol address
    f
}

/// An unsolicited neighbour advertisement from `mac` for `ip`, sent from `ip` to `ff02::1`.
pub fn na_frame(mac: Mac, ip: Ipv6Addr) -> [u8; NA_LEN] {
    let mut f = [0u8; NA_LEN];
    // Ethernet header.
    f[0..6].copy_from_slice(&ALL_NODES_MAC);
    f[6..12].copy_from_slice(&mac);
    f[12..14].copy_from_slice(&ETH_P_IPV6.to_be_bytes());
    // IPv6 header.
    let payload_len: u16 = (NA_LEN - 54) as u16; // 32
    f[14] = 0x60; // version 6, traffic class 0, flow label 0
    f[18..20].copy_from_slice(&payload_len.to_be_bytes());
    f[20] = IPPROTO_ICMPV6;
    f[21] = 255; // hop limit: must be 255 or the receiver drops it
    f[22..38].copy_from_slice(&ip.octets());
    f[38..54].copy_from_slice(&ALL_NODES.octets());
    // ICMPv6 neighbour advertisement.
    let icmp = 54;
    f[icmp] = ND_NEIGHBOR_ADVERT;
    f[icmp + 1] = 0; // code
                     // f[icmp+2..icmp+4]: checksum, below.
    f[icmp + 4] = NA_FLAG_OVERRIDE;
    f[icmp + 8..icmp + 24].copy_from_slice(&ip.octets()); // target address
    f[icmp + 24] = ND_OPT_TARGET_LL_ADDR;
    f[icmp + 25] = 1; // option length in units of 8 bytes
    f[icmp + 26..icmp + 32].copy_from_slice(&mac);
    let sum = icmpv6_checksum(ip, ALL_NODES, &f[icmp..]);
    f[icmp + 2..icmp + 4].copy_from_slice(&sum.to_be_bytes());
    f
}

/// The ICMPv6 checksum of `msg` (whose checksum field is zero) between `src` and `dst`:
/// one's complement of the one's complement sum of the pseudo-header and the message.
pub fn icmpv6_checksum(src: Ipv6Addr, dst: Ipv6Addr, msg: &[u8]) -> u16 {
    let mut sum: u32 = 0;
    sum = ones_sum(sum, &src.octets());
    sum = ones_sum(sum, &dst.octets());
    sum = ones_sum(sum, &(msg.len() as u32).to_be_bytes());
    sum = ones_sum(sum, &[0, 0, 0, IPPROTO_ICMPV6]);
    sum = ones_sum(sum, msg);
    !fold(sum)
}

fn ones_sum(mut sum: u32, bytes: &[u8]) -> u32 {
    let mut chunks = bytes.chunks_exact(2);
    for c in &mut chunks {
        sum = fold(sum + u32::from(u16::from_be_bytes([c[0], c[1]]))) as u32;
    }
    if let [last] = chunks.remainder() {
        sum = fold(sum + (u32::from(*last) << 8)) as u32;
    }
    sum
}

fn fold(mut sum: u32) -> u16 {
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    sum as u16
}

#[cfg(test)]
mod tests {
    use super::*;

    const MAC: Mac = [0x02, 0x74, 0x6c, 0x00, 0x00, 0x02];

    #[test]
    fn garp_matches_arping_u() {
        let f = garp_frame(MAC, Ipv4Addr::new(198, 18, 0, 100));
        #[rustfmt::skip]
        let want: [u8; 42] = [
            0xff, 0xff, 0xff, 0xff, 0xff, 0xff,  0x02, 0x74, 0x6c, 0x00, 0x00, 0x02,  0x08, 0x06,
            0x00, 0x01,  0x08, 0x00,  6, 4,  0x00, 0x01,
            0x02, 0x74, 0x6c, 0x00, 0x00, 0x02,  198, 18, 0, 100,
            0, 0, 0, 0, 0, 0,                    198, 18, 0, 100,
        ];
        assert_eq!(f, want);
    }

    #[test]
    fn garp_sender_equals_target() {
        let ip = Ipv4Addr::new(10, 1, 2, 3);
        let f = garp_frame([1, 2, 3, 4, 5, 6], ip);
        assert_eq!(f[28..32], f[38..42]);
        assert_eq!(f[6..12], f[22..28]);
    }

    #[test]
    fn na_layout() {
        let ip: Ipv6Addr = "fd00:7464::100".parse().unwrap();
        let f = na_frame(MAC, ip);
        assert_eq!(f[0..6], ALL_NODES_MAC);
        assert_eq!(f[6..12], MAC);
        assert_eq!(f[12..14], [0x86, 0xdd]);
        assert_eq!(f[14] >> 4, 6);
        assert_eq!(u16::from_be_bytes([f[18], f[19]]), 32);
        assert_eq!(f[20], 58);
        assert_eq!(f[21], 255);
        assert_eq!(f[22..38], ip.octets());
        assert_eq!(f[38..54], ALL_NODES.octets());
        assert_eq!(f[54], 136);
        assert_eq!(f[55], 0);
        assert_eq!(f[58..62], [0x20, 0, 0, 0], "override only, not solicited, not router");
        assert_eq!(f[62..78], ip.octets());
        assert_eq!(f[78..80], [2, 1]);
        assert_eq!(f[80..86], MAC);
    }

    #[test]
    fn na_checksum_verifies() {
        let ip: Ipv6Addr = "2001:db8::1".parse().unwrap();
        let f = na_frame(MAC, ip);
        // Summing the message with its checksum in place gives 0xffff, i.e. the complement is 0.
        assert_eq!(icmpv6_checksum(ip, ALL_NODES, &f[54..]), 0);
        // A flipped bit is detected.
        let mut g = f;
        g[70] ^= 0x10;
        assert_ne!(icmpv6_checksum(ip, ALL_NODES, &g[54..]), 0);
    }

    #[test]
    fn checksum_known_vector() {
        // RFC 1071 example: words 0001 f203 f4f5 f6f7 sum to ddf2 (one's complement sum).
        assert_eq!(fold(ones_sum(0, &[0x00, 0x01, 0xf2, 0x03, 0xf4, 0xf5, 0xf6, 0xf7])), 0xddf2);
        // Odd length: the last byte is the high byte of a word.
        assert_eq!(ones_sum(0, &[0x12, 0x34, 0x56]), 0x1234 + 0x5600);
    }
}
