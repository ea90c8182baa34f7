//! Decoder robustness: arbitrary bytes and random mutations of valid frames never panic, never
//! loop, and never make the decoder buffer more than frame_max (a proptest-driven fuzz target).

mod common;

use bytes::{Bytes, BytesMut};
use common::{arb_frame, arb_method, arb_properties, arb_table};
use lockgate_wire::{
    BasicProperties, ContentHeader, FieldTable, Frame, FrameCodec, Method, BASIC_CLASS_ID,
};
use proptest::prelude::*;
use tokio_util::codec::{Decoder, Encoder};

/// Feeds `input` to a decoder in chunks of `chunk` octets; decoding stops at the first error.
/// Every call must consume input or ask for more.
fn drive(frame_max: u32, input: &[u8], chunk: usize) {
    let mut codec = FrameCodec::new(frame_max);
    let mut buf = BytesMut::new();
    for part in input.chunks(chunk.max(1)) {
        buf.extend_from_slice(part);
        loop {
            let before = buf.len();
            match codec.decode(&mut buf) {
                Ok(Some(_)) => assert!(buf.len() < before, "a frame consumed nothing"),
                Ok(None) => break,
                Err(e) => {
                    // Every error maps to a real reply code.
                    assert!(matches!(e.reply_code(), 501..=541), "{e}");
                    return;
                }
            }
        }
    }
}

#[derive(Clone, Debug)]
enum Mutation {
    Flip { at: prop::sample::Index, bit: u8 },
    Set { at: prop::sample::Index, value: u8 },
    Truncate { at: prop::sample::Index },
    Insert { at: prop::sample::Index, value: u8 },
    Remove { at: prop::sample::Index },
}

fn arb_mutation() -> impl Strategy<Value = Mutation> {
    prop_oneof![
        (any::<prop::sample::Index>(), 0u8..8).prop_map(|(at, bit)| Mutation::Flip { at, bit }),
        (any::<prop::sample::Index>(), any::<u8>())
            .prop_map(|(at, value)| Mutation::Set { at, value }),
        any::<prop::sample::Index>().prop_map(|at| Mutation::Truncate { at }),
        (any::<prop::sample::Index>(), any::<u8>())
            .prop_map(|(at, value)| Mutation::Insert { at, value }),
        any::<prop::sample::Index>().prop_map(|at| Mutation::Remove { at }),
    ]
}

fn mutate(bytes: &mut Vec<u8>, m: &Mutation) {
    if bytes.is_empty() {
        return;
    }
    match m {
        Mutation::Flip { at, bit } => {
            let i = at.index(bytes.len());
            bytes[i] ^= 1 << bit;
        }
        Mutation::Set { at, value } => {
            let i = at.index(bytes.len());
            bytes[i] = *value;
        }
        Mutation::Truncate { at } => bytes.truncate(at.index(bytes.len())),
        Mutation::Insert { at, value } => bytes.insert(at.index(bytes.len() + 1), *value),
        Mutation::Remove { at } => {
            bytes.remove(at.index(bytes.len()));
        }
    }
}

/// What `encode` writes, with `mutations` applied in order.
fn mutated(encode: impl FnOnce(&mut BytesMut), mutations: &[Mutation]) -> Vec<u8> {
    let mut buf = BytesMut::new();
    encode(&mut buf);
    let mut bytes = buf.to_vec();
    for m in mutations {
        mutate(&mut bytes, m);
    }
    bytes
}

/// A content message on channel 5 (`method`, a header with `props`, `body` in one frame),
/// then a heartbeat, with `mutations` applied in order.
fn mutated_content(
    method: &Method,
    props: BasicProperties,
    body: &[u8],
    mutations: &[Mutation],
) -> Vec<u8> {
    mutated(
        |wire| {
            let Ok(header) = ContentHeader::new(BASIC_CLASS_ID, body.len() as u64, props) else {
                return;
            };
            let codec = FrameCodec::new(0);
            let _ = codec.encode_content(wire, 5, method, &header, body);
            let _ = codec.encode_frame(&Frame::Heartbeat, wire);
        },
        mutations,
    )
}

