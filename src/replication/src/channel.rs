//! The authenticated, encrypted channel that carries a replication stream over TCP.
//!
//! A Noise `NNpsk0_25519_AESGCM_BLAKE2s` handshake (the `snow` crate), keyed by the cluster key:
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
//! throughput on the lab machine (both with `ring`), which matters because the primary encrypts
//! every replicated byte while the application waits.
//!
//! Why transport records are sealed here rather than by `snow`: a Noise transport message holds
//! at most 65535 bytes and `snow` copies each one into and out of its own buffers, which made
//! copying (not AES) the main CPU cost of a replicated 1 MiB write. After the handshake, the two
//! keys of the Noise `Split()` (`dangerously_get_raw_split`: the initiator sends with the first)
//! seal records with `ring`'s AES-256-GCM, exactly as a Noise `CipherState` would (same keys,
//! nonce = 32 zero bits then the record counter, big-endian), but in place and up to
//! `MAX_RECORD_PLAINTEXT` bytes:
//!
//! ```text
//! offset size
//! 0      4    length N of what follows, big-endian u32, TAG_LEN <= N <= MAX_RECORD_PLAINTEXT + TAG_LEN
//! 4      N    ciphertext (N - 16 bytes) then the 16-byte tag; the 4 length bytes are the AAD
//! ```
//!
//! The writer encodes frames straight into the buffer it seals; the reader reads records into one
//! buffer and opens each in place, shifting its plaintext down to follow the previous one's, so a
//! frame spanning records is contiguous and is decoded where it lies. The length is checked
//! before any allocation. A nonce is never reused (one key and counter per direction; the channel
//! ends rather than let the counter wrap). The channel version in the prologue changed with this
//! record format, so a peer using the old one fails the handshake instead of misreading records.
//!
//! Handshake messages are preceded by their length (big-endian u16). Any failure (bad length,
//! failed decryption, end of stream inside a record) is an error after which the channel yields
//! nothing more and the socket is shut down.

use std::io::{self, IoSlice, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream, ToSocketAddrs};
use std::time::Duration;

use ring::aead::{Aad, LessSafeKey, Nonce, UnboundKey, AES_256_GCM};

use crate::frame::{self, Frame, FrameError, MAX_FRAME_LEN};
use crate::op::Op;

/// Noise protocol name: see the module documentation.
pub const NOISE_PARAMS: &str = "Noise_NNpsk0_25519_AESGCM_BLAKE2s";
/// blake3 key-derivation context of the replication PSK.
pub const PSK_CONTEXT: &str = "tandem 2026-11 replication PSK v1";
/// Bound into the handshake hash: peers speaking another channel version (v1: records sealed by
/// `snow`, u16 lengths) fail the handshake.
const PROLOGUE: &[u8] = b"tandem replication channel v2";
/// Largest Noise handshake message.
const MAX_HANDSHAKE_MESSAGE: usize = 65535;
/// AES-GCM tag.
const TAG_LEN: usize = 16;
/// Record length prefix.
const HEADER_LEN: usize = 4;
/// Largest plaintext in one record: what a reader accepts (checked before allocating).
pub const MAX_RECORD_PLAINTEXT: usize = 1 << 20;
/// Plaintext per record the writer aims at: small enough that the reader opens one record while
/// the writer seals the next (a 1 MiB write crosses the wire as 4 records), large enough that the
/// per-record cost (a system call, the tag) is negligible.
const SEAL_CHUNK: usize = 256 << 10;
/// Receive buffer: a 1 MiB write frame and the next records fit without moving anything. Zeroed
/// memory that is never touched costs nothing.
const RECV_BUFFER: usize = 4 << 20;
/// Send buffer kept between flushes; a larger one (a manifest) is released after use.
const SEND_BUFFER_KEPT: usize = 8 << 20;
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
    #[error(
        "handshake with {peer} failed (wrong cluster key, or not a tandem replication peer of this version): {detail}"
    )]
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

/// One direction's AEAD key and record counter.
struct Cipher {
    key: LessSafeKey,
    counter: u64,
}

