//! The replication wire format: versioned, length-delimited frames. Pure: no I/O beyond
//! `std::io::Read`/`Write`, so it can be tested on byte slices and fuzzed.
//!
//! A frame on the (decrypted) byte stream is
//!
//! ```text
//! offset size
//! 0      4    length L of what follows, big-endian u32, 1 <= L <= MAX_FRAME_LEN
//! 4      1    wire version (WIRE_VERSION)
//! 5      L-1  the body: a `Frame` encoded with postcard
//! ```
//!
//! The length comes first so a reader knows how much to buffer before decoding, and is checked
//! against `MAX_FRAME_LEN` before any allocation: a hostile or corrupted length cannot make the
//! secondary allocate gigabytes. The version byte is checked before the body is decoded, so a
//! future format change is a clean `FrameError::Version`, never a misparse. Decoding arbitrary
//! bytes never panics: postcard returns errors and every length is bounded by the frame.

use std::io::{self, Read, Write};

use serde::{Deserialize, Serialize};

use crate::op::{AckLevel, Op};

/// Version of the frame encoding (the byte after the length) and of the protocol (`Hello`).
pub const WIRE_VERSION: u8 = 1;

/// Hard limit on one frame (version byte + body). A sender splits its batches well below it.
pub const MAX_FRAME_LEN: usize = 16 * 1024 * 1024;

/// The first frame in each direction: who speaks, for which cluster and module.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Hello {
    /// Protocol version of the speaker (`WIRE_VERSION`).
    pub version: u8,
    /// Cluster name (cluster.toml), so two clusters sharing a key by mistake do not mix.
    pub cluster: String,
    /// The module whose directories this stream replicates.
    pub module_id: u8,
    /// Node name of the speaker.
    pub from: String,
    /// The secondary's join number this stream answers (from the machine's view), so that a stream
    /// opened for an older join is refused instead of feeding a copy that restarted since.
    pub join_seq: u64,
}

/// One frame. Sequence numbers count operations from 1 within one connection.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Frame {
    Hello(Hello),
    /// Operations `first_seq`, `first_seq + 1`, ... in the primary's order (primary → secondary).
    Ops {
        first_seq: u64,
        ops: Vec<Op>,
    },
    /// Make everything applied so far durable and answer `Ack { level: Durable }` (primary →
    /// secondary): how a `durable` wait is satisfied for operations that are not an fsync.
    Flush,
    /// Cumulative acknowledgement: every operation up to `seq` reached `level` (secondary →
    /// primary). A higher level implies the lower ones.
    Ack {
        seq: u64,
        level: AckLevel,
    },
    /// The speaker is closing the stream because of this error (either direction).
    Error {
        message: String,
    },
    /// The primary ends the stream deliberately (nothing follows): tells a clean stop from a
    /// connection that ended because the primary died.
    Bye,
    /// `tandem verify` (primary → secondary): once every operation sent before it is applied,
    /// answer with the manifest of the copy.
    Verify {
        id: u64,
    },
    /// The answer to `Verify` (secondary → primary): the manifest, or why it could not be built.
    /// A manifest larger than a frame comes in parts: `ManifestPart`s, then this frame with the
    /// rest of the entries.
    Manifest {
        id: u64,
        manifest: Result<crate::manifest::Manifest, String>,
    },
    /// Entries of the manifest `id`, ahead of its `Manifest` frame (secondary → primary).
    ManifestPart {
        id: u64,
        entries: Vec<(crate::op::RelPath, crate::manifest::Entry)>,
    },
    /// As `Verify`, for a catch-up that trusts the zone log: block hashes only for the regular
    /// files in `hash`, the rest listed without being read. Answered with `Manifest`.
    List {
        id: u64,
        hash: Vec<crate::op::RelPath>,
    },
    /// As `List`, for a catch-up that trusts a zone log vouching for every namespace change:
    /// what `scope` says. Answered with `Manifest`.
    ListScoped {
        id: u64,
        scope: ListScope,
    },
}

