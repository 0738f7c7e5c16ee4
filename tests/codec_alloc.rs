//! The decoder never allocates more than the bytes it was given justify (issue 2, "Tests"):
//! a counting global allocator (in this test binary only) measures every byte requested
//! while `protocol::codec::decode` runs on arbitrary, truncated and lying byte streams, and
//! the total must stay within `FACTOR × bytes given + SLACK`. A remaining length (or a
//! string length) that claims more than has arrived must not allocate its claimed size.
//!
//! Counting is per thread (a `thread_local!` switch and counter), so tests running in
//! parallel, and proptest's own allocations outside the measured calls, are not counted.

use bytes::{Bytes, BytesMut};
use mqtt_broker::protocol::codec::{decode, encode, MAX_REMAINING_LENGTH};
use mqtt_broker::protocol::*;
use proptest::prelude::*;
use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::sync::Arc;

// ---------------------------------------------------------------------------------------------
// The counting allocator
// ---------------------------------------------------------------------------------------------

struct Counting;

thread_local! {
    /// Whether allocations on this thread are being counted.
    static ON: Cell<bool> = const { Cell::new(false) };
    /// Bytes requested on this thread while counting: every `alloc` and `alloc_zeroed`
    /// size, and the full new size of every `realloc` (as if it moved, which it may).
    static BYTES: Cell<usize> = const { Cell::new(0) };
}

fn note(size: usize) {
    // `try_with`: never panic inside the allocator, even while the thread is torn down.
    let _ = ON.try_with(|on| {
        if on.get() {
            let _ = BYTES.try_with(|b| b.set(b.get().saturating_add(size)));
        }
    });
}

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        note(layout.size());
        System.alloc(layout)
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        note(layout.size());
        System.alloc_zeroed(layout)
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        note(new_size);
        System.realloc(ptr, layout, new_size)
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        System.dealloc(ptr, layout)
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

/// Runs `f` and returns its result with the bytes it requested from the allocator on this
/// thread. Not reentrant.
fn counted<T>(f: impl FnOnce() -> T) -> (T, usize) {
    BYTES.with(|b| b.set(0));
    ON.with(|on| on.set(true));
    let out = f();
    ON.with(|on| on.set(false));
    (out, BYTES.with(|b| b.get()))
}

/// The bound: a small constant factor of the bytes given, plus a constant.
///
/// The factor covers the decoded representation: a SUBSCRIBE of one-character filters costs
/// 4 wire bytes per filter but a 32-byte `(String, QoS)` element in a `Vec` that doubles as
/// it grows (and every `realloc` is counted at its full new size, so up to 4 × 32 bytes per
/// element in all), plus the 1-byte `String`: about 32 allocated bytes per wire byte, the
/// worst case measured too (UNSUBSCRIBE: 3 wire bytes, 24-byte `String` elements, the same).
/// The constant covers fixed costs such as the shared header `bytes` allocates on the first
/// `split_to` of a buffer.
const FACTOR: usize = 40;
const SLACK: usize = 1024;

fn bound(given: usize) -> usize {
    FACTOR * given + SLACK
}

// ---------------------------------------------------------------------------------------------
// Feeding the decoder
// ---------------------------------------------------------------------------------------------

/// Maximum packet sizes the decoder is tried with: none (so only the bytes present limit
/// it), the broker's default, and a small one.
const MAXES: [usize; 3] = [usize::MAX, 1024 * 1024, 64];

/// Feeds `stream` to the decoder in chunks split at `cuts`, decoding everything decodable
/// after each chunk as the connection does; stops at the first error. Returns the bytes the
/// decoder requested from the allocator (the buffer growth of appending a chunk is the
/// connection's read buffer, not the decoder's, and is not counted).
fn decode_stream(stream: &[u8], cuts: &[usize], max: usize) -> usize {
    let mut points: Vec<usize> = cuts.iter().map(|c| c % (stream.len() + 1)).collect();
    points.push(stream.len());
    points.sort_unstable();
    let mut buf = BytesMut::with_capacity(stream.len());
    let mut start = 0;
    let mut total = 0;
    for end in points {
        buf.extend_from_slice(&stream[start..end]);
        start = end;
        loop {
            let before = buf.len();
            let (result, bytes) = counted(|| decode(&mut buf, max));
            total += bytes;
            match result {
                Ok(Some(p)) => {
                    assert!(buf.len() < before, "a packet consumed no bytes");
                    drop(p);
                }
                Ok(None) => {
                    assert_eq!(buf.len(), before, "waiting for more consumed bytes");
                    break;
                }
                Err(_) => return total,
            }
        }
    }
    total
}

