//! Property tests: every message round-trips through postcard framing and through JSON, and no
//! byte string read from a peer makes the decoder panic.

use crate::framing::{MAX_CONTROL_FRAME, decode, encode_frame, read_frame, read_message};
use crate::trace::{TraceReader, TraceRecord, TraceWriter};
use crate::vsh::{GuestMessage, HostMessage, SetupConnectionRequest, SetupConnectionResponse};
use crate::{Envelope, FrameError, Hello};
use proptest::prelude::*;
use serde::Serialize;
use serde::de::DeserializeOwned;
use std::fmt::Debug;

fn round_trips<T: Serialize + DeserializeOwned + PartialEq + Debug>(msg: &T) {
    let frame = encode_frame(msg).expect("encode");
    let len = u32::from_le_bytes(frame[..4].try_into().expect("4 bytes")) as usize;
    assert_eq!(len, frame.len() - 4, "length prefix matches the payload");
    let back: T = read_message(&mut &frame[..], usize::MAX).expect("decode");
    assert_eq!(&back, msg, "postcard round trip");

    let json = serde_json::to_string(msg).expect("to json");
    let back: T = serde_json::from_str(&json).expect("from json");
    assert_eq!(&back, msg, "JSON round trip of {json}");
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    fn check_envelopes_round_trip(env in any::<Envelope>()) {
        round_trips(&env);
    }

    fn check_hello_round_trips(hello in any::<Hello>()) {
        round_trips(&hello);
    }

    fn check_vsh_messages_round_trip(
        setup in any::<SetupConnectionRequest>(),
        resp in any::<SetupConnectionResponse>(),
        host in any::<HostMessage>(),
        guest in any::<GuestMessage>(),
    ) {
        round_trips(&setup);
        round_trips(&resp);
        round_trips(&host);
        round_trips(&guest);
    }

    fn check_garbage_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
        let _ = decode::<Envelope>(&bytes);
        let _ = read_message::<Envelope>(&mut &bytes[..], MAX_CONTROL_FRAME);
        let _ = decode::<HostMessage>(&bytes);
        let _ = TraceReader::new(&bytes[..]).map(|r| r.count());
    }

    fn check_every_truncation_is_an_error(env in any::<Envelope>(), cut in any::<prop::sample::Index>()) {
        let frame = encode_frame(&env).expect("encode");
        let at = cut.index(frame.len()); // strictly shorter than the frame
        let err = read_frame(&mut &frame[..at], MAX_CONTROL_FRAME).expect_err("truncated frame must fail");
        match (at, err) {
            (0, FrameError::Closed) => {}
            (1..=3, FrameError::Truncated { expected: 4, got }) => prop_assert_eq!(got, at),
            (_, FrameError::Truncated { expected, got }) => {
                prop_assert_eq!(expected, frame.len() - 4);
                prop_assert_eq!(got, at - 4);
            }
            (at, other) => prop_assert!(false, "cut at {at}: unexpected {other:?}"),
        }
    }

    fn check_oversized_length_is_refused_before_allocation(len in (MAX_CONTROL_FRAME as u32 + 1)..=u32::MAX) {
        // Only the 4-byte prefix exists: success would need `len` bytes, so the error must come
        // from the limit check, before any buffer of that size is made.
        let prefix = len.to_le_bytes();
        match read_frame(&mut &prefix[..], MAX_CONTROL_FRAME) {
            Err(FrameError::TooLarge { len: l, max }) => {
                prop_assert_eq!(l, len as usize);
                prop_assert_eq!(max, MAX_CONTROL_FRAME);
            }
            other => prop_assert!(false, "expected TooLarge, got {other:?}"),
        }
    }

    fn check_traces_round_trip_and_report_corruption_offset(envs in proptest::collection::vec(any::<Envelope>(), 1..8), cut in any::<prop::sample::Index>()) {
        let mut w = TraceWriter::new(Vec::new()).expect("header");
        let recs: Vec<TraceRecord> = envs.iter().enumerate()
            .map(|(i, e)| TraceRecord::new(i as u64, 1_000 + i as u64, e).expect("record"))
            .collect();
        for r in &recs { w.append(r).expect("append"); }
        let bytes = w.into_inner();

        let read: Vec<TraceRecord> = TraceReader::new(&bytes[..]).expect("header").map(|r| r.expect("record").1).collect();
        prop_assert_eq!(&read, &recs);
        for (r, e) in read.iter().zip(&envs) {
            prop_assert_eq!(&r.decode_envelope().expect("envelope"), e);
        }

        // Cut inside the records: every record wholly before the cut is still returned, then one
        // error names the offset where the broken record starts.
        let at = 12 + cut.index(bytes.len() - 12);
        let mut ok = 0;
        let mut err_offset = None;
        for item in TraceReader::new(&bytes[..at]).expect("header") {
            match item {
                Ok(_) => ok += 1,
                Err(crate::trace::TraceError::Corrupt { offset, .. }) => err_offset = Some(offset),
                Err(e) => prop_assert!(false, "unexpected {e}"),
            }
        }
        let mut boundaries = vec![12u64];
        for r in &recs { let last = *boundaries.last().expect("nonempty"); boundaries.push(last + encode_frame(r).expect("enc").len() as u64); }
        let complete = boundaries.iter().skip(1).filter(|b| **b <= at as u64).count();
        prop_assert_eq!(ok, complete);
        if boundaries.contains(&(at as u64)) {
            prop_assert_eq!(err_offset, None);
        } else {
            prop_assert_eq!(err_offset, Some(boundaries[complete]));
        }
    }
}

/// Strategies for the big `Body` enum are deep; debug builds need more than the default 2 MiB
/// test-thread stack to build them.
fn on_big_stack(f: fn()) {
    let t = std::thread::Builder::new()
        .stack_size(64 << 20)
        .spawn(f)
        .expect("spawn test thread");
    if let Err(panic) = t.join() {
        std::panic::resume_unwind(panic);
    }
}

#[test]
fn envelopes_round_trip() {
    on_big_stack(check_envelopes_round_trip);
}

#[test]
fn hello_round_trips() {
    on_big_stack(check_hello_round_trips);
}

#[test]
fn vsh_messages_round_trip() {
    on_big_stack(check_vsh_messages_round_trip);
}

#[test]
fn garbage_never_panics() {
    on_big_stack(check_garbage_never_panics);
}

#[test]
fn every_truncation_is_an_error() {
    on_big_stack(check_every_truncation_is_an_error);
}

#[test]
fn oversized_length_is_refused_before_allocation() {
    on_big_stack(check_oversized_length_is_refused_before_allocation);
}

#[test]
fn traces_round_trip_and_report_corruption_offset() {
    on_big_stack(check_traces_round_trip_and_report_corruption_offset);
}

#[test]
fn trailing_bytes_in_a_frame_are_refused() {
    let hello = Hello::new(crate::Addr::host("crosmsg"));
    let mut payload = postcard::to_stdvec(&hello).expect("encode");
    payload.push(0);
    assert!(decode::<Hello>(&payload).is_err());
}

#[test]
fn handshake_refuses_other_versions() {
    let mut peer = Hello::new(crate::Addr::host("old"));
    peer.version = crate::PROTOCOL_VERSION + 1;
    let err = crate::framing::check_hello(&peer).expect_err("must refuse");
    assert!(err.to_string().contains("version mismatch"), "{err}");
}
