//! Sending one announcement frame on a packet socket (`AF_PACKET`, `SOCK_RAW`).

use crate::frame::{self, Mac};
use crate::{NetError, Op, VipSpec};
use std::ffi::CString;
use std::io;
use std::net::IpAddr;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

fn os(vip: &VipSpec, what: &'static str, source: io::Error) -> NetError {
    NetError::Os { op: Op::Announce, vip: vip.clone(), what, source }
}

/// Builds the frame for the VIP and sends it out of its interface.
pub(crate) fn announce(vip: &VipSpec) -> Result<(), NetError> {
    let name = CString::new(vip.interface.as_bytes()).map_err(|_| NetError::Invalid {
        op: Op::Announce,
        vip: vip.clone(),
        reason: format!("invalid interface name {:?}", vip.interface),
    })?;
    // SAFETY: a valid NUL-terminated string.
    let index = unsafe { libc::if_nametoindex(name.as_ptr()) };
    if index == 0 {
        let err = io::Error::last_os_error();
        return Err(match err.raw_os_error() {
            Some(libc::ENODEV) | Some(libc::ENXIO) => NetError::NoSuchInterface { op: Op::Announce, vip: vip.clone() },
            _ => os(vip, "looking up the interface", err),
        });
    }
    // Protocol 0: the socket receives nothing, it only sends.
    // SAFETY: plain system call; the result is checked before use.
    let fd = unsafe { libc::socket(libc::AF_PACKET, libc::SOCK_RAW | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(os(vip, "opening a packet socket", io::Error::last_os_error()));
    }
    // SAFETY: fd is a fresh descriptor that nothing else owns.
    let sock = unsafe { OwnedFd::from_raw_fd(fd) };
    let mac = hw_addr(&sock, &name).map_err(|e| match e {
        HwError::Os(err) => os(vip, "reading the interface's MAC address", err),
        HwError::NotEthernet(family) => NetError::Unsupported {
            op: Op::Announce,
            vip: vip.clone(),
            what: format!("an interface whose link type is not Ethernet (ARPHRD {family})"),
        },
    })?;
    let (bytes, dst, proto): (Vec<u8>, Mac, u16) = match vip.address {
        IpAddr::V4(ip) => (frame::garp_frame(mac, ip).to_vec(), frame::BROADCAST, frame::ETH_P_ARP),
        IpAddr::V6(ip) => (frame::na_frame(mac, ip).to_vec(), frame::ALL_NODES_MAC, frame::ETH_P_IPV6),
    };
    // SAFETY: sockaddr_ll is plain data; all-zero is a valid value.
    let mut addr: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
    addr.sll_family = libc::AF_PACKET as u16;
    addr.sll_protocol = proto.to_be();
    addr.sll_ifindex = index as i32;
    addr.sll_halen = 6;
    addr.sll_addr[..6].copy_from_slice(&dst);
    // SAFETY: the buffer and the address outlive the call; lengths are theirs.
    let n = unsafe {
        libc::sendto(
            sock.as_raw_fd(),
            bytes.as_ptr().cast(),
            bytes.len(),
            0,
            (&addr as *const libc::sockaddr_ll).cast(),
            std::mem::size_of::<libc::sockaddr_ll>() as libc::socklen_t,
        )
    };
    if n < 0 {
        return Err(os(vip, "sending", io::Error::last_os_error()));
    }
    if n as usize != bytes.len() {
        return Err(os(vip, "sending", io::Error::other(format!("short send: {n} of {} bytes", bytes.len()))));
    }
    tracing::trace!(vip = %vip, mac = ?mac, "announcement sent");
    Ok(())
}

enum HwError {
    Os(io::Error),
    NotEthernet(u16),
}

/// The interface's MAC (`SIOCGIFHWADDR`), which also tells its link type.
fn hw_addr(sock: &OwnedFd, name: &CString) -> Result<Mac, HwError> {
    // SAFETY: ifreq is plain data; all-zero is a valid value.
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    let bytes = name.as_bytes();
    if bytes.len() >= req.ifr_name.len() {
        return Err(HwError::Os(io::Error::from_raw_os_error(libc::ENAMETOOLONG)));
    }
    for (d, s) in req.ifr_name.iter_mut().zip(bytes) {
        *d = *s as libc::c_char;
    }
    // SAFETY: SIOCGIFHWADDR reads the name and writes ifr_hwaddr inside the struct we own.
    let r = unsafe { libc::ioctl(sock.as_raw_fd(), libc::SIOCGIFHWADDR, &mut req) };
    if r < 0 {
        return Err(HwError::Os(io::Error::last_os_error()));
    }
    // SAFETY: the kernel filled the hwaddr member of the union.
    let hw = unsafe { req.ifr_ifru.ifru_hwaddr };
    if hw.sa_family != libc::ARPHRD_ETHER {
        return Err(HwError::NotEthernet(hw.sa_family));
    }
    let mut mac = [0u8; 6];
    for (d, s) in mac.iter_mut().zip(hw.sa_data.iter()) {
        *d = *s as u8;
    }
    Ok(mac)
}
