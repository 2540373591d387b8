//! tandem's virtual IP layer.
//!
//! A mirror module's primary holds the module's virtual IP (VIP). This crate adds and removes the
//! address on an interface through rtnetlink ([`Vips::add`], [`Vips::remove`], [`Vips::present`]),
//! and tells the LAN that the address moved: a gratuitous ARP for IPv4, an unsolicited neighbour
//! advertisement for IPv6 ([`Vips::announce`], and the burst-and-repeats of [`announce_takeover`]).
//!
//! ```no_run
//! # async fn f() -> Result<(), tandem_network::NetError> {
//! use std::sync::Arc;
//! use tandem_network::{announce_takeover, VipSpec, Vips};
//! let vips = Arc::new(Vips::connect().await?);
//! let vip = VipSpec::new("198.18.0.100".parse().unwrap(), 24, "eth0");
//! vips.add(&vip).await?;
//! let _announcing = announce_takeover(vips.clone(), vip.clone());
//! // ... on release:
//! vips.remove(&vip).await?;
//! # Ok(()) }
//! ```
//!
//! Everything here acts on the network namespace the calling thread is in when [`Vips::connect`]
//! (netlink) or [`Vips::announce`] (packet socket) is called.

pub mod frame;
mod raw;

use futures_util::TryStreamExt;
use netlink_packet_route::address::{AddressAttribute, AddressFlags, AddressMessage};
use std::fmt;
use std::io;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

/// One virtual IP: an address with its prefix length, on an interface.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct VipSpec {
    pub address: IpAddr,
    pub prefix_len: u8,
    pub interface: String,
}

impl VipSpec {
    pub fn new(address: IpAddr, prefix_len: u8, interface: impl Into<String>) -> VipSpec {
        VipSpec { address, prefix_len, interface: interface.into() }
    }

    /// Checks what the kernel would reject less clearly: the prefix length for the family, an
    /// address that cannot be a host address (unspecified, multicast, broadcast, loopback), an
    /// interface name that cannot exist.
    pub fn validate(&self) -> Result<(), String> {
        let max = if self.address.is_ipv4() { 32 } else { 128 };
        if self.prefix_len > max {
            return Err(format!("prefix length {} is over {max}", self.prefix_len));
        }
        let bad = match self.address {
            IpAddr::V4(a) => a.is_unspecified() || a.is_multicast() || a.is_broadcast() || a.is_loopback(),
            IpAddr::V6(a) => a.is_unspecified() || a.is_multicast() || a.is_loopback(),
        };
        if bad {
            return Err(format!("{} is not a unicast host address", self.address));
        }
        let name = &self.interface;
        if name.is_empty()
            || name.len() >= libc::IFNAMSIZ
            || name == "."
            || name == ".."
            || name.bytes().any(|b| b == b'/' || b == 0 || b.is_ascii_whitespace() || b == b':')
        {
            return Err(format!("invalid interface name {name:?}"));
        }
        Ok(())
    }
}

/// `198.18.0.100/24 on eth0`.
impl fmt::Display for VipSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{} on {}", self.address, self.prefix_len, self.interface)
    }
}

/// What was being done when an error happened.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    Add,
    Remove,
    Check,
    Announce,
}

impl fmt::Display for Op {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Op::Add => "add",
            Op::Remove => "remove",
            Op::Check => "check",
            Op::Announce => "announce",
        })
    }
}