/// The header and body frames on `channel` at the head of `slow`, decoded one by one where
/// a one-step decoder took a content message: the header and the body (empty without a body
/// frame).
fn decode_content(
    codec: &mut FrameCodec,
    slow: &mut BytesMut,
    channel: u16,
) -> Result<(ContentHeader, Bytes), TestCaseError> {
    let Ok(Some(Frame::Header { channel: c, header })) = codec.decode(slow) else {
        return Err(TestCaseError::fail("no header where a message was taken"));
    };
    prop_assert_eq!(c, channel);
    if header.body_size == 0 {
        return Ok((header, Bytes::new()));
    }
    let Ok(Some(Frame::Body {
        channel: c,
        payload,
    })) = codec.decode(slow)
    else {
        return Err(TestCaseError::fail("no body where a message was taken"));
    };
    prop_assert_eq!(c, channel);
    Ok((header, payload))
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(1000))]

    #[test]
    fn random_bytes_never_panic_the_decoder(
        input in proptest::collection::vec(any::<u8>(), 0..2048),
        chunk in 1usize..64,
        frame_max in prop_oneof![Just(0u32), Just(4096u32), 8u32..512],
    ) {
        drive(frame_max, &input, chunk);
    }

    #[test]
    fn random_frame_like_bytes_never_panic_the_decoder(
        frame_type in prop_oneof![Just(1u8), Just(2u8), Just(3u8), Just(8u8), any::<u8>()],
        channel in any::<u16>(),
        payload in proptest::collection::vec(any::<u8>(), 0..512),
        end in prop_oneof![Just(0xCEu8), any::<u8>()],
    ) {
        // A well-formed frame envelope around a random payload exercises the method, header and
        // property decoders rather than stopping at the frame header.
        let mut input = vec![frame_type];
        input.extend_from_slice(&channel.to_be_bytes());
        input.extend_from_slice(&(payload.len() as u32).to_be_bytes());
        input.extend_from_slice(&payload);
        input.push(end);
        drive(131_072, &input, input.len());
    }

    #[test]
    fn mutated_valid_frames_never_panic_the_decoder(
        frames in proptest::collection::vec(arb_frame(), 1..4),
        mutations in proptest::collection::vec(arb_mutation(), 1..4),
        chunk in 1usize..4096,
    ) {
        let mut codec = FrameCodec::new(0);
        let bytes = mutated(
            |wire| {
                for f in &frames {
                    codec.encode(f, wire).unwrap();
                }
            },
            &mutations,
        );
        drive(0, &bytes, chunk);
        drive(4096, &bytes, chunk);
    }

    #[test]
    fn mutated_method_payloads_never_panic(
        method in arb_method(),
        mutations in proptest::collection::vec(arb_mutation(), 1..4),
    ) {
        let bytes = mutated(|buf| method.encode(buf).unwrap(), &mutations);
        if let Err(e) = Method::decode(&bytes) {
            prop_assert!(matches!(e.reply_code(), 501 | 540), "{}", e);
        }
    }

}