impl Cipher {
    fn new(key: &[u8; 32]) -> Cipher {
        Cipher { key: LessSafeKey::new(UnboundKey::new(&AES_256_GCM, key).expect("32-byte key")), counter: 0 }
    }

    /// The nonce of the next record (Noise's AESGCM nonce: 4 zero bytes, the counter big-endian).
    /// u64::MAX is reserved by Noise; reaching it ends the channel rather than reuse a nonce.
    fn next_nonce(&mut self) -> io::Result<Nonce> {
        if self.counter == u64::MAX {
            return Err(io::Error::other("record counter exhausted"));
        }
        let mut n = [0u8; 12];
        n[4..].copy_from_slice(&self.counter.to_be_bytes());
        self.counter += 1;
        Ok(Nonce::assume_unique_for_key(n))
    }
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
        let mut msg = vec![0u8; MAX_HANDSHAKE_MESSAGE];
        let mut payload = vec![0u8; MAX_HANDSHAKE_MESSAGE];
        while !hs.is_handshake_finished() {
            if hs.is_my_turn() {
                let n = hs.write_message(&[], &mut msg).map_err(|e| hs_err(e.to_string()))?;
                write_handshake_message(&mut stream, &msg[..n]).map_err(io_err)?;
            } else {
                let n = match read_handshake_message(&mut stream, &mut msg) {
                    Ok(Some(n)) => n,
                    Ok(None) => return Err(hs_err("connection closed during the handshake".into())),
                    Err(e) => return Err(hs_err(e.to_string())),
                };
                hs.read_message(&msg[..n], &mut payload).map_err(|e| hs_err(format!("{e:?}")))?;
            }
        }
        // Noise Split(): the first key protects initiator -> responder, the second the reverse.
        let (k1, k2) = hs.dangerously_get_raw_split();
        let (send, recv) =
            if initiator { (Cipher::new(&k1), Cipher::new(&k2)) } else { (Cipher::new(&k2), Cipher::new(&k1)) };
        stream.set_read_timeout(None).map_err(io_err)?;
        stream.set_write_timeout(None).map_err(io_err)?;
        let wstream = stream.try_clone().map_err(io_err)?;
        Ok(Channel {
            reader: ChannelReader {
                stream,
                cipher: recv,
                buf: Vec::new(),
                start: 0,
                plain: 0,
                raw: 0,
                end: 0,
                failed: false,
                peer,
            },
            writer: ChannelWriter {
                stream: wstream,
                cipher: send,
                plain: Vec::new(),
                spliced: Vec::new(),
                failed: false,
                peer,
            },
        })
    }

    pub fn peer(&self) -> SocketAddr {
        self.reader.peer
    }

    /// The two halves; each has its own key and counter, so they can move to different threads.
    pub fn split(self) -> (ChannelReader, ChannelWriter) {
        (self.reader, self.writer)
    }
}

/// Reads one length-prefixed handshake message into `buf`; `Ok(None)` on a clean end of stream.
fn read_handshake_message(stream: &mut impl Read, buf: &mut [u8]) -> io::Result<Option<usize>> {
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
    stream.read_exact(&mut buf[..n])?;
    Ok(Some(n))
}

fn write_handshake_message(stream: &mut TcpStream, msg: &[u8]) -> io::Result<()> {
    let mut rec = Vec::with_capacity(msg.len() + 2);
    rec.extend_from_slice(&(msg.len() as u16).to_be_bytes());
    rec.extend_from_slice(msg);
    stream.write_all(&rec)
}

fn failed_earlier() -> io::Error {
    io::Error::new(io::ErrorKind::BrokenPipe, "replication channel failed earlier")
}

/// The receiving half: authenticated frames.
///
/// One buffer: `buf[start..plain]` is opened plaintext not yet consumed as frames, `buf[raw..end]`
/// bytes read from the socket and not yet opened (`plain <= raw`). Each record is opened in place
/// and its plaintext shifted down to `plain` in the same pass, so frames are contiguous; only
/// authenticated plaintext is ever decoded.
pub struct ChannelReader {
    stream: TcpStream,
    cipher: Cipher,
    buf: Vec<u8>,
    start: usize,
    plain: usize,
    raw: usize,
    end: usize,
    /// Set by the first error: a channel that failed never yields data again.
    failed: bool,
    peer: SocketAddr,
}