fn check(stream: &[u8], cuts: &[usize]) -> Result<(), TestCaseError> {
    for max in MAXES {
        let whole = decode_stream(stream, &[], max);
        prop_assert!(
            whole <= bound(stream.len()),
            "decoding {} bytes whole (max {max}) allocated {whole} bytes",
            stream.len()
        );
        let split = decode_stream(stream, cuts, max);
        prop_assert!(
            split <= bound(stream.len()),
            "decoding {} bytes in chunks (max {max}) allocated {split} bytes",
            stream.len()
        );
    }
    Ok(())
}

/// A fixed header with the given first byte and (possibly lying) remaining length.
fn header(first: u8, len: usize) -> Vec<u8> {
    let mut out = bytes::BytesMut::new();
    out.extend_from_slice(&[first]);
    mqtt_broker::protocol::codec::put_remaining_length(&mut out, len);
    out.to_vec()
}

/// A length-prefixed string field (any bytes, any claimed length).
fn field(claimed: u16, bytes: &[u8]) -> Vec<u8> {
    let mut v = claimed.to_be_bytes().to_vec();
    v.extend_from_slice(bytes);
    v
}

// ---------------------------------------------------------------------------------------------
// Valid packets, to truncate and to lie about
// ---------------------------------------------------------------------------------------------

fn qos() -> impl Strategy<Value = QoS> {
    (0u8..3).prop_map(|q| QoS::from_u8(q).unwrap())
}

fn pid() -> impl Strategy<Value = u16> {
    1u16..=u16::MAX
}

fn payload() -> impl Strategy<Value = Bytes> {
    prop::collection::vec(any::<u8>(), 0..300).prop_map(Bytes::from)
}

fn packet() -> impl Strategy<Value = Packet> {
    let connect = (
        any::<bool>(),
        "[a-z0-9]{0,23}",
        prop::option::of(("[a-z/]{1,30}", payload(), qos(), any::<bool>())),
        prop::option::of(("[a-z]{1,20}", prop::option::of(payload()))),
    )
        .prop_map(|(clean_session, client_id, will, auth)| {
            let (username, password) = match auth {
                Some((u, p)) => (Some(u), p),
                None => (None, None),
            };
            Packet::Connect(Box::new(Connect {
                bridge: false,
                properties: None,
                protocol: ProtocolLevel::V311,
                clean_session,
                keep_alive: 60,
                client_id,
                will: will.map(|(t, p, qos, retain)| LastWill {
                    properties: None,
                    topic: Arc::from(t.as_str()),
                    payload: p,
                    qos,
                    retain,
                }),
                username,
                password,
            }))
        });
    let publish = (qos(), any::<bool>(), "[a-z/]{1,40}", pid(), payload()).prop_map(
        |(qos, retain, topic, pid, payload)| {
            Packet::Publish(Publish {
                properties: None,
                dup: false,
                qos,
                retain,
                topic: Arc::from(topic.as_str()),
                pid: (qos != QoS::AtMostOnce).then_some(pid),
                payload,
            })
        },
    );
    // Many one-character filters: the most decoded memory per wire byte.
    let subscribe =
        (pid(), prop::collection::vec(("[a-z+#]", qos()), 1..400)).prop_map(|(pid, filters)| {
            Packet::Subscribe(Subscribe {
                options: Vec::new(),
                properties: None,
                pid,
                filters,
            })
        });
    let unsubscribe =
        (pid(), prop::collection::vec("[a-z+#]", 1..400)).prop_map(|(pid, filters)| {
            Packet::Unsubscribe(Unsubscribe {
                properties: None,
                pid,
                filters,
            })
        });
    let suback = (
        pid(),
        prop::collection::vec(
            prop_oneof![
                qos().prop_map(SubAckCode::Granted),
                Just(SubAckCode::Failure)
            ],
            0..400,
        ),
    )
        .prop_map(|(pid, codes)| {
            Packet::SubAck(SubAck {
                properties: None,
                pid,
                codes,
            })
        });
    prop_oneof![
        connect,
        publish,
        subscribe,
        unsubscribe,
        suback,
        pid().prop_map(Packet::PubAck),
        pid().prop_map(Packet::PubRel),
        Just(Packet::PingReq),
        Just(Packet::Disconnect),
    ]
}

fn encoded(p: &Packet) -> Vec<u8> {
    let mut out = BytesMut::new();
    encode(p, &mut out);
    out.to_vec()
}

