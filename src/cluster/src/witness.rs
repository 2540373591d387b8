//! The splitbrain checker: probes the module's witnesses (ping or a TCP connection) every
//! interval and reports each verdict to the module's driver, which feeds it to the machine.
//!
//! Every verdict is reported, not only changes: after losing its peer the machine trusts only a
//! verdict newer than the loss (docs/algorithm.md, "Split brain"). A verdict is "reachable" when
//! at least one witness answered within the checker's timeout.

use crate::driver::Msg;
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;
use tandem_config::Witness;
use tokio::sync::mpsc;

/// One probe of one witness, bounded by `timeout`.
pub async fn probe(w: &Witness, timeout: Duration) -> bool {
    match w {
        Witness::Tcp(addr) => probe_tcp(*addr, timeout).await,
        Witness::Ping(ip) => probe_ping(*ip, timeout).await,
    }
}

async fn probe_tcp(addr: SocketAddr, timeout: Duration) -> bool {
    matches!(tokio::time::timeout(timeout, tokio::net::TcpStream::connect(addr)).await, Ok(Ok(_)))
}

/// One ICMP echo through `ping` (iputils): it holds the raw-socket capability, so the daemon
/// needs no ICMP code of its own.
async fn probe_ping(ip: IpAddr, timeout: Duration) -> bool {
    let wait = format!("{:.3}", timeout.as_secs_f64().max(0.001));
    let mut cmd = tokio::process::Command::new("ping");
    cmd.args(["-n", "-q", "-c", "1", "-W", &wait])
        .arg(ip.to_string())
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true);
    // ping's own -W bounds the wait for the reply; the outer bound covers a stuck resolver or fork.
    match tokio::time::timeout(timeout + Duration::from_millis(500), cmd.status()).await {
        Ok(Ok(status)) => status.success(),
        _ => false,
    }
}

/// Whether any witness answers (all probed at once; the first answer ends the round).
pub async fn any_reachable(witnesses: &[Witness], timeout: Duration) -> bool {
    let mut set = tokio::task::JoinSet::new();
    for &w in witnesses {
        set.spawn(async move { probe(&w, timeout).await });
    }
    while let Some(r) = set.join_next().await {
        if r.unwrap_or(false) {
            set.abort_all();
            return true;
        }
    }
    false
}

/// Probes forever (until the driver is gone), one round every `interval`.
pub async fn run(witnesses: Vec<Witness>, interval: Duration, timeout: Duration, tx: mpsc::Sender<Msg>) {
    let mut every = tokio::time::interval(interval);
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        every.tick().await;
        let reachable = any_reachable(&witnesses, timeout).await;
        if tx.send(Msg::Witness { reachable }).await.is_err() {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn tcp_witness_reachable_only_while_it_listens() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let w = [Witness::Tcp(addr)];
        assert!(any_reachable(&w, Duration::from_secs(1)).await);
        drop(listener);
        assert!(!any_reachable(&w, Duration::from_secs(1)).await);
    }

    #[tokio::test]
    async fn one_answering_witness_is_enough_and_a_silent_one_is_bounded() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        // 192.0.2.1 (TEST-NET-1) is never routed here: the connect hangs or fails, bounded.
        let silent = Witness::Tcp("192.0.2.1:9".parse().unwrap());
        let started = std::time::Instant::now();
        assert!(!any_reachable(&[silent], Duration::from_millis(300)).await);
        assert!(started.elapsed() < Duration::from_secs(2));
        assert!(any_reachable(&[silent, Witness::Tcp(listener.local_addr().unwrap())], Duration::from_secs(1)).await);
    }

    #[tokio::test]
    async fn ping_of_loopback_answers() {
        if std::process::Command::new("ping").arg("-V").output().is_err() {
            panic!("ping (iputils-ping) is required: scripts/setup.sh installs it");
        }
        assert!(any_reachable(&[Witness::Ping("127.0.0.1".parse().unwrap())], Duration::from_secs(1)).await);
    }
}