proptest! {
    // Generating nested tables dominates this test's time; headers in the frame mutations above
    // cover tables too.
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn mutated_tables_and_properties_never_panic(
        table in arb_table(),
        props in arb_properties(),
        mutations in proptest::collection::vec(arb_mutation(), 1..4),
    ) {
        let bytes = mutated(|buf| table.encode(buf).unwrap(), &mutations);
        let _ = FieldTable::decode(&bytes);
        let bytes = mutated(|buf| props.encode(buf).unwrap(), &mutations);
        let _ = BasicProperties::decode(&bytes);
    }

    #[test]
    fn a_header_checks_its_properties_as_decoding_does(
        props in arb_properties(),
        mutations in proptest::collection::vec(arb_mutation(), 0..4),
    ) {
        let raw = Bytes::from(mutated(|buf| props.encode(buf).unwrap(), &mutations));
        let decoded = BasicProperties::decode(&raw);
        match ContentHeader::from_raw(BASIC_CLASS_ID, 0, raw.clone()) {
            Ok(header) => {
                let decoded = decoded.unwrap();
                let view = header.view();
                prop_assert_eq!(view.delivery_mode(), decoded.delivery_mode);
                prop_assert_eq!(view.priority(), decoded.priority);
                let (expiration, user_id) = (view.expiration(), view.user_id());
                prop_assert_eq!(expiration.as_deref(), decoded.expiration.as_deref());
                prop_assert_eq!(user_id.as_deref(), decoded.user_id.as_deref());
                prop_assert_eq!(header.properties(), &decoded);
                prop_assert_eq!(header.into_properties(), decoded);
            }
            Err(e) => prop_assert_eq!(e.to_string(), decoded.unwrap_err().to_string()),
        }
    }

    #[test]
    fn a_publish_taken_in_one_step_is_what_decode_returns(
        exchange in prop_oneof![Just(String::new()), "[a-z.]{1,12}"],
        routing_key in "[a-z.]{0,40}",
        bits in 0u8..4,
        props in arb_properties(),
        body in proptest::collection::vec(any::<u8>(), 0..300),
        mutations in proptest::collection::vec(arb_mutation(), 0..3),
        frame_max in prop_oneof![Just(0u32), Just(4096u32), 8u32..400],
    ) {
        let publish = Method::BasicPublish(lockgate_wire::basic::Publish {
            exchange,
            routing_key,
            mandatory: bits & 1 != 0,
            immediate: bits & 2 != 0,
        });
        let bytes = mutated_content(&publish, props, &body, &mutations);
        let mut codec = FrameCodec::new(frame_max);
        let mut fast = BytesMut::from(&bytes[..]);
        let Some((channel, frames)) = codec.decode_publish(&mut fast, Some) else {
            prop_assert_eq!(&fast[..], &bytes[..], "left as it was");
            return Ok(());
        };
        let mut slow = BytesMut::from(&bytes[..]);
        let Ok(Some(Frame::Method { channel: c, method: Method::BasicPublish(p) })) =
            codec.decode(&mut slow)
        else {
            return Err(TestCaseError::fail("decode_publish took what is not a publish"));
        };
        prop_assert_eq!((c, channel, frames.channel), (channel, channel, channel));
        let head = &frames.head;
        prop_assert_eq!(head.exchange(), p.exchange);
        prop_assert_eq!(head.routing_key(), p.routing_key);
        prop_assert_eq!((head.mandatory(), head.immediate()), (p.mandatory, p.immediate));
        let (header, body) = decode_content(&mut codec, &mut slow, channel)?;
        let taken = head.header();
        prop_assert_eq!(
            (taken.class_id, taken.body_size, taken.raw),
            (header.class_id, header.body_size, &header.raw[..])
        );
        prop_assert_eq!(&frames.body, &body);
        prop_assert_eq!(frames.body.len() as u64, header.body_size);
        prop_assert_eq!(&fast[..], &slow[..]);
    }

    #[test]
    fn a_delivery_taken_in_one_step_is_what_decode_returns(
        consumer_tag in "[a-z.-]{0,30}",
        exchange in prop_oneof![Just(String::new()), "[a-z.]{1,12}"],
        routing_key in "[a-z.]{0,40}",
        delivery_tag in any::<u64>(),
        redelivered in any::<bool>(),
        props in arb_properties(),
        body in proptest::collection::vec(any::<u8>(), 0..300),
        mutations in proptest::collection::vec(arb_mutation(), 0..3),
        frame_max in prop_oneof![Just(0u32), Just(4096u32), 8u32..400],
    ) {
        let deliver = Method::BasicDeliver(lockgate_wire::basic::Deliver {
            consumer_tag,
            delivery_tag,
            redelivered,
            exchange,
            routing_key,
        });
        let bytes = mutated_content(&deliver, props, &body, &mutations);
        let mut codec = FrameCodec::new(frame_max);
        let mut fast = BytesMut::from(&bytes[..]);
        let names = |channel: u16, d: &lockgate_wire::DeliverOctets<'_>| {
            Some((channel, [d.consumer_tag, d.exchange, d.routing_key].map(<[u8]>::to_vec)))
        };
        let Some(((channel, [tag, exchange, key]), frames)) =
            codec.decode_delivery(&mut fast, names)
        else {
            prop_assert_eq!(&fast[..], &bytes[..], "left as it was");
            return Ok(());
        };
        let mut slow = BytesMut::from(&bytes[..]);
        let Ok(Some(Frame::Method { channel: c, method: Method::BasicDeliver(d) })) =
            codec.decode(&mut slow)
        else {
            return Err(TestCaseError::fail("decode_delivery took what is not a delivery"));
        };
        prop_assert_eq!((c, frames.channel), (channel, channel));
        prop_assert_eq!(String::from_utf8_lossy(&tag), d.consumer_tag);
        prop_assert_eq!(String::from_utf8_lossy(&exchange), d.exchange);
        prop_assert_eq!(String::from_utf8_lossy(&key), d.routing_key);
        prop_assert_eq!((frames.delivery_tag, frames.redelivered), (d.delivery_tag, d.redelivered));
        let (header, body) = decode_content(&mut codec, &mut slow, channel)?;
        prop_assert_eq!(frames.header.properties(), header.properties());
        prop_assert_eq!(&frames.header, &header);
        prop_assert_eq!(&frames.body, &body);
        prop_assert_eq!(frames.body.len() as u64, header.body_size);
        prop_assert_eq!(&fast[..], &slow[..]);
    }

    #[test]
    fn every_truncation_of_a_method_is_an_error(method in arb_method()) {
        let mut buf = BytesMut::new();
        method.encode(&mut buf).unwrap();
        for cut in 0..buf.len() {
            prop_assert!(Method::decode(&buf[..cut]).is_err());
        }
    }
}
