//! The authenticated, encrypted channel that carries a replication stream over TCP.
//!
//! Noise `NNpsk0_25519_AESGCM_BLAKE2s` (the `snow` crate, `ring` for the cipher), keyed by the
//! cluster key:
//!
//! - the pre-shared key is `blake3::derive_key(PSK_CONTEXT, cluster_key)`, so it is used for
//!   nothing else (the heartbeat MAC key is derived with another context);
//! - the handshake is `-> psk, e` then `<- e, ee`: both ephemeral Diffie-Hellman keys and the PSK
//!   are mixed into the session keys, so only a holder of the cluster key can complete it, and a
//!   recorded session cannot be decrypted later even if the cluster key leaks (forward secrecy);
//! - every record is AES-256-GCM with an implicit nonce counting records in each direction,
//!   so a replayed, reordered, dropped, truncated or altered record fails authentication;
//! - the responder has proof that the initiator holds the key only when the first transport record
//!   (the initiator's `Hello`) decrypts, because message 1 alone could be a replay: the stream
//!   layer therefore trusts nothing before that record.
//!
//! Why not TLS 1.3: both nodes share one symmetric key and no certificates; TLS-PSK (external
//! PSK, `psk_dhe_ke`) gives the same guarantees but rustls does not support external PSKs, and a
//! certificate authority would be a new secret to manage. Noise with a PSK is small, has no
//! negotiation to downgrade, and is the pattern WireGuard uses.
//!
//! Why AES-GCM rather than ChaChaPoly: equally strong, and with AES-NI twice the channel
//! throughput on the lab machine (1 GiB in 1 MiB frames on loopback: about 620 MiB/s against
//! 300 MiB/s, both with `ring`), which matters because the primary encrypts every replicated byte
//! while the application waits.
//!
//! On the TCP stream each Noise message is preceded by its length (big-endian u16); a Noise
//! message is at most 65535 bytes, so the byte stream of frames is cut into records of at most
//! `MAX_PLAINTEXT` bytes. Any failure (bad length, failed decryption, end of stream inside a
//! record) is an error after which the channel yields nothing more and the socket is shut down.

use std::io::{self, BufReader, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream, ToSocketAddrs};
use std::sync::Arc;
use std::time::Duration;

use snow::StatelessTransportState;

use crate::frame::{self, Frame, FrameError};

/// Noise protocol name: see the module documentation.
pub const NOISE_PARAMS: &str = "Noise_NNpsk0_25519_AESGCM_BLAKE2s";
/// blake3 key-derivation context of the replication PSK.
pub const PSK_CONTEXT: &str = "tandem 2026-11 replication PSK v1";
/// Bound into the handshake hash: peers speaking another channel version fail the handshake.
const PROLOGUE: &[u8] = b"tandem replication channel v1";
/// Largest Noise message.
const MAX_MESSAGE: usize = 65535;
/// ChaCha20-Poly1305 tag.
const TAG_LEN: usize = 16;
/// Largest plaintext in one record.
pub const MAX_PLAINTEXT: usize = MAX_MESSAGE - TAG_LEN;
/// Shortest cluster key accepted.
pub const MIN_KEY_LEN: usize = 32;
/// Handshake deadline (each read and write), so a silent peer does not hold a thread forever.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug, thiserror::Error)]
pub enum ChannelError {
    #[error("cluster key is {0} bytes, at least {MIN_KEY_LEN} are required")]
    ShortKey(usize),
    #[error("connect to {addr}: {source}")]
    Connect { addr: String, source: io::Error },
    #[error("handshake with {peer} failed (wrong cluster key, or not a tandem replication peer): {detail}")]
    Handshake { peer: SocketAddr, detail: String },
    #[error("i/o with {peer}: {source}")]
    Io { peer: SocketAddr, source: io::Error },
}

/// Derives the Noise PSK from the cluster key.
fn psk(cluster_key: &[u8]) -> Result<[u8; 32], ChannelError> {
    if cluster_key.len() < MIN_KEY_LEN {
        return Err(ChannelError::ShortKey(cluster_key.len()));
    }
    Ok(blake3::derive_key(PSK_CONTEXT, cluster_key))
}

