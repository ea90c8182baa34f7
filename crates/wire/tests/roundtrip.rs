//! Round-trip property tests: every method, field tables (nested, every type), properties,
//! content headers and whole frames encode and decode back to themselves.

mod common;

use bytes::BytesMut;
use common::*;
use lockgate_wire::{BasicProperties, ContentHeader, FieldTable, Frame, FrameCodec, Method};
use proptest::prelude::*;
use tokio_util::codec::{Decoder, Encoder};

fn roundtrip_frame(frame: &Frame) -> Frame {
    let mut codec = FrameCodec::new(0);
    let mut buf = BytesMut::new();
    codec.encode(frame, &mut buf).unwrap();
    let decoded = codec.decode(&mut buf).unwrap().expect("a whole frame");
    assert!(buf.is_empty(), "decoder consumed exactly one frame");
    decoded
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(1000))]

    #[test]
    fn every_method_roundtrips(method in arb_method()) {
        let mut buf = BytesMut::new();
        method.encode(&mut buf).unwrap();
        prop_assert_eq!(&Method::decode(&buf).unwrap(), &method);
        let frame = Frame::Method { channel: 7, method };
        prop_assert_eq!(roundtrip_frame(&frame), frame);
    }
}

proptest! {
    #[test]
    fn field_tables_roundtrip(table in arb_table()) {
        let mut buf = BytesMut::new();
        table.encode(&mut buf).unwrap();
        prop_assert_eq!(FieldTable::decode(&buf).unwrap(), table);
    }

    #[test]
    fn properties_roundtrip(props in arb_properties()) {
        let mut buf = BytesMut::new();
        props.encode(&mut buf).unwrap();
        prop_assert_eq!(BasicProperties::decode(&buf).unwrap(), props);
    }

    #[test]
    fn content_headers_roundtrip_and_keep_raw(header in arb_header(), channel in any::<u16>()) {
        let frame = Frame::Header { channel, header: header.clone() };
        let Frame::Header { header: decoded, .. } = roundtrip_frame(&frame) else {
            panic!("not a header frame");
        };
        prop_assert_eq!(&decoded.raw, &header.raw);
        prop_assert_eq!(decoded.properties(), header.properties());
        prop_assert_eq!(decoded, header);
    }

    #[test]
    fn any_frame_roundtrips(frame in arb_frame()) {
        prop_assert_eq!(roundtrip_frame(&frame), frame);
    }

    #[test]
    fn frame_sequences_decode_across_any_split(
        frames in proptest::collection::vec(arb_frame(), 1..6),
        split in any::<proptest::sample::Index>(),
    ) {
        let mut codec = FrameCodec::new(0);
        let mut wire = BytesMut::new();
        for f in &frames {
            codec.encode(f, &mut wire).unwrap();
        }
        let at = split.index(wire.len() + 1);
        let mut buf = BytesMut::from(&wire[..at]);
        let mut out = Vec::new();
        while let Some(f) = codec.decode(&mut buf).unwrap() {
            out.push(f);
        }
        buf.extend_from_slice(&wire[at..]);
        while let Some(f) = codec.decode(&mut buf).unwrap() {
            out.push(f);
        }
        prop_assert!(buf.is_empty());
        prop_assert_eq!(out, frames);
    }
}