impl ChannelReader {
    pub fn peer(&self) -> SocketAddr {
        self.peer
    }

    /// A handle that can shut the connection down from another thread (to unblock a read).
    pub fn shutdown_handle(&self) -> io::Result<TcpStream> {
        self.stream.try_clone()
    }

    /// Reads the next frame; `Ok(None)` when the peer closed cleanly between frames. Any error
    /// (network, authentication, malformed frame) shuts the connection down.
    pub fn read_frame(&mut self) -> Result<Option<Frame>, FrameError> {
        if self.failed {
            return Err(failed_earlier().into());
        }
        let r = self.next_frame();
        if r.is_err() {
            self.fail();
        }
        r
    }

    fn fail(&mut self) {
        self.failed = true;
        let _ = self.stream.shutdown(Shutdown::Both);
    }

    fn next_frame(&mut self) -> Result<Option<Frame>, FrameError> {
        loop {
            let avail = self.plain - self.start;
            let mut need = 4;
            if avail >= 4 {
                let len =
                    u32::from_be_bytes(self.buf[self.start..self.start + 4].try_into().expect("4 bytes")) as usize;
                if len == 0 || len > MAX_FRAME_LEN {
                    return Err(FrameError::Length(len));
                }
                need = 4 + len;
                if avail >= need {
                    let body = self.start + 4..self.start + need;
                    self.start += need;
                    return frame::decode_body(&self.buf[body]).map(Some);
                }
            }
            if !self.open_record(need)? {
                if avail == 0 {
                    return Ok(None);
                }
                return Err(io::Error::from(io::ErrorKind::UnexpectedEof).into());
            }
        }
    }

    /// Reads the next record and opens it, appending its plaintext at `plain`. `Ok(false)` on a
    /// clean end of stream before the record. `frame_need`: plaintext bytes from `start` the
    /// current frame needs, to size the buffer once for it.
    fn open_record(&mut self, frame_need: usize) -> io::Result<bool> {
        if self.start == self.plain && self.raw == self.end {
            // Nothing buffered: start again at the front, without moving anything.
            (self.start, self.plain, self.raw, self.end) = (0, 0, 0, 0);
            if self.buf.len() > RECV_BUFFER {
                self.buf = Vec::new(); // after a huge frame
            }
        }
        if self.buf.is_empty() {
            self.buf = vec![0; RECV_BUFFER];
        }
        while self.end - self.raw < HEADER_LEN {
            self.make_room(HEADER_LEN, frame_need);
            if !self.read_more()? {
                if self.end == self.raw {
                    return Ok(false);
                }
                return Err(io::ErrorKind::UnexpectedEof.into());
            }
        }
        let header: [u8; HEADER_LEN] = self.buf[self.raw..self.raw + HEADER_LEN].try_into().expect("4 bytes");
        let n = u32::from_be_bytes(header) as usize;
        if !(TAG_LEN..=MAX_RECORD_PLAINTEXT + TAG_LEN).contains(&n) {
            return Err(io::Error::new(io::ErrorKind::InvalidData, format!("record length {n} out of bounds")));
        }
        while self.end - self.raw < HEADER_LEN + n {
            self.make_room(HEADER_LEN + n, frame_need);
            if !self.read_more()? {
                return Err(io::ErrorKind::UnexpectedEof.into());
            }
        }
        let record = self.cipher.counter;
        let nonce = self.cipher.next_nonce()?;
        let shift = self.raw + HEADER_LEN - self.plain;
        let record_end = self.raw + HEADER_LEN + n;
        let opened = self
            .cipher
            .key
            .open_within(nonce, Aad::from(header), &mut self.buf[self.plain..record_end], shift..)
            .map_err(|_| io::Error::new(io::ErrorKind::InvalidData, format!("record {record} failed authentication")))?
            .len();
        self.plain += opened;
        self.raw = record_end;
        Ok(true)
    }