/// Errors of the VIP layer. Each names the operation, the VIP and the interface, then the cause,
/// e.g. `cannot add 198.18.0.100/24 on eth0: no such interface`.
#[derive(Debug, thiserror::Error)]
pub enum NetError {
    #[error("cannot open a netlink connection: {0}")]
    Connect(#[source] io::Error),
    #[error("cannot {op} {vip}: no such interface")]
    NoSuchInterface { op: Op, vip: VipSpec },
    #[error("cannot {op} {vip}: {reason}")]
    Invalid { op: Op, vip: VipSpec, reason: String },
    /// The kernel refused a netlink request (the OS error, e.g. "Operation not permitted").
    #[error("cannot {op} {vip}: {source}")]
    Netlink {
        op: Op,
        vip: VipSpec,
        #[source]
        source: io::Error,
    },
    /// The netlink exchange itself failed (connection gone, unexpected message).
    #[error("cannot {op} {vip}: netlink: {detail}")]
    Protocol { op: Op, vip: VipSpec, detail: String },
    /// A system call failed (`what` says which).
    #[error("cannot {op} {vip}: {what}: {source}")]
    Os {
        op: Op,
        vip: VipSpec,
        what: &'static str,
        #[source]
        source: io::Error,
    },
    #[error("cannot {op} {vip}: {what} is not supported")]
    Unsupported { op: Op, vip: VipSpec, what: String },
}

impl NetError {
    /// The VIP the error is about (None for [`NetError::Connect`]).
    pub fn vip(&self) -> Option<&VipSpec> {
        match self {
            NetError::Connect(_) => None,
            NetError::NoSuchInterface { vip, .. }
            | NetError::Invalid { vip, .. }
            | NetError::Netlink { vip, .. }
            | NetError::Protocol { vip, .. }
            | NetError::Os { vip, .. }
            | NetError::Unsupported { vip, .. } => Some(vip),
        }
    }
}

fn nl_error(op: Op, vip: &VipSpec, e: rtnetlink::Error) -> NetError {
    match e {
        rtnetlink::Error::NetlinkError(m) => NetError::Netlink { op, vip: vip.clone(), source: m.to_io() },
        other => NetError::Protocol { op, vip: vip.clone(), detail: other.to_string() },
    }
}

/// The errno of a netlink error, if it is one.
fn nl_errno(e: &rtnetlink::Error) -> Option<i32> {
    match e {
        rtnetlink::Error::NetlinkError(m) => Some(m.raw_code().abs()),
        _ => None,
    }
}

/// Adds, removes and announces virtual IPs. Cheap to share behind an `Arc`; every method can be
/// called concurrently.
#[derive(Clone)]
pub struct Vips {
    handle: rtnetlink::Handle,
}

impl fmt::Debug for Vips {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Vips").finish_non_exhaustive()
    }
}

impl Vips {
    /// Opens a netlink connection (spawns its task on the current tokio runtime). Must be called
    /// from inside a tokio runtime.
    pub async fn connect() -> Result<Vips, NetError> {
        let (conn, handle, _) = rtnetlink::new_connection().map_err(NetError::Connect)?;
        tokio::spawn(conn);
        Ok(Vips { handle })
    }

    /// The index of the VIP's interface.
    async fn index(&self, op: Op, vip: &VipSpec) -> Result<u32, NetError> {
        if let Err(reason) = vip.validate() {
            return Err(NetError::Invalid { op, vip: vip.clone(), reason });
        }
        let mut links = self.handle.link().get().match_name(vip.interface.clone()).execute();
        match links.try_next().await {
            Ok(Some(link)) => Ok(link.header.index),
            Ok(None) => Err(NetError::NoSuchInterface { op, vip: vip.clone() }),
            Err(e) if nl_errno(&e) == Some(libc::ENODEV) => Err(NetError::NoSuchInterface { op, vip: vip.clone() }),
            Err(e) => Err(nl_error(op, vip, e)),
        }
    }

    /// The kernel's entries for the VIP's address on its interface (any prefix length).
    async fn entries(&self, op: Op, vip: &VipSpec, index: u32) -> Result<Vec<AddressMessage>, NetError> {
        self.handle
            .address()
            .get()
            .set_link_index_filter(index)
            .set_address_filter(vip.address)
            .execute()
            .try_collect()
            .await
            .map_err(|e| nl_error(op, vip, e))
    }