/// An established channel; `split` it to read and write from two threads.
pub struct Channel {
    reader: ChannelReader,
    writer: ChannelWriter,
}

impl Channel {
    /// Connects to `addr` and runs the handshake as initiator (the primary's side).
    pub fn connect(addr: impl ToSocketAddrs + std::fmt::Debug, cluster_key: &[u8]) -> Result<Channel, ChannelError> {
        let psk = psk(cluster_key)?;
        let addr_s = format!("{addr:?}");
        let mut last = None;
        let addrs = addr.to_socket_addrs().map_err(|source| ChannelError::Connect { addr: addr_s.clone(), source })?;
        for a in addrs {
            match TcpStream::connect_timeout(&a, HANDSHAKE_TIMEOUT) {
                Ok(s) => return Channel::handshake(s, &psk, true),
                Err(e) => last = Some(e),
            }
        }
        let source = last.unwrap_or_else(|| io::Error::new(io::ErrorKind::NotFound, "no address"));
        Err(ChannelError::Connect { addr: addr_s, source })
    }

    /// Runs the handshake as responder on an accepted connection (the secondary's side).
    pub fn accept(stream: TcpStream, cluster_key: &[u8]) -> Result<Channel, ChannelError> {
        let psk = psk(cluster_key)?;
        Channel::handshake(stream, &psk, false)
    }

    fn handshake(mut stream: TcpStream, psk: &[u8; 32], initiator: bool) -> Result<Channel, ChannelError> {
        let peer = stream
            .peer_addr()
            .map_err(|source| ChannelError::Io { peer: SocketAddr::from(([0, 0, 0, 0], 0)), source })?;
        let io_err = |source| ChannelError::Io { peer, source };
        let hs_err = |detail: String| ChannelError::Handshake { peer, detail };
        // Small records (acks, single writes) must not wait for Nagle.
        stream.set_nodelay(true).map_err(io_err)?;
        stream.set_read_timeout(Some(HANDSHAKE_TIMEOUT)).map_err(io_err)?;
        stream.set_write_timeout(Some(HANDSHAKE_TIMEOUT)).map_err(io_err)?;
        let params = NOISE_PARAMS.parse().expect("valid noise parameters");
        let builder = snow::Builder::new(params)
            .psk(0, psk)
            .and_then(|b| b.prologue(PROLOGUE))
            .map_err(|e| hs_err(e.to_string()))?;
        let mut hs = if initiator { builder.build_initiator() } else { builder.build_responder() }
            .map_err(|e| hs_err(e.to_string()))?;
        let mut msg = vec![0u8; MAX_MESSAGE];
        let mut payload = vec![0u8; MAX_MESSAGE];
        while !hs.is_handshake_finished() {
            if hs.is_my_turn() {
                let n = hs.write_message(&[], &mut msg).map_err(|e| hs_err(e.to_string()))?;
                write_record(&mut stream, &msg[..n]).map_err(io_err)?;
            } else {
                let n = match read_record(&mut stream, &mut msg) {
                    Ok(Some(n)) => n,
                    Ok(None) => return Err(hs_err("connection closed during the handshake".into())),
                    Err(e) => return Err(hs_err(e.to_string())),
                };
                hs.read_message(&msg[..n], &mut payload).map_err(|e| hs_err(format!("{e:?}")))?;
            }
        }
        let transport = Arc::new(hs.into_stateless_transport_mode().map_err(|e| hs_err(e.to_string()))?);
        stream.set_read_timeout(None).map_err(io_err)?;
        stream.set_write_timeout(None).map_err(io_err)?;
        let wstream = stream.try_clone().map_err(io_err)?;
        Ok(Channel {
            reader: ChannelReader {
                // Buffered: a record's 2-byte length and its body in one system call.
                stream: BufReader::with_capacity(4 * MAX_MESSAGE, stream),
                transport: transport.clone(),
                nonce: 0,
                record: vec![0u8; MAX_MESSAGE],
                plain: vec![0u8; MAX_MESSAGE],
                pos: 0,
                len: 0,
                failed: false,
                peer,
                frame_buf: Vec::new(),
            },
            writer: ChannelWriter {
                stream: wstream,
                transport,
                nonce: 0,
                plain: Vec::with_capacity(MAX_PLAINTEXT),
                record: vec![0u8; MAX_MESSAGE + 2],
                failed: false,
                peer,
            },
        })
    }

