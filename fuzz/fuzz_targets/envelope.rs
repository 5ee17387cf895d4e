//! Fuzzes what every socket peer sends first: the framed Hello and the framed envelopes after
//! it, as the bus, the guest bridges and maitred decode them; actor addresses in their text
//! form; and the JSON request bodies `crosmsg send` parses. Nothing may panic, and whatever
//! decodes must encode back to the same message (an address, print back the same text).

#![no_main]

use cros_messages::framing::{MAX_CONTROL_FRAME, check_hello, decode, encode_frame, read_message};
use cros_messages::{ActorKind, Addr, Envelope, FrameError, Hello};
use libfuzzer_sys::fuzz_target;

/// Decodes `payload` as `T`; if it decodes, its encoding decodes to the same value.
fn round_trip<T>(payload: &[u8]) -> Option<T>
where
    T: serde::Serialize + serde::de::DeserializeOwned + PartialEq + std::fmt::Debug,
{
    let msg: T = decode(payload).ok()?;
    let frame = encode_frame(&msg).expect("a decoded message encodes");
    let again: T = decode(&frame[4..]).expect("an encoded message decodes");
    assert_eq!(again, msg);
    Some(msg)
}

fuzz_target!(|data: &[u8]| {
    if let Some(hello) = round_trip::<Hello>(data) {
        let _ = check_hello(&hello);
        let _ = hello.actor.to_string();
    }
    if let Some(env) = round_trip::<Envelope>(data) {
        let _ = env.body.type_name();
        let _ = env.body.kind();
        let _ = env.body.request_target();
        let _ = env.body.inner_json();
        let _ = env.reply(1, env.body.clone());
    }

    // The same bytes as a stream: a Hello frame, then envelopes until the first bad frame.
    let mut stream = data;
    if read_message::<Hello>(&mut stream, MAX_CONTROL_FRAME).is_ok() {
        loop {
            match read_message::<Envelope>(&mut stream, MAX_CONTROL_FRAME) {
                Ok(_) | Err(FrameError::Decode(_)) => {}
                Err(_) => break,
            }
        }
    }

    // Addresses as users type them (`maitred@termina`): what parses prints back the same.
    if let Ok(text) = std::str::from_utf8(data)
        && let Ok(addr) = text.parse::<Addr>()
    {
        assert_eq!(addr.to_string(), text);
    }

    // crosmsg's JSON bodies: the first byte picks the actor.
    if let (Some(&pick), Ok(json)) = (
        data.first(),
        std::str::from_utf8(data.get(1..).unwrap_or_default()),
    ) {
        let actors = [
            ActorKind::Bus,
            ActorKind::Imageloader,
            ActorKind::Concierge,
            ActorKind::Cicerone,
            ActorKind::Seneschal,
            ActorKind::VmlogForwarder,
            ActorKind::Maitred,
            ActorKind::Tremplin,
            ActorKind::Garcon,
            ActorKind::Crosvm,
            ActorKind::Patchpanel,
        ];
        let actor = actors[usize::from(pick) % actors.len()];
        if let Ok(body) = cros_messages::Body::request_from_json(actor, json) {
            let _ = body.inner_json();
        }
    }
});