    /// Adds the address to the interface; Ok if it is already there (the kernel's `EEXIST` to
    /// an exclusive `RTM_NEWADDR`). IPv6 VIPs are added with `nodad`: a VIP moves between nodes
    /// that would otherwise see each other's leftover as a duplicate, and must serve at once.
    pub async fn add(&self, vip: &VipSpec) -> Result<(), NetError> {
        let index = self.index(Op::Add, vip).await?;
        let mut req = self.handle.address().add(index, vip.address, vip.prefix_len);
        if vip.address.is_ipv6() {
            req.message_mut().attributes.push(AddressAttribute::Flags(AddressFlags::Nodad));
        }
        match req.execute().await {
            Ok(()) => {
                tracing::info!(vip = %vip, "virtual IP added");
                Ok(())
            }
            Err(e) if nl_errno(&e) == Some(libc::EEXIST) => {
                tracing::debug!(vip = %vip, "virtual IP already present");
                Ok(())
            }
            Err(e) => Err(nl_error(Op::Add, vip, e)),
        }
    }

    /// Removes the address from the interface, whatever its prefix length there (so a VIP left
    /// behind with an older prefix is cleaned too); Ok if it is absent.
    pub async fn remove(&self, vip: &VipSpec) -> Result<(), NetError> {
        let index = self.index(Op::Remove, vip).await?;
        let entries = self.entries(Op::Remove, vip, index).await?;
        if entries.is_empty() {
            tracing::debug!(vip = %vip, "virtual IP already absent");
        }
        for msg in entries {
            let prefix = msg.header.prefix_len;
            match self.handle.address().del(msg).execute().await {
                Ok(()) => tracing::info!(vip = %vip, prefix, "virtual IP removed"),
                // Removed by someone else meanwhile.
                Err(e) if nl_errno(&e) == Some(libc::EADDRNOTAVAIL) => {}
                Err(e) => return Err(nl_error(Op::Remove, vip, e)),
            }
        }
        Ok(())
    }

    /// Whether the address is on the interface (with any prefix length: what answers clients is
    /// the address). An unknown interface is an error, not `false`.
    pub async fn present(&self, vip: &VipSpec) -> Result<bool, NetError> {
        let index = self.index(Op::Check, vip).await?;
        Ok(!self.entries(Op::Check, vip, index).await?.is_empty())
    }

    /// Sends one gratuitous ARP (IPv4: ARP request with sender IP = target IP = the VIP,
    /// broadcast, like `arping -U`) or one unsolicited neighbour advertisement (IPv6, to
    /// `ff02::1`, Override flag set) from the interface's MAC. Does not check that the address
    /// is on the interface. Non-blocking in practice (one `sendto` on a packet socket).
    pub fn announce(&self, vip: &VipSpec) -> Result<(), NetError> {
        if let Err(reason) = vip.validate() {
            return Err(NetError::Invalid { op: Op::Announce, vip: vip.clone(), reason });
        }
        raw::announce(vip)
    }
}

/// When the packets of a takeover announcement leave, from the start of [`announce_takeover`]:
/// a burst of 3 packets 20 ms apart, then repeats at 0.5 s, 1 s, 2 s and 4 s.
pub const TAKEOVER_SCHEDULE: [Duration; 7] = [
    Duration::ZERO,
    Duration::from_millis(20),
    Duration::from_millis(40),
    Duration::from_millis(500),
    Duration::from_secs(1),
    Duration::from_secs(2),
    Duration::from_secs(4),
];