    pub fn peer(&self) -> SocketAddr {
        self.reader.peer
    }

    /// The two halves; each has its own nonce counter, so they can move to different threads.
    pub fn split(self) -> (ChannelReader, ChannelWriter) {
        (self.reader, self.writer)
    }
}

/// Reads one length-prefixed record into `buf`; `Ok(None)` on a clean end of stream between
/// records.
fn read_record(stream: &mut impl Read, buf: &mut [u8]) -> io::Result<Option<usize>> {
    let mut len = [0u8; 2];
    let mut got = 0;
    while got < 2 {
        match stream.read(&mut len[got..]) {
            Ok(0) if got == 0 => return Ok(None),
            Ok(0) => return Err(io::ErrorKind::UnexpectedEof.into()),
            Ok(n) => got += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    let n = u16::from_be_bytes(len) as usize;
    if n < TAG_LEN {
        return Err(io::Error::new(io::ErrorKind::InvalidData, format!("record of {n} bytes is shorter than its tag")));
    }
    stream.read_exact(&mut buf[..n])?;
    Ok(Some(n))
}

fn write_record(stream: &mut TcpStream, msg: &[u8]) -> io::Result<()> {
    let mut rec = Vec::with_capacity(msg.len() + 2);
    rec.extend_from_slice(&(msg.len() as u16).to_be_bytes());
    rec.extend_from_slice(msg);
    stream.write_all(&rec)
}

/// The receiving half: a byte stream of authenticated plaintext (`io::Read`), and frames on it.
pub struct ChannelReader {
    stream: BufReader<TcpStream>,
    transport: Arc<StatelessTransportState>,
    nonce: u64,
    record: Vec<u8>,
    plain: Vec<u8>,
    pos: usize,
    len: usize,
    /// Set by the first error: a channel that failed never yields data again.
    failed: bool,
    peer: SocketAddr,
    frame_buf: Vec<u8>,
}

impl ChannelReader {
    pub fn peer(&self) -> SocketAddr {
        self.peer
    }

    /// A handle that can shut the connection down from another thread (to unblock a read).
    pub fn shutdown_handle(&self) -> io::Result<TcpStream> {
        self.stream.get_ref().try_clone()
    }

    /// Reads the next frame; `Ok(None)` when the peer closed cleanly between frames. Any error
    /// (network, authentication, malformed frame) shuts the connection down.
    pub fn read_frame(&mut self) -> Result<Option<Frame>, FrameError> {
        let mut buf = std::mem::take(&mut self.frame_buf);
        let r = frame::read_frame(self, &mut buf);
        // Keep a moderate buffer for the next frame; drop a huge one.
        if buf.capacity() <= 1 << 20 {
            self.frame_buf = buf;
        }
        if r.is_err() {
            self.fail();
        }
        r
    }

    fn fail(&mut self) {
        self.failed = true;
        let _ = self.stream.get_ref().shutdown(Shutdown::Both);
    }

    /// Decrypts the next record into `plain`. `Ok(false)` on a clean end of stream.
    fn fill(&mut self) -> io::Result<bool> {
        let n = match read_record(&mut self.stream, &mut self.record)? {
            Some(n) => n,
            None => return Ok(false),
        };
        let len = self.transport.read_message(self.nonce, &self.record[..n], &mut self.plain).map_err(|e| {
            io::Error::new(io::ErrorKind::InvalidData, format!("record {} failed authentication: {e:?}", self.nonce))
        })?;
        self.nonce += 1;
        self.pos = 0;
        self.len = len;
        Ok(true)
    }
}

impl Read for ChannelReader {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        if self.failed {
            return Err(io::Error::new(io::ErrorKind::BrokenPipe, "replication channel failed earlier"));
        }
        while self.pos == self.len {
            match self.fill() {
                Ok(true) => {}
                Ok(false) => return Ok(0),
                Err(e) => {
                    self.fail();
                    return Err(e);
                }
            }
        }
        let n = out.len().min(self.len - self.pos);
        out[..n].copy_from_slice(&self.plain[self.pos..self.pos + n]);
        self.pos += n;
        Ok(n)
    }
}

/// The sending half: buffers plaintext (`io::Write`) and sends it as records on `flush`, or as
/// soon as a record is full.
pub struct ChannelWriter {
    stream: TcpStream,
    transport: Arc<StatelessTransportState>,
    nonce: u64,
    plain: Vec<u8>,
    record: Vec<u8>,
    failed: bool,
    peer: SocketAddr,
}

impl ChannelWriter {
    pub fn peer(&self) -> SocketAddr {
        self.peer
    }

    /// A handle that can shut the connection down from another thread (to unblock a write).
    pub fn shutdown_handle(&self) -> io::Result<TcpStream> {
        self.stream.try_clone()
    }

    /// Encodes and buffers one frame; call `flush` to send what is buffered.
    pub fn write_frame(&mut self, f: &Frame) -> Result<(), FrameError> {
        let bytes = frame::encode(f)?;
        self.write_all(&bytes)?;
        Ok(())
    }

    /// Writes one frame and flushes.
    pub fn send_frame(&mut self, f: &Frame) -> Result<(), FrameError> {
        self.write_frame(f)?;
        self.flush()?;
        Ok(())
    }

    /// Shuts down the sending direction: the peer reads a clean end of stream.
    pub fn finish(&mut self) -> io::Result<()> {
        self.flush()?;
        self.stream.shutdown(Shutdown::Write)
    }

    fn seal(&mut self) -> io::Result<()> {
        if self.plain.is_empty() {
            return Ok(());
        }
        let n = self
            .transport
            .write_message(self.nonce, &self.plain, &mut self.record[2..])
            .map_err(|e| io::Error::other(format!("encrypt: {e:?}")))?;
        self.nonce += 1;
        self.record[..2].copy_from_slice(&(n as u16).to_be_bytes());
        self.plain.clear();
        if let Err(e) = self.stream.write_all(&self.record[..2 + n]) {
            self.failed = true;
            let _ = self.stream.shutdown(Shutdown::Both);
            return Err(e);
        }
        Ok(())
    }
}

impl Write for ChannelWriter {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        if self.failed {
            return Err(io::Error::new(io::ErrorKind::BrokenPipe, "replication channel failed earlier"));
        }
        let n = data.len().min(MAX_PLAINTEXT - self.plain.len());
        self.plain.extend_from_slice(&data[..n]);
        if self.plain.len() == MAX_PLAINTEXT {
            self.seal()?;
        }
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        if self.failed {
            return Err(io::Error::new(io::ErrorKind::BrokenPipe, "replication channel failed earlier"));
        }
        self.seal()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::frame::Hello;
    use std::net::TcpListener;
    use std::thread;
    use std::time::Instant;

    const KEY: &[u8] = b"0123456789abcdef0123456789abcdef";

    fn pair(
        server_key: &'static [u8],
        client_key: &'static [u8],
    ) -> (Result<Channel, ChannelError>, Result<Channel, ChannelError>) {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        let t = thread::spawn(move || Channel::accept(l.accept().unwrap().0, server_key));
        let c = Channel::connect(addr, client_key);
        (t.join().unwrap(), c)
    }

    #[test]
    fn frames_flow_both_ways() {
        let (s, c) = pair(KEY, KEY);
        let (mut sr, mut sw) = s.unwrap().split();
        let (mut cr, mut cw) = c.unwrap().split();
        let hello =
            Frame::Hello(Hello { version: 1, cluster: "c".into(), module_id: 1, from: "n1".into(), join_seq: 1 });
        cw.send_frame(&hello).unwrap();
        assert_eq!(sr.read_frame().unwrap(), Some(hello));
        // A frame larger than a record is cut into several records.
        let big = Frame::Error { message: "x".repeat(300_000) };
        sw.send_frame(&big).unwrap();
        assert_eq!(cr.read_frame().unwrap(), Some(big));
        cw.finish().unwrap();
        assert_eq!(sr.read_frame().unwrap(), None);
    }

    #[test]
    fn wrong_key_fails_handshake() {
        let (s, c) = pair(KEY, b"0123456789abcdef0123456789abcdeX");
        // The responder cannot tell at message 1; the initiator fails at message 2 and the
        // responder then sees the connection close. Neither side gets a channel that works.
        assert!(matches!(c, Err(ChannelError::Handshake { .. })), "{:?}", c.as_ref().err());
        if let Ok(s) = s {
            let (mut r, _) = s.split();
            assert!(r.read_frame().is_err() || r.read_frame().unwrap().is_none());
        }
    }

    #[test]
    fn short_key_refused() {
        assert!(matches!(Channel::connect("127.0.0.1:1", b"short"), Err(ChannelError::ShortKey(5))));
    }

    #[test]
    fn tampered_record_closes() {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        let t = thread::spawn(move || {
            let (mut r, _w) = Channel::accept(l.accept().unwrap().0, KEY).unwrap().split();
            let first = r.read_frame();
            let second = r.read_frame();
            (first, second)
        });
        let (_r, mut w) = Channel::connect(addr, KEY).unwrap().split();
        // Build a valid record by hand, flip one ciphertext bit, send it raw.
        w.write_all(&frame::encode(&Frame::Flush).unwrap()).unwrap();
        let n = w.transport.write_message(w.nonce, &w.plain, &mut w.record[2..]).unwrap();
        w.record[..2].copy_from_slice(&(n as u16).to_be_bytes());
        w.record[5] ^= 1;
        let rec = w.record[..2 + n].to_vec();
        w.stream.write_all(&rec).unwrap();
        let (first, second) = t.join().unwrap();
        assert!(matches!(first, Err(FrameError::Io(ref e)) if e.kind() == io::ErrorKind::InvalidData), "{first:?}");
        assert!(second.is_err(), "a failed channel never yields data");
    }

    #[test]
    fn truncated_record_is_an_error() {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        let t = thread::spawn(move || {
            let (mut r, _w) = Channel::accept(l.accept().unwrap().0, KEY).unwrap().split();
            r.read_frame()
        });
        let (_r, mut w) = Channel::connect(addr, KEY).unwrap().split();
        w.stream.write_all(&[0, 100, 1, 2, 3]).unwrap();
        w.stream.shutdown(Shutdown::Write).unwrap();
        let r = t.join().unwrap();
        assert!(matches!(r, Err(FrameError::Io(ref e)) if e.kind() == io::ErrorKind::UnexpectedEof), "{r:?}");
    }

    /// Throughput of the channel alone on loopback: `cargo test --release -p tandem-replication
    /// channel_throughput -- --ignored --nocapture`. 1 GiB in 1 MiB frames.
    #[test]
    #[ignore = "a throughput measurement, not a check: run with --ignored --nocapture"]
    fn channel_throughput() {
        let (s, c) = pair(KEY, KEY);
        let (mut sr, _sw) = s.unwrap().split();
        let (_cr, mut cw) = c.unwrap().split();
        const N: usize = 1024;
        let t = thread::spawn(move || {
            let mut bytes = 0usize;
            while let Some(f) = sr.read_frame().unwrap() {
                if let Frame::Error { message } = f {
                    bytes += message.len();
                }
            }
            bytes
        });
        let payload = Frame::Error { message: "z".repeat(1 << 20) };
        let start = Instant::now();
        for _ in 0..N {
            cw.send_frame(&payload).unwrap();
        }
        cw.finish().unwrap();
        let got = t.join().unwrap();
        let secs = start.elapsed().as_secs_f64();
        assert_eq!(got, N << 20);
        println!("channel: {} MiB in {secs:.2} s = {:.0} MiB/s", N, N as f64 / secs);
    }
}