/// Splits an encoded packet into its first byte and its body.
fn parts(full: &[u8]) -> (u8, &[u8]) {
    let mut i = 1;
    while full[i] & 0x80 != 0 {
        i += 1;
    }
    (full[0], &full[i + 1..])
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    /// Arbitrary bytes, whole and split at arbitrary points.
    #[test]
    fn arbitrary_bytes_allocate_in_proportion(
        data in prop::collection::vec(any::<u8>(), 0..2048),
        cuts in prop::collection::vec(any::<usize>(), 0..8),
    ) {
        check(&data, &cuts)?;
    }

    /// A consistent fixed header over an arbitrary body: every packet type's body parser
    /// runs on garbage (random streams rarely get past the remaining length).
    #[test]
    fn arbitrary_bodies_allocate_in_proportion(
        first in any::<u8>(),
        body in prop::collection::vec(any::<u8>(), 0..2048),
        cuts in prop::collection::vec(any::<usize>(), 0..8),
    ) {
        let mut stream = header(first, body.len());
        stream.extend_from_slice(&body);
        check(&stream, &cuts)?;
    }

    /// Streams of valid packets, then the same streams truncated at an arbitrary point.
    #[test]
    fn valid_and_truncated_streams_allocate_in_proportion(
        packets in prop::collection::vec(packet(), 1..6),
        cut in any::<prop::sample::Index>(),
        cuts in prop::collection::vec(any::<usize>(), 0..8),
    ) {
        let stream: Vec<u8> = packets.iter().flat_map(encoded).collect();
        check(&stream, &cuts)?;
        let truncated = &stream[..cut.index(stream.len())];
        check(truncated, &cuts)?;
    }

    /// A valid packet whose remaining length lies: it claims anything up to the 4-byte
    /// maximum (268,435,455) while only the real body (possibly truncated) follows.
    #[test]
    fn lying_remaining_length_does_not_allocate_the_claim(
        p in packet(),
        claimed in 0usize..=MAX_REMAINING_LENGTH,
        keep in any::<prop::sample::Index>(),
        cuts in prop::collection::vec(any::<usize>(), 0..8),
    ) {
        let full = encoded(&p);
        let (first, body) = parts(&full);
        let body = &body[..keep.index(body.len() + 1)];
        let mut stream = header(first, claimed);
        stream.extend_from_slice(body);
        check(&stream, &cuts)?;
    }

    /// String and binary fields whose 16-bit length claims more than the packet holds, in
    /// every string position of CONNECT, PUBLISH, SUBSCRIBE and UNSUBSCRIBE.
    #[test]
    fn lying_string_lengths_do_not_allocate_the_claim(
        claimed in any::<u16>(),
        present in prop::collection::vec(any::<u8>(), 0..64),
        which in 0usize..8,
    ) {
        let f = field(claimed, &present);
        let ok = |s: &[u8]| field(s.len() as u16, s);
        let (first, body): (u8, Vec<u8>) = match which {
            // Protocol name.
            0 => (0x10, f.clone()),
            // Client id.
            1 => (0x10, [ok(b"MQTT"), vec![4, 0x02, 0, 60], f.clone()].concat()),
            // Will topic, then will payload.
            2 => (0x10, [ok(b"MQTT"), vec![4, 0x06, 0, 60], ok(b"id"), f.clone()].concat()),
            3 => (0x10, [ok(b"MQTT"), vec![4, 0x06, 0, 60], ok(b"id"), ok(b"w"), f.clone()].concat()),
            // User name, then password.
            4 => (0x10, [ok(b"MQTT"), vec![4, 0xc2, 0, 60], ok(b"id"), f.clone()].concat()),
            5 => (0x10, [ok(b"MQTT"), vec![4, 0xc2, 0, 60], ok(b"id"), ok(b"u"), f.clone()].concat()),
            // PUBLISH topic; a SUBSCRIBE and an UNSUBSCRIBE filter.
            6 => (0x30, f.clone()),
            _ => (if claimed % 2 == 0 { 0x82 } else { 0xa2 }, [vec![0, 1], f.clone()].concat()),
        };
        let mut stream = header(first, body.len());
        stream.extend_from_slice(&body);
        check(&stream, &[])?;
    }
}

/// The extreme cases by hand, with the exact numbers: a header claiming the largest remaining
/// length followed by nothing or by a few bytes, with no packet size limit at all.
#[test]
fn remaining_length_of_256_mib_with_nothing_behind_it() {
    for first in [0x10u8, 0x30, 0x82, 0xa2, 0x90] {
        for tail in [&b""[..], b"\x00\x04MQTT\x04\x02\x00\x3c", &[0xff; 100]] {
            let mut stream = header(first, MAX_REMAINING_LENGTH);
            stream.extend_from_slice(tail);
            let mut buf = BytesMut::from(&stream[..]);
            let (result, bytes) = counted(|| decode(&mut buf, usize::MAX));
            assert_eq!(result, Ok(None), "waits for the body");
            assert_eq!(bytes, 0, "waiting allocates nothing");
            assert_eq!(buf.len(), stream.len());
        }
    }
}

/// The counter itself works: what it is meant to catch would be caught.
#[test]
fn counting_allocator_counts_this_thread() {
    let (v, bytes) = counted(|| Vec::<u8>::with_capacity(10_000));
    assert!(bytes >= 10_000, "{bytes}");
    drop(v);
    let (_, none) = counted(|| ());
    assert_eq!(none, 0);
}