/// Takeover announcement: a burst (3 packets, 20 ms apart) then a few repeats (at 0.5 s, 1 s,
/// 2 s, 4 s), on a spawned tokio task; failures are logged with tracing, not returned.
///
/// Before each packet the task checks that the VIP is still on the interface and stops if it is
/// not (the module released it meanwhile: announcing it would pull its clients to a node that no
/// longer answers). The daemon may also `abort()` the handle when it releases the VIP.
pub fn announce_takeover(vips: Arc<Vips>, vip: VipSpec) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let start = tokio::time::Instant::now();
        let mut sent = 0usize;
        for at in TAKEOVER_SCHEDULE {
            tokio::time::sleep_until(start + at).await;
            match vips.present(&vip).await {
                Ok(true) => {}
                Ok(false) => {
                    tracing::info!(vip = %vip, sent, "virtual IP released: takeover announcement stopped");
                    return;
                }
                Err(e) => tracing::warn!("takeover announcement: {e}"),
            }
            match vips.announce(&vip) {
                Ok(()) => sent += 1,
                Err(e) => tracing::warn!("takeover announcement: {e}"),
            }
        }
        tracing::debug!(vip = %vip, sent, "takeover announcement done");
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(a: &str, p: u8, i: &str) -> VipSpec {
        VipSpec::new(a.parse().unwrap(), p, i)
    }

    #[test]
    fn display_and_messages() {
        let v = spec("198.18.0.100", 24, "eth0");
        assert_eq!(v.to_string(), "198.18.0.100/24 on eth0");
        let e = NetError::NoSuchInterface { op: Op::Add, vip: v.clone() };
        assert_eq!(e.to_string(), "cannot add 198.18.0.100/24 on eth0: no such interface");
        let e = NetError::Netlink { op: Op::Remove, vip: v.clone(), source: io::Error::from_raw_os_error(libc::EPERM) };
        assert!(e.to_string().starts_with("cannot remove 198.18.0.100/24 on eth0: Operation not permitted"));
        assert_eq!(e.vip(), Some(&v));
        let v6 = spec("fd00::100", 64, "eth1");
        assert_eq!(v6.to_string(), "fd00::100/64 on eth1");
    }

    #[test]
    fn validation() {
        assert!(spec("198.18.0.100", 24, "eth0").validate().is_ok());
        assert!(spec("198.18.0.100", 32, "eth0").validate().is_ok());
        assert!(spec("fd00::100", 128, "eth0").validate().is_ok());
        assert!(spec("198.18.0.100", 33, "eth0").validate().unwrap_err().contains("over 32"));
        assert!(spec("fd00::1", 129, "eth0").validate().unwrap_err().contains("over 128"));
        for a in ["0.0.0.0", "224.0.0.1", "255.255.255.255", "127.0.0.2", "::", "ff02::1", "::1"] {
            assert!(spec(a, 24, "eth0").validate().is_err(), "{a}");
        }
        for i in ["", "a/b", "eth 0", "eth0:1", "0123456789abcdef", "..", "."] {
            let err = spec("10.0.0.1", 8, i).validate().unwrap_err();
            assert!(err.contains("invalid interface name"), "{i}: {err}");
        }
        assert!(spec("10.0.0.1", 8, "0123456789abcde").validate().is_ok());
    }

    #[test]
    fn schedule_is_burst_then_backoff() {
        let ms: Vec<u128> = TAKEOVER_SCHEDULE.iter().map(|d| d.as_millis()).collect();
        assert_eq!(ms, [0, 20, 40, 500, 1000, 2000, 4000]);
        assert!(TAKEOVER_SCHEDULE.windows(2).all(|w| w[0] < w[1]));
    }

    #[tokio::test]
    async fn invalid_spec_rejected_before_netlink() {
        let vips = Vips::connect().await.unwrap();
        let v = spec("198.18.0.100", 40, "eth0");
        let e = vips.add(&v).await.unwrap_err();
        assert_eq!(e.to_string(), "cannot add 198.18.0.100/40 on eth0: prefix length 40 is over 32");
        let e = vips.announce(&spec("224.0.0.1", 24, "eth0")).unwrap_err();
        assert!(matches!(e, NetError::Invalid { op: Op::Announce, .. }), "{e}");
    }
}