/// What a `ListScoped` request asks the secondary to list.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum ListScope {
    /// The whole tree, the entries of unchanged directories by name and kind only
    /// ([`crate::manifest::build_names`]): `full` lists the directories whose entries are listed
    /// whole, `hash` the regular files to hash.
    Names { hash: Vec<crate::op::RelPath>, full: Vec<crate::op::RelPath> },
    /// The entries of one directory, whole, without hashes ([`crate::manifest::build_dir`]).
    Dir(crate::op::RelPath),
}

impl Frame {
    /// A short name for logs.
    pub fn kind(&self) -> &'static str {
        match self {
            Frame::Hello(_) => "Hello",
            Frame::Ops { .. } => "Ops",
            Frame::Flush => "Flush",
            Frame::Ack { .. } => "Ack",
            Frame::Error { .. } => "Error",
            Frame::Bye => "Bye",
            Frame::Verify { .. } => "Verify",
            Frame::Manifest { .. } => "Manifest",
            Frame::ManifestPart { .. } => "ManifestPart",
            Frame::List { .. } => "List",
            Frame::ListScoped { .. } => "ListScoped",
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    #[error("frame length {0} is outside 1..={MAX_FRAME_LEN}")]
    Length(usize),
    #[error("frame wire version {got}, this node speaks {WIRE_VERSION}")]
    Version { got: u8 },
    #[error("malformed {len}-byte frame body: {source}")]
    Body { len: usize, source: postcard::Error },
    #[error("frame body has {0} trailing bytes")]
    Trailing(usize),
    #[error("cannot encode frame: {0}")]
    Encode(postcard::Error),
    #[error("i/o: {0}")]
    Io(#[from] io::Error),
}

/// Encodes `frame` with its length prefix and version byte.
pub fn encode(frame: &Frame) -> Result<Vec<u8>, FrameError> {
    let mut out = Vec::new();
    encode_into(frame, &mut out)?;
    Ok(out)
}

/// Appends what `encode` returns to `out`. The channel writer encodes straight into the buffer it
/// then seals in place, so the data of a write is copied once on its way to the wire (`out` is
/// reused: no growth after the first large frame). On error `out` is left as it was.
pub fn encode_into(frame: &Frame, out: &mut Vec<u8>) -> Result<(), FrameError> {
    let at = out.len();
    out.extend_from_slice(&[0, 0, 0, 0, WIRE_VERSION]);
    if let Err(e) = postcard::to_io(frame, &mut *out) {
        out.truncate(at);
        return Err(FrameError::Encode(e));
    }
    let len = out.len() - at - 4;
    if len > MAX_FRAME_LEN {
        out.truncate(at);
        return Err(FrameError::Length(len));
    }
    out[at..at + 4].copy_from_slice(&(len as u32).to_be_bytes());
    Ok(())
}

/// Writes of at least this many bytes are not copied into an `Ops` frame by `encode_ops_spliced`.
pub const SPLICE_MIN: usize = 32 << 10;

/// Encodes `Frame::Ops { first_seq, ops }` as `encode_into` does, except that the data of each
/// write of at least `SPLICE_MIN` bytes is moved out of its op instead of copied: `(at, data)` is
/// pushed on `spliced`, meaning `data` belongs at offset `at` of `out` (offsets ascending). The
/// channel writer seals those buffers where they lie, so the primary never copies their bytes.
/// On error `out` and `spliced` are left as they were.
pub fn encode_ops_spliced(
    first_seq: u64,
    mut ops: Vec<Op>,
    out: &mut Vec<u8>,
    spliced: &mut Vec<(usize, Vec<u8>)>,
) -> Result<(), FrameError> {
    let (at, spliced_at) = (out.len(), spliced.len());
    let r = encode_ops_spliced_(first_seq, &mut ops, at, out, spliced);
    if r.is_err() {
        out.truncate(at);
        spliced.truncate(spliced_at);
    }
    r
}

fn encode_ops_spliced_(
    first_seq: u64,
    ops: &mut [Op],
    at: usize,
    out: &mut Vec<u8>,
    spliced: &mut Vec<(usize, Vec<u8>)>,
) -> Result<(), FrameError> {
    fn put<T: Serialize + ?Sized>(out: &mut Vec<u8>, v: &T) -> Result<(), FrameError> {
        postcard::to_io(v, &mut *out).map_err(FrameError::Encode).map(drop)
    }
    // postcard: a sequence or a byte string is its length (varint, as a u64) then its items, and
    // both end their value here. Encode each with no items, replace that empty length (one zero
    // byte) with the real one, and the items follow.
    fn put_prefix<T: Serialize>(out: &mut Vec<u8>, empty: &T, len: usize) -> Result<(), FrameError> {
        put(out, empty)?;
        debug_assert_eq!(out.last(), Some(&0));
        out.pop();
        put(out, &(len as u64))
    }
    out.extend_from_slice(&[0, 0, 0, 0, WIRE_VERSION]);
    put_prefix(out, &Frame::Ops { first_seq, ops: Vec::new() }, ops.len())?;
    let mut moved = 0;
    for op in ops {
        match op {
            Op::Write { fh, offset, data } if data.len() >= SPLICE_MIN => {
                put_prefix(out, &Op::Write { fh: *fh, offset: *offset, data: Vec::new() }, data.len())?;
                moved += data.len();
                spliced.push((out.len(), std::mem::take(data)));
            }
            op => put(out, op)?,
        }
    }
    let len = out.len() - at - 4 + moved;
    if len > MAX_FRAME_LEN {
        return Err(FrameError::Length(len));
    }
    out[at..at + 4].copy_from_slice(&(len as u32).to_be_bytes());
    Ok(())
}

/// Size of `frame` once encoded (length prefix included), without building it.
pub fn encoded_len(frame: &Frame) -> Result<usize, FrameError> {
    let body = postcard::experimental::serialized_size(frame).map_err(FrameError::Encode)?;
    Ok(5 + body)
}

/// Decodes what follows the length prefix: the version byte and the body, exactly.
pub fn decode_body(bytes: &[u8]) -> Result<Frame, FrameError> {
    if bytes.is_empty() || bytes.len() > MAX_FRAME_LEN {
        return Err(FrameError::Length(bytes.len()));
    }
    if bytes[0] != WIRE_VERSION {
        return Err(FrameError::Version { got: bytes[0] });
    }
    let body = &bytes[1..];
    let (frame, rest) =
        postcard::take_from_bytes::<Frame>(body).map_err(|source| FrameError::Body { len: body.len(), source })?;
    if !rest.is_empty() {
        return Err(FrameError::Trailing(rest.len()));
    }
    Ok(frame)
}

/// Decodes one whole frame (length prefix included) from the front of `bytes`; returns it and
/// how many bytes it used, or `Ok(None)` if `bytes` does not hold a whole frame yet.
pub fn decode(bytes: &[u8]) -> Result<Option<(Frame, usize)>, FrameError> {
    if bytes.len() < 4 {
        return Ok(None);
    }
    let len = u32::from_be_bytes(bytes[..4].try_into().expect("4 bytes")) as usize;
    if len == 0 || len > MAX_FRAME_LEN {
        return Err(FrameError::Length(len));
    }
    if bytes.len() < 4 + len {
        return Ok(None);
    }
    Ok(Some((decode_body(&bytes[4..4 + len])?, 4 + len)))
}

/// Reads one frame from a byte stream. `Ok(None)` on a clean end of stream before a frame starts;
/// an end of stream inside a frame is an error (`UnexpectedEof`).
pub fn read_frame(r: &mut impl Read, buf: &mut Vec<u8>) -> Result<Option<Frame>, FrameError> {
    let mut len = [0u8; 4];
    let mut got = 0;
    while got < 4 {
        match r.read(&mut len[got..]) {
            Ok(0) if got == 0 => return Ok(None),
            Ok(0) => return Err(io::Error::from(io::ErrorKind::UnexpectedEof).into()),
            Ok(n) => got += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e.into()),
        }
    }
    let len = u32::from_be_bytes(len) as usize;
    if len == 0 || len > MAX_FRAME_LEN {
        return Err(FrameError::Length(len));
    }
    buf.clear();
    buf.resize(len, 0);
    r.read_exact(buf)?;
    decode_body(buf).map(Some)
}

/// Writes one frame (not flushed).
pub fn write_frame(w: &mut impl Write, frame: &Frame) -> Result<(), FrameError> {
    w.write_all(&encode(frame)?)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::op::{RelPath, TimeSet};
    use proptest::prelude::*;

    fn samples() -> Vec<Frame> {
        vec![
            Frame::Hello(Hello {
                version: WIRE_VERSION,
                cluster: "c".into(),
                module_id: 3,
                from: "n1".into(),
                join_seq: 7,
            }),
            Frame::Ops {
                first_seq: 1,
                ops: vec![
                    Op::Create { fh: 1, path: RelPath(b"a/b".to_vec()), flags: 0o101, mode: 0o644, uid: 0, gid: 0 },
                    Op::Write { fh: 1, offset: 4096, data: vec![7; 100] },
                    Op::SetTimes {
                        path: RelPath(b"a/b".to_vec()),
                        atime: TimeSet::Omit,
                        mtime: TimeSet::At { sec: -5, nsec: 9 },
                    },
                    Op::Fsync { fh: None, datasync: true },
                ],
            },
            Frame::Flush,
            Frame::Ack { seq: u64::MAX, level: AckLevel::Durable },
            Frame::Error { message: "boom".into() },
            Frame::Bye,
        ]
    }

    #[test]
    fn round_trip() {
        for f in samples() {
            let bytes = encode(&f).unwrap();
            assert_eq!(bytes.len(), encoded_len(&f).unwrap());
            assert_eq!(decode(&bytes).unwrap(), Some((f.clone(), bytes.len())));
            assert_eq!(decode(&bytes[..bytes.len() - 1]).unwrap(), None);
            let mut r = &bytes[..];
            let mut buf = Vec::new();
            assert_eq!(read_frame(&mut r, &mut buf).unwrap(), Some(f));
            assert!(read_frame(&mut r, &mut buf).unwrap().is_none());
        }
    }

    #[test]
    fn typed_errors() {
        let good = encode(&Frame::Flush).unwrap();
        let mut v = good.clone();
        v[4] = 99;
        assert!(matches!(decode(&v), Err(FrameError::Version { got: 99 })));
        let mut big = good.clone();
        big[..4].copy_from_slice(&(MAX_FRAME_LEN as u32 + 1).to_be_bytes());
        assert!(matches!(decode(&big), Err(FrameError::Length(_))));
        assert!(matches!(read_frame(&mut &big[..], &mut Vec::new()), Err(FrameError::Length(_))));
        let mut zero = good.clone();
        zero[..4].copy_from_slice(&0u32.to_be_bytes());
        assert!(matches!(decode(&zero), Err(FrameError::Length(0))));
        let mut trailing = good.clone();
        trailing.push(0);
        let len = (trailing.len() - 4) as u32;
        trailing[..4].copy_from_slice(&len.to_be_bytes());
        assert!(matches!(decode(&trailing), Err(FrameError::Trailing(1))));
        let mut bad_variant = good;
        bad_variant[5] = 200;
        assert!(matches!(decode(&bad_variant), Err(FrameError::Body { .. })));
        // A stream cut inside a frame is an error, not a clean end.
        let f = encode(&samples()[1]).unwrap();
        let r = read_frame(&mut &f[..10], &mut Vec::new());
        assert!(matches!(r, Err(FrameError::Io(e)) if e.kind() == io::ErrorKind::UnexpectedEof));
    }

    #[test]
    fn spliced_encoding_is_the_same_bytes() {
        let big = |n: usize| (0..n).map(|i| i as u8).collect::<Vec<u8>>();
        let ops = vec![
            Op::Write { fh: 1, offset: 0, data: big(SPLICE_MIN) },
            Op::Write { fh: 300, offset: u64::MAX, data: big(SPLICE_MIN - 1) },
            Op::Write { fh: 2, offset: 1 << 40, data: big(1 << 20) },
            Op::Write { fh: 2, offset: 7, data: big(200_000) },
            Op::Close { fh: 2 },
        ];
        for ops in [ops.clone(), ops[..1].to_vec(), ops[4..].to_vec(), vec![]] {
            let whole = encode(&Frame::Ops { first_seq: 1 << 33, ops: ops.clone() }).unwrap();
            let mut out = b"before".to_vec();
            let mut spliced = Vec::new();
            encode_ops_spliced(1 << 33, ops.clone(), &mut out, &mut spliced).unwrap();
            let mut joined = Vec::new();
            let mut from = 0;
            for (at, data) in &spliced {
                joined.extend_from_slice(&out[from..*at]);
                joined.extend_from_slice(data);
                from = *at;
            }
            joined.extend_from_slice(&out[from..]);
            assert_eq!(joined[6..], whole[..]);
            let n_big = ops.iter().filter(|o| matches!(o, Op::Write { data, .. } if data.len() >= SPLICE_MIN)).count();
            assert_eq!(spliced.len(), n_big);
        }
        let f = vec![Op::Write { fh: 1, offset: 0, data: vec![0; MAX_FRAME_LEN] }];
        let (mut out, mut spliced) = (b"kept".to_vec(), Vec::new());
        assert!(matches!(encode_ops_spliced(1, f, &mut out, &mut spliced), Err(FrameError::Length(_))));
        assert_eq!((&out[..], spliced.len()), (&b"kept"[..], 0));
    }

    #[test]
    fn oversize_frame_refused_on_encode() {
        let f = Frame::Ops { first_seq: 1, ops: vec![Op::Write { fh: 1, offset: 0, data: vec![0; MAX_FRAME_LEN] }] };
        assert!(matches!(encode(&f), Err(FrameError::Length(_))));
    }

    /// Cost of the encoding alone: `cargo test --release -p tandem-replication encode_speed --
    /// --ignored --nocapture`.
    #[test]
    #[ignore = "a throughput measurement, not a check: run with --ignored --nocapture"]
    fn encode_speed() {
        let f = Frame::Ops { first_seq: 1, ops: vec![Op::Write { fh: 1, offset: 0, data: vec![0x5a; 1 << 20] }] };
        let start = std::time::Instant::now();
        for _ in 0..512 {
            let b = encode(&f).unwrap();
            assert!(decode(&b).unwrap().is_some());
        }
        let secs = start.elapsed().as_secs_f64();
        println!("frame encode+decode: 512 MiB in {secs:.2} s = {:.0} MiB/s", 512.0 / secs);
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(4096))]
        /// Arbitrary bytes never panic and never allocate beyond the frame.
        #[test]
        fn random_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
            let _ = decode(&bytes);
            let _ = decode_body(&bytes);
            let _ = read_frame(&mut &bytes[..], &mut Vec::new());
        }

        /// Valid frames with random corruption (flipped bytes, truncation) never panic.
        #[test]
        fn corrupted_frames_never_panic(which in 0usize..6, flips in proptest::collection::vec((any::<usize>(), any::<u8>()), 1..8), cut in any::<usize>()) {
            let mut bytes = encode(&samples()[which]).unwrap();
            for (at, x) in flips {
                let n = bytes.len();
                bytes[at % n] ^= x;
            }
            let cut = cut % (bytes.len() + 1);
            let _ = decode(&bytes[..cut]);
            let _ = decode(&bytes);
            let _ = read_frame(&mut &bytes[..], &mut Vec::new());
        }
    }
}