    /// Makes `buf[raw..]` hold at least `record_need` bytes: moves what is kept to the front and
    /// grows the buffer if that is not enough (sized for the whole current frame, so a large frame
    /// moves at most once).
    fn make_room(&mut self, record_need: usize, frame_need: usize) {
        if self.buf.len() - self.raw >= record_need {
            return;
        }
        let kept = self.plain - self.start;
        let pending = self.end - self.raw;
        self.buf.copy_within(self.start..self.plain, 0);
        self.buf.copy_within(self.raw..self.end, kept);
        (self.start, self.plain, self.raw, self.end) = (0, kept, kept, kept + pending);
        if self.buf.len() - self.raw < record_need {
            let want = (self.raw + record_need).max(frame_need + HEADER_LEN + MAX_RECORD_PLAINTEXT + TAG_LEN);
            self.buf.resize(want, 0);
        }
    }

    /// One read into the free end of the buffer; `Ok(false)` at end of stream.
    fn read_more(&mut self) -> io::Result<bool> {
        loop {
            match self.stream.read(&mut self.buf[self.end..]) {
                Ok(0) => return Ok(false),
                Ok(n) => {
                    self.end += n;
                    return Ok(true);
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
    }
}

/// The sending half: buffers frames (or plaintext, `io::Write`) until `flush`, then seals the
/// buffer in place into records and sends them.
pub struct ChannelWriter {
    stream: TcpStream,
    cipher: Cipher,
    /// Plaintext to send, except the spliced buffers.
    plain: Vec<u8>,
    /// Data of large writes (`frame::encode_ops_spliced`): each belongs at its offset of `plain`.
    spliced: Vec<(usize, Vec<u8>)>,
    failed: bool,
    peer: SocketAddr,
}

/// One record of a flush: where its plaintext lies (0: `plain`, i: `spliced[i - 1]`), its length
/// prefix and, once sealed, its tag.
struct Record {
    src: usize,
    range: std::ops::Range<usize>,
    header: [u8; HEADER_LEN],
    tag: [u8; TAG_LEN],
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
        if self.failed {
            return Err(failed_earlier().into());
        }
        frame::encode_into(f, &mut self.plain)
    }

    /// Buffers `Frame::Ops { first_seq, ops }`, taking the ops: the data of large writes is sealed
    /// in place in their own buffers, never copied.
    pub fn write_ops(&mut self, first_seq: u64, ops: Vec<Op>) -> Result<(), FrameError> {
        if self.failed {
            return Err(failed_earlier().into());
        }
        frame::encode_ops_spliced(first_seq, ops, &mut self.plain, &mut self.spliced)
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

    /// Seals what is buffered into records of about `SEAL_CHUNK` bytes (a piece of `plain` or a
    /// spliced buffer is cut into equal parts) and sends them as soon as about `SEAL_CHUNK` bytes
    /// are sealed, so the peer opens those while the next are sealed.
    fn seal_and_send(&mut self) -> io::Result<()> {
        let mut pieces = Vec::with_capacity(2 * self.spliced.len() + 1);
        let mut from = 0;
        for (i, (at, data)) in self.spliced.iter().enumerate() {
            pieces.push((0, from..*at));
            pieces.push((i + 1, 0..data.len()));
            from = *at;
        }
        pieces.push((0, from..self.plain.len()));
        let mut records = Vec::new();
        for (src, range) in pieces {
            let parts = range.len().div_ceil(SEAL_CHUNK);
            let mut at = range.start;
            for i in 0..parts {
                let n = (range.end - at) / (parts - i);
                let header = ((n + TAG_LEN) as u32).to_be_bytes();
                records.push(Record { src, range: at..at + n, header, tag: [0; TAG_LEN] });
                at += n;
            }
        }
        let mut sent = 0;
        let mut sealed = 0;
        for i in 0..records.len() {
            let r = &mut records[i];
            let buf = if r.src == 0 { &mut self.plain } else { &mut self.spliced[r.src - 1].1 };
            let nonce = self.cipher.next_nonce()?;
            let tag = self
                .cipher
                .key
                .seal_in_place_separate_tag(nonce, Aad::from(r.header), &mut buf[r.range.clone()])
                .map_err(|_| io::Error::other("encrypt"))?;
            r.tag.copy_from_slice(tag.as_ref());
            sealed += r.range.len();
            if sealed >= SEAL_CHUNK || i + 1 == records.len() {
                let mut iov = Vec::with_capacity(3 * (i + 1 - sent));
                for r in &records[sent..=i] {
                    let buf = if r.src == 0 { &self.plain } else { &self.spliced[r.src - 1].1 };
                    iov.extend([IoSlice::new(&r.header), IoSlice::new(&buf[r.range.clone()]), IoSlice::new(&r.tag)]);
                }
                write_all_vectored(&mut self.stream, &mut iov)?;
                (sent, sealed) = (i + 1, 0);
            }
        }
        Ok(())
    }
}

/// `write_all` for several slices (in groups of at most IOV_MAX).
fn write_all_vectored(stream: &mut TcpStream, bufs: &mut [IoSlice<'_>]) -> io::Result<()> {
    for mut bufs in bufs.chunks_mut(1020) {
        while !bufs.is_empty() {
            match stream.write_vectored(bufs) {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(n) => IoSlice::advance_slices(&mut bufs, n),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
    }
    Ok(())
}

impl Write for ChannelWriter {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        if self.failed {
            return Err(failed_earlier());
        }
        self.plain.extend_from_slice(data);
        Ok(data.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        if self.failed {
            return Err(failed_earlier());
        }
        let r = self.seal_and_send();
        self.plain.clear();
        self.spliced.clear();
        if self.plain.capacity() > SEND_BUFFER_KEPT {
            self.plain = Vec::new();
        }
        if r.is_err() {
            self.failed = true;
            let _ = self.stream.shutdown(Shutdown::Both);
        }
        r
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

    impl ChannelWriter {
        /// A record sealed with the next nonce, as bytes to send raw.
        fn seal_record(&mut self, plain: &[u8]) -> Vec<u8> {
            let mut body = plain.to_vec();
            let header = ((body.len() + TAG_LEN) as u32).to_be_bytes();
            let nonce = self.cipher.next_nonce().unwrap();
            let tag = self.cipher.key.seal_in_place_separate_tag(nonce, Aad::from(header), &mut body).unwrap();
            [&header[..], &body, tag.as_ref()].concat()
        }
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

    /// Frames of every size, several per flush and read long after they were sent: records
    /// opened behind one another, frames spanning records, the receive buffer moved and grown.
    #[test]
    fn many_frames_of_any_size_arrive_intact() {
        let (s, c) = pair(KEY, KEY);
        let (mut sr, _sw) = s.unwrap().split();
        let (_cr, mut cw) = c.unwrap().split();
        let sizes: Vec<usize> = (0..60usize).map(|i| (i * 7919 * 37) % (6 << 20) + i % 3).collect();
        let frames: Vec<Frame> = sizes
            .iter()
            .enumerate()
            .map(|(i, &n)| Frame::Error { message: ((b'a' + (i % 26) as u8) as char).to_string().repeat(n) })
            .collect();
        let expect = frames.clone();
        let t = thread::spawn(move || {
            for (i, f) in frames.iter().enumerate() {
                cw.write_frame(f).unwrap();
                if i % 3 == 0 {
                    cw.flush().unwrap();
                }
            }
            cw.finish().unwrap();
        });
        thread::sleep(std::time::Duration::from_millis(100));
        for f in expect {
            assert_eq!(sr.read_frame().unwrap().as_ref(), Some(&f));
        }
        assert_eq!(sr.read_frame().unwrap(), None);
        t.join().unwrap();
    }

    /// Ops frames whose large writes are sealed in their own buffers read back as encoded.
    #[test]
    fn spliced_writes_arrive_intact() {
        let (s, c) = pair(KEY, KEY);
        let (mut sr, _sw) = s.unwrap().split();
        let (_cr, mut cw) = c.unwrap().split();
        let data = |n: usize, k: u8| (0..n).map(|i| (i as u8).wrapping_mul(k)).collect::<Vec<u8>>();
        let batches: Vec<Vec<Op>> = vec![
            vec![Op::Write { fh: 1, offset: 0, data: data(1 << 20, 3) }],
            vec![
                Op::Close { fh: 9 },
                Op::Write { fh: 1, offset: 5, data: data(frame::SPLICE_MIN, 5) },
                Op::Write { fh: 1, offset: 6, data: data(10, 7) },
                Op::Write { fh: 2, offset: 7, data: data(3 << 20, 11) },
                Op::Write { fh: 2, offset: 8, data: data(700_001, 13) },
            ],
        ];
        let expect = batches.clone();
        let t = thread::spawn(move || {
            for (i, ops) in batches.into_iter().enumerate() {
                cw.write_frame(&Frame::Flush).unwrap();
                cw.write_ops(i as u64 + 1, ops).unwrap();
                cw.write_frame(&Frame::Bye).unwrap();
                cw.flush().unwrap();
            }
            cw.finish().unwrap();
        });
        for (i, ops) in expect.into_iter().enumerate() {
            assert_eq!(sr.read_frame().unwrap(), Some(Frame::Flush));
            assert_eq!(sr.read_frame().unwrap(), Some(Frame::Ops { first_seq: i as u64 + 1, ops }));
            assert_eq!(sr.read_frame().unwrap(), Some(Frame::Bye));
        }
        assert_eq!(sr.read_frame().unwrap(), None);
        t.join().unwrap();
    }

    /// The split keys are Noise's transport keys, in the right direction: a record sealed with the
    /// initiator's sending key opens with `snow`'s own transport state on the responder.
    #[test]
    fn raw_split_keys_are_the_noise_transport_keys() {
        let psk = psk(KEY).unwrap();
        let build =
            || snow::Builder::new(NOISE_PARAMS.parse().unwrap()).psk(0, &psk).unwrap().prologue(PROLOGUE).unwrap();
        let mut i = build().build_initiator().unwrap();
        let mut r = build().build_responder().unwrap();
        let (mut m, mut p) = (vec![0u8; 1024], vec![0u8; 1024]);
        let n = i.write_message(&[], &mut m).unwrap();
        r.read_message(&m[..n], &mut p).unwrap();
        let n = r.write_message(&[], &mut m).unwrap();
        i.read_message(&m[..n], &mut p).unwrap();
        let (k1, k2) = i.dangerously_get_raw_split();
        let r = r.into_stateless_transport_mode().unwrap();
        for (key, plain) in [(k1, &b"initiator to responder"[..]), (k2, b"responder to initiator")] {
            let mut c = Cipher::new(&key);
            let mut body = plain.to_vec();
            let nonce = c.next_nonce().unwrap();
            let tag = c.key.seal_in_place_separate_tag(nonce, Aad::empty(), &mut body).unwrap();
            body.extend_from_slice(tag.as_ref());
            let mut out = vec![0u8; 1024];
            // The responder's snow state reads with the initiator's sending key only.
            let opened = r.read_message(0, &body, &mut out);
            assert_eq!(opened.is_ok(), key == k1, "{opened:?}");
            if let Ok(n) = opened {
                assert_eq!(&out[..n], plain);
            }
        }
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

    /// Sends raw bytes made by `send` (given the writer, to seal records with it) and returns what
    /// the reader made of them: the first result, and whether a second read failed too.
    fn receive_raw(
        send: impl FnOnce(&mut ChannelWriter) -> Vec<u8> + Send + 'static,
    ) -> Vec<Result<Option<Frame>, FrameError>> {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        let t = thread::spawn(move || {
            let (mut r, _w) = Channel::accept(l.accept().unwrap().0, KEY).unwrap().split();
            let results: Vec<_> = (0..3).map(|_| r.read_frame()).collect();
            assert!(r.buf.len() <= RECV_BUFFER, "no allocation beyond the receive buffer");
            results
        });
        let (_r, mut w) = Channel::connect(addr, KEY).unwrap().split();
        let bytes = send(&mut w);
        w.stream.write_all(&bytes).unwrap();
        w.stream.shutdown(Shutdown::Write).unwrap();
        t.join().unwrap()
    }

    fn assert_closed_by(results: &[Result<Option<Frame>, FrameError>], good: usize, kind: io::ErrorKind) {
        for r in &results[..good] {
            assert!(matches!(r, Ok(Some(Frame::Flush))), "{results:?}");
        }
        assert!(matches!(&results[good], Err(FrameError::Io(e)) if e.kind() == kind), "{results:?}");
        for r in &results[good + 1..] {
            assert!(
                matches!(r, Err(FrameError::Io(e)) if e.kind() == io::ErrorKind::BrokenPipe),
                "a failed channel never yields data: {results:?}"
            );
        }
    }

    fn flush_frame() -> Vec<u8> {
        frame::encode(&Frame::Flush).unwrap()
    }

    #[test]
    fn valid_raw_records_are_read() {
        let r = receive_raw(|w| [w.seal_record(&flush_frame()), w.seal_record(&flush_frame())].concat());
        assert!(matches!(r[..], [Ok(Some(Frame::Flush)), Ok(Some(Frame::Flush)), Ok(None)]), "{r:?}");
    }

    #[test]
    fn tampered_record_closes() {
        for at in [HEADER_LEN, HEADER_LEN + 3, HEADER_LEN + 5 + TAG_LEN - 1] {
            let r = receive_raw(move |w| {
                let mut rec = w.seal_record(&flush_frame());
                rec[at] ^= 1;
                [w.seal_record(&flush_frame()), rec].concat()
            });
            // The first record was sealed second: its nonce is wrong too, either way nothing passes.
            assert_closed_by(&r, 0, io::ErrorKind::InvalidData);
        }
        // The length is authenticated: a longer record with a byte appended fails.
        let r = receive_raw(|w| {
            let mut rec = w.seal_record(&flush_frame());
            let n = u32::from_be_bytes(rec[..4].try_into().unwrap()) + 1;
            rec[..4].copy_from_slice(&n.to_be_bytes());
            rec.push(0);
            rec
        });
        assert_closed_by(&r, 0, io::ErrorKind::InvalidData);
    }

    #[test]
    fn replayed_reordered_or_dropped_record_closes() {
        let r = receive_raw(|w| {
            let rec = w.seal_record(&flush_frame());
            [rec.clone(), rec].concat()
        });
        assert_closed_by(&r, 1, io::ErrorKind::InvalidData);
        let r = receive_raw(|w| {
            let (a, b) = (w.seal_record(&flush_frame()), w.seal_record(&flush_frame()));
            [b, a].concat()
        });
        assert_closed_by(&r, 0, io::ErrorKind::InvalidData);
        let r = receive_raw(|w| {
            let (a, b, c) =
                (w.seal_record(&flush_frame()), w.seal_record(&flush_frame()), w.seal_record(&flush_frame()));
            drop(b);
            [a, c].concat()
        });
        assert_closed_by(&r, 1, io::ErrorKind::InvalidData);
    }

    #[test]
    fn truncated_record_is_an_error() {
        let r = receive_raw(|w| {
            let rec = w.seal_record(&flush_frame());
            [rec.clone(), rec[..rec.len() - 1].to_vec()].concat()
        });
        assert_closed_by(&r, 1, io::ErrorKind::UnexpectedEof);
        // Cut inside the length.
        let r = receive_raw(|_| vec![0, 0]);
        assert_closed_by(&r, 0, io::ErrorKind::UnexpectedEof);
        // A frame cut at a record boundary.
        let r = receive_raw(|w| {
            let f = flush_frame();
            w.seal_record(&f[..3])
        });
        assert_closed_by(&r, 0, io::ErrorKind::UnexpectedEof);
    }

    #[test]
    fn record_length_out_of_bounds_closes_before_allocating() {
        for n in [0usize, TAG_LEN - 1, MAX_RECORD_PLAINTEXT + TAG_LEN + 1, u32::MAX as usize] {
            let r = receive_raw(move |_| [&(n as u32).to_be_bytes()[..], &[0u8; 64]].concat());
            assert_closed_by(&r, 0, io::ErrorKind::InvalidData);
        }
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