proptest! {
    #[test]
    fn content_messages_split_at_any_frame_max_reassemble(
        body in proptest::collection::vec(any::<u8>(), 0..20_000),
        frame_max in prop_oneof![Just(0u32), 4096u32..20_000],
        props in arb_properties(),
        channel in any::<u16>(),
    ) {
        let header = ContentHeader::new(60, body.len() as u64, props).unwrap();
        let method = Method::BasicDeliver(lockgate_wire::basic::Deliver {
            consumer_tag: "ctag".into(),
            delivery_tag: 9,
            ..Default::default()
        });
        let mut buf = BytesMut::new();
        // Headers with big tables may not fit a small frame_max: that must be an error, not a
        // frame over the limit.
        if lockgate_wire::encode_content(&mut buf, channel, &method, &header, &body, frame_max).is_err() {
            prop_assert!(buf.is_empty());
            return Ok(());
        }
        let mut codec = FrameCodec::new(frame_max);
        let mut frames = Vec::new();
        let mut rest = buf.clone();
        while let Some(f) = codec.decode(&mut rest).unwrap() {
            frames.push(f);
        }
        prop_assert!(rest.is_empty());
        prop_assert_eq!(&frames[0], &Frame::Method { channel, method });
        prop_assert_eq!(&frames[1], &Frame::Header { channel, header });
        let mut joined = Vec::new();
        for f in &frames[2..] {
            let Frame::Body { payload, channel: c } = f else { panic!("{f:?}") };
            prop_assert_eq!(*c, channel);
            prop_assert!(!payload.is_empty());
            if frame_max > 0 {
                prop_assert!(payload.len() + lockgate_wire::FRAME_OVERHEAD <= frame_max as usize);
            }
            joined.extend_from_slice(payload);
        }
        prop_assert_eq!(joined, body);
    }
}

#[test]
fn every_method_with_default_arguments_roundtrips() {
    let methods = all_default_methods();
    assert_eq!(
        methods.len(),
        66,
        "every method of the spec, extensions included"
    );
    for method in methods {
        let mut buf = BytesMut::new();
        method.encode(&mut buf).unwrap();
        assert_eq!(Method::decode(&buf).unwrap(), method, "{}", method.name());
        assert_eq!(
            lockgate_wire::method_name(method.class_id(), method.method_id()),
            Some(method.name())
        );
    }
}

#[test]
fn table_with_every_field_type_roundtrips() {
    let table = every_type_table();
    let mut buf = BytesMut::new();
    table.encode(&mut buf).unwrap();
    assert_eq!(FieldTable::decode(&buf).unwrap(), table);
    let header = ContentHeader::new(
        60,
        0,
        BasicProperties {
            headers: Some(table),
            ..BasicProperties::default()
        },
    )
    .unwrap();
    assert_eq!(
        roundtrip_frame(&Frame::Header {
            channel: 1,
            header: header.clone()
        }),
        Frame::Header { channel: 1, header }
    );
}

proptest! {
    #[test]
    fn borrowed_deliver_encodes_as_the_generated_method(
        consumer_tag in arb_shortstr(),
        delivery_tag in any::<u64>(),
        redelivered in any::<bool>(),
        exchange in arb_shortstr(),
        routing_key in arb_shortstr(),
        body in proptest::collection::vec(any::<u8>(), 0..10_000),
        frame_max in prop_oneof![Just(0u32), 4096u32..20_000],
        channel in any::<u16>(),
    ) {
        let header = ContentHeader::new(60, body.len() as u64, BasicProperties::default()).unwrap();
        let owned = Method::BasicDeliver(lockgate_wire::basic::Deliver {
            consumer_tag: consumer_tag.clone(),
            delivery_tag,
            redelivered,
            exchange: exchange.clone(),
            routing_key: routing_key.clone(),
        });
        let borrowed = lockgate_wire::DeliverRef {
            consumer_tag: &consumer_tag,
            delivery_tag,
            redelivered,
            exchange: &exchange,
            routing_key: &routing_key,
        };
        let mut expected = BytesMut::new();
        let expected_result =
            lockgate_wire::encode_content(&mut expected, channel, &owned, &header, &body, frame_max);
        let mut actual = BytesMut::new();
        let actual_result =
            lockgate_wire::encode_delivery(&mut actual, channel, &borrowed, &header, &body, frame_max);
        prop_assert_eq!(expected_result.is_ok(), actual_result.is_ok());
        prop_assert_eq!(expected, actual);
    }
}
