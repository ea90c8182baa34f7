//! Codec edge cases: frame_max boundaries, frame-end checks, heartbeats, bodies split across
//! reads, malformed method payloads and their reply codes, content message encoding.

use bytes::{BufMut, Bytes, BytesMut};
use lockgate_wire::{
    basic, channel, connection, encode_content, queue, reply_code, BasicProperties, ContentHeader,
    FieldTable, FieldValue, Frame, FrameCodec, Method, WireError, FRAME_OVERHEAD, FRAME_SIZE_FUDGE,
    PROTOCOL_HEADER,
};
use tokio_util::codec::{Decoder, Encoder};

fn raw_frame(frame_type: u8, channel: u16, payload: &[u8]) -> BytesMut {
    let mut b = BytesMut::new();
    b.put_u8(frame_type);
    b.put_u16(channel);
    b.put_u32(payload.len() as u32);
    b.put_slice(payload);
    b.put_u8(0xCE);
    b
}

fn body_frame_of_total_size(total: usize) -> BytesMut {
    raw_frame(3, 1, &vec![7u8; total - FRAME_OVERHEAD])
}

fn decode_err(codec: &mut FrameCodec, bytes: &[u8]) -> WireError {
    let mut buf = BytesMut::from(bytes);
    match codec.decode(&mut buf) {
        Err(e) => e,
        Ok(f) => panic!("expected an error, got {f:?}"),
    }
}

fn method_payload(method: &Method) -> BytesMut {
    let mut b = BytesMut::new();
    method.encode(&mut b).unwrap();
    b
}

#[test]
fn protocol_header_is_amqp_0_9_1() {
    assert_eq!(&PROTOCOL_HEADER, b"AMQP\x00\x00\x09\x01");
}

#[test]
fn frame_exactly_at_frame_max_is_accepted() {
    let mut codec = FrameCodec::new(4096);
    let mut buf = body_frame_of_total_size(4096);
    let frame = codec.decode(&mut buf).unwrap().unwrap();
    assert_eq!(
        frame,
        Frame::Body {
            channel: 1,
            payload: Bytes::from(vec![7u8; 4088])
        }
    );
    assert!(buf.is_empty());
}

#[test]
fn frame_at_frame_max_plus_rabbitmq_fudge_is_accepted() {
    // RabbitMQ accepts payloads up to frame_max (clients that forget the 8 octets of overhead).
    let mut codec = FrameCodec::new(4096);
    let mut buf = body_frame_of_total_size(4096 + FRAME_SIZE_FUDGE);
    assert!(codec.decode(&mut buf).unwrap().is_some());
    assert!(buf.is_empty());
}

#[test]
fn frame_one_over_the_limit_is_rejected_from_its_header_alone() {
    let mut codec = FrameCodec::new(4096);
    let full = body_frame_of_total_size(4096 + FRAME_SIZE_FUDGE + 1);
    // Only the 7-octet header has arrived: the size is enough to reject it.
    let err = decode_err(&mut codec, &full[..7]);
    assert!(
        matches!(
            err,
            WireError::FrameTooLarge {
                size: 4105,
                frame_max: 4096
            }
        ),
        "{err}"
    );
    assert_eq!(err.reply_code(), reply_code::FRAME_ERROR);
}

#[test]
fn oversized_declared_size_does_not_reserve_memory() {
    let mut codec = FrameCodec::new(131_072);
    let mut buf = BytesMut::from(&[3u8, 0, 1, 0xFF, 0xFF, 0xFF, 0xFF][..]);
    let before = buf.capacity();
    assert!(matches!(
        codec.decode(&mut buf),
        Err(WireError::FrameTooLarge { .. })
    ));
    assert_eq!(buf.capacity(), before);
}

#[test]
fn unlimited_frame_max_caps_the_reservation() {
    let mut codec = FrameCodec::new(0);
    let mut buf = BytesMut::from(&[3u8, 0, 1, 0xFF, 0xFF, 0xFF, 0xFF][..]);
    assert!(codec.decode(&mut buf).unwrap().is_none());
    assert!(buf.capacity() < 4 << 20);
}

#[test]
fn set_frame_max_changes_the_limit() {
    let mut codec = FrameCodec::new(4096);
    codec.set_frame_max(8192);
    assert_eq!(codec.frame_max(), 8192);
    let mut buf = body_frame_of_total_size(8192);
    assert!(codec.decode(&mut buf).unwrap().is_some());
}

#[test]
fn bad_frame_end_is_a_frame_error() {
    let mut codec = FrameCodec::new(4096);
    let mut bytes = raw_frame(3, 1, b"abc");
    let last = bytes.len() - 1;
    bytes[last] = 0x00;
    let err = decode_err(&mut codec, &bytes);
    assert!(
        matches!(
            err,
            WireError::BadFrameEnd {
                found: 0,
                frame_type: 3,
                channel: 1
            }
        ),
        "{err}"
    );
    assert_eq!(err.reply_code(), reply_code::FRAME_ERROR);
}

#[test]
fn heartbeat_on_channel_0_decodes() {
    let mut codec = FrameCodec::new(4096);
    let mut buf = raw_frame(8, 0, b"");
    assert_eq!(codec.decode(&mut buf).unwrap(), Some(Frame::Heartbeat));
    assert!(buf.is_empty());
}

#[test]
fn heartbeat_on_channel_1_is_unexpected_frame() {
    let mut codec = FrameCodec::new(4096);
    let err = decode_err(&mut codec, &raw_frame(8, 1, b""));
    assert!(
        matches!(err, WireError::HeartbeatOnChannel { channel: 1 }),
        "{err}"
    );
    assert_eq!(err.reply_code(), reply_code::UNEXPECTED_FRAME);
}

#[test]
fn heartbeat_with_payload_is_a_frame_error() {
    let mut codec = FrameCodec::new(4096);
    let err = decode_err(&mut codec, &raw_frame(8, 0, b"x"));
    assert_eq!(err.reply_code(), reply_code::FRAME_ERROR);
}

#[test]
fn unknown_frame_type_is_a_frame_error() {
    let mut codec = FrameCodec::new(4096);
    let err = decode_err(&mut codec, &raw_frame(4, 0, b""));
    assert!(
        matches!(
            err,
            WireError::UnknownFrameType {
                frame_type: 4,
                channel: 0
            }
        ),
        "{err}"
    );
    assert_eq!(err.reply_code(), reply_code::FRAME_ERROR);
    // A protocol header sent mid-stream is not a frame either.
    let err = decode_err(&mut codec, b"AMQP\x00\x00\x09\x01");
    assert_eq!(err.reply_code(), reply_code::FRAME_ERROR);
}

#[test]
fn partial_frames_need_more_bytes() {
    let mut codec = FrameCodec::new(4096);
    let full = raw_frame(3, 2, b"hello");
    for cut in 0..full.len() {
        let mut buf = BytesMut::from(&full[..cut]);
        assert_eq!(codec.decode(&mut buf).unwrap(), None, "cut at {cut}");
        assert_eq!(buf.len(), cut, "nothing consumed");
    }
}

#[test]
fn body_split_across_reads_is_one_zero_copy_slice() {
    let mut codec = FrameCodec::new(131_072);
    let body = vec![42u8; 10_000];
    let wire = raw_frame(3, 5, &body);
    let mut buf = BytesMut::with_capacity(wire.len());
    let mut frames = Vec::new();
    for chunk in wire.chunks(777) {
        buf.extend_from_slice(chunk);
        if let Some(f) = codec.decode(&mut buf).unwrap() {
            frames.push(f);
        }
    }
    assert_eq!(
        frames,
        vec![Frame::Body {
            channel: 5,
            payload: Bytes::from(body)
        }]
    );
}

#[test]
fn body_is_not_copied_out_of_the_read_buffer() {
    let mut codec = FrameCodec::new(4096);
    let mut buf = raw_frame(3, 1, b"payload");
    let start = buf.as_ptr() as usize;
    let Some(Frame::Body { payload, .. }) = codec.decode(&mut buf).unwrap() else {
        panic!("expected a body frame");
    };
    assert_eq!(
        payload.as_ptr() as usize,
        start + 7,
        "payload points into the read buffer"
    );
}

#[test]
fn several_frames_in_one_buffer_decode_in_order() {
    let mut codec = FrameCodec::new(4096);
    let mut buf = BytesMut::new();
    let open = Frame::Method {
        channel: 1,
        method: Method::ChannelOpen(channel::Open::default()),
    };
    codec.encode(&open, &mut buf).unwrap();
    codec.encode(Frame::Heartbeat, &mut buf).unwrap();
    codec
        .encode(
            Frame::Body {
                channel: 1,
                payload: Bytes::from_static(b"x"),
            },
            &mut buf,
        )
        .unwrap();
    assert_eq!(codec.decode(&mut buf).unwrap(), Some(open));
    assert_eq!(codec.decode(&mut buf).unwrap(), Some(Frame::Heartbeat));
    assert!(matches!(
        codec.decode(&mut buf).unwrap(),
        Some(Frame::Body { .. })
    ));
    assert_eq!(codec.decode(&mut buf).unwrap(), None);
}

#[test]
fn pika_style_publish_decodes() {
    // basic.publish(exchange="", routing_key="hello"), as pika writes it.
    let payload = b"\x00\x3c\x00\x28\x00\x00\x00\x05hello\x00";
    let mut codec = FrameCodec::new(131_072);
    let mut buf = raw_frame(1, 1, payload);
    let frame = codec.decode(&mut buf).unwrap().unwrap();
    assert_eq!(
        frame,
        Frame::Method {
            channel: 1,
            method: Method::BasicPublish(basic::Publish {
                exchange: String::new(),
                routing_key: "hello".into(),
                mandatory: false,
                immediate: false,
            }),
        }
    );
}

#[test]
fn bits_pack_into_one_octet_in_spec_order() {
    let m = Method::QueueDeclare(queue::Declare {
        queue: "q".into(),
        passive: true,
        durable: false,
        exclusive: true,
        auto_delete: false,
        nowait: true,
        arguments: FieldTable::new(),
    });
    let b = method_payload(&m);
    // class, method, ticket, shortstr "q", one octet of bits, empty table.
    assert_eq!(&b[..], b"\x00\x32\x00\x0a\x00\x00\x01q\x15\x00\x00\x00\x00");
}

#[test]
fn truncated_method_payload_is_a_frame_error_with_context() {
    let m = Method::BasicPublish(basic::Publish {
        exchange: "ex".into(),
        routing_key: "rk".into(),
        ..Default::default()
    });
    let full = method_payload(&m);
    for cut in 0..full.len() {
        let err = Method::decode(&full[..cut]).unwrap_err();
        assert_eq!(
            err.reply_code(),
            reply_code::FRAME_ERROR,
            "cut {cut}: {err}"
        );
    }
    let err = Method::decode(&full[..6]).unwrap_err();
    assert_eq!(
        err.to_string(),
        "cannot decode basic.publish: truncated exchange at offset 6: need 1 octets, have 0"
    );
}

#[test]
fn shortstr_running_past_the_end_is_rejected() {
    // queue.delete with a queue name claiming 200 octets.
    let payload = b"\x00\x32\x00\x28\x00\x00\xc8abc";
    let err = Method::decode(payload).unwrap_err();
    assert!(
        matches!(&err, WireError::Method { method: "queue.delete", source, .. } if matches!(**source, WireError::Truncated { need: 200, have: 3, .. })),
        "{err}"
    );
    // RabbitMQ's connection.close names the method it "cannot decode".
    assert_eq!(err.method_ids(), Some((50, 40)));
    assert_eq!(err.reply_code(), reply_code::FRAME_ERROR);
}

#[test]
fn trailing_garbage_after_arguments_is_rejected() {
    let mut b = method_payload(&Method::BasicAck(basic::Ack {
        delivery_tag: 1,
        multiple: false,
    }));
    b.put_u8(0);
    let err = Method::decode(&b).unwrap_err();
    assert_eq!(err.reply_code(), reply_code::FRAME_ERROR);
    assert!(err.to_string().contains("trailing"), "{err}");
}

#[test]
fn bad_field_table_tag_is_rejected() {
    // queue.declare whose arguments table holds key "k" with tag 'Z'.
    let mut b = BytesMut::from(&b"\x00\x32\x00\x0a\x00\x00\x01q\x00"[..]);
    b.put_u32(3);
    b.put_slice(b"\x01kZ");
    let err = Method::decode(&b).unwrap_err();
    let WireError::Method { source, .. } = &err else {
        panic!("{err}")
    };
    assert!(
        matches!(
            **source,
            WireError::BadFieldType {
                tag: b'Z',
                offset: 15
            }
        ),
        "{err}"
    );
    assert_eq!(err.reply_code(), reply_code::FRAME_ERROR);
}

#[test]
fn invalid_utf8_in_content_method_or_properties_is_accepted_like_rabbitmq() {
    // basic.publish with routing key 0xff: RabbitMQ skips the UTF-8 check on content methods.
    let payload = b"\x00\x3c\x00\x28\x00\x00\x00\x01\xff\x00";
    let Method::BasicPublish(p) = Method::decode(payload).unwrap() else {
        panic!("not a publish")
    };
    assert_eq!(p.routing_key, "\u{fffd}");
    let props = BasicProperties::decode(b"\x80\x00\x01\xfe").unwrap();
    assert_eq!(props.content_type.as_deref(), Some("\u{fffd}"));
}

#[test]
fn invalid_utf8_shortstr_is_rejected() {
    let payload = b"\x00\x32\x00\x28\x00\x00\x02\xff\xfe\x00";
    assert_eq!(
        Method::decode(payload).unwrap_err().reply_code(),
        reply_code::FRAME_ERROR
    );
}

#[test]
fn unknown_class_and_method_are_not_implemented() {
    let err = Method::decode(b"\x00\x3c\x00\x63").unwrap_err();
    assert!(matches!(
        err,
        WireError::UnknownMethod {
            class_id: 60,
            method_id: 99
        }
    ));
    assert_eq!(err.reply_code(), reply_code::NOT_IMPLEMENTED);
    assert_eq!(err.method_ids(), Some((60, 99)));
    let err = Method::decode(b"\x00\x63\x00\x0a").unwrap_err();
    assert!(matches!(
        err,
        WireError::UnknownClass {
            class_id: 99,
            method_id: 10
        }
    ));
    assert_eq!(err.reply_code(), reply_code::NOT_IMPLEMENTED);
}

#[test]
fn l_and_capital_l_both_read_as_i64() {
    let mut b = BytesMut::new();
    b.put_u32(2 * 11);
    b.put_slice(b"\x01al\xff\xff\xff\xff\xff\xff\xff\xfe");
    b.put_slice(b"\x01bL\x00\x00\x00\x00\x00\x00\x00\x05");
    let t = FieldTable::decode(&b).unwrap();
    assert_eq!(t.get("a"), Some(&FieldValue::I64(-2)));
    assert_eq!(t.get("b"), Some(&FieldValue::I64(5)));
}

#[test]
fn deeply_nested_tables_are_rejected_not_overflowed() {
    // An array value nested `depth` arrays deep: 'A' + u32 length + the inner value.
    fn nested_array(depth: usize) -> BytesMut {
        let mut value = BytesMut::from(&b"A\x00\x00\x00\x00"[..]);
        for _ in 0..depth {
            let mut outer = BytesMut::new();
            outer.put_u8(b'A');
            outer.put_u32(value.len() as u32);
            outer.put_slice(&value);
            value = outer;
        }
        value
    }
    fn table_holding(value: &[u8]) -> BytesMut {
        let mut table = BytesMut::new();
        table.put_u32(value.len() as u32 + 2);
        table.put_slice(b"\x01k");
        table.put_slice(value);
        table
    }
    // The table is level 1, so MAX_NESTING - 1 arrays fit.
    let ok = table_holding(&nested_array(lockgate_wire::MAX_NESTING - 2));
    assert!(FieldTable::decode(&ok).is_ok());
    let too_deep = table_holding(&nested_array(lockgate_wire::MAX_NESTING - 1));
    let err = FieldTable::decode(&too_deep).unwrap_err();
    assert!(
        matches!(err, WireError::NestingTooDeep { max: 64, .. }),
        "{err}"
    );
    let hostile = table_holding(&nested_array(10_000));
    let err = FieldTable::decode(&hostile).unwrap_err();
    assert!(matches!(err, WireError::NestingTooDeep { .. }), "{err}");
    assert_eq!(err.reply_code(), reply_code::FRAME_ERROR);
}

#[test]
fn shortstr_over_255_octets_is_an_encode_error_not_a_truncation() {
    let m = Method::QueueDeclare(queue::Declare {
        queue: "q".repeat(256),
        ..Default::default()
    });
    let mut codec = FrameCodec::new(0);
    let mut buf = BytesMut::from(&b"keep"[..]);
    let err = codec
        .encode(
            Frame::Method {
                channel: 1,
                method: m,
            },
            &mut buf,
        )
        .unwrap_err();
    assert!(
        matches!(err, WireError::ShortStrTooLong { len: 256, .. }),
        "{err}"
    );
    assert_eq!(&buf[..], b"keep", "nothing half-written");
    let props = BasicProperties {
        message_id: Some("m".repeat(300)),
        ..Default::default()
    };
    assert!(ContentHeader::new(60, 0, props).is_err());
}

#[test]
fn encoding_a_frame_over_frame_max_is_an_error() {
    let mut codec = FrameCodec::new(4096);
    let mut buf = BytesMut::new();
    let err = codec
        .encode(
            Frame::Body {
                channel: 1,
                payload: Bytes::from(vec![0u8; 4089]),
            },
            &mut buf,
        )
        .unwrap_err();
    assert!(
        matches!(
            err,
            WireError::EncodeTooLarge {
                size: 4097,
                frame_max: 4096
            }
        ),
        "{err}"
    );
    assert!(buf.is_empty());
    codec
        .encode(
            Frame::Body {
                channel: 1,
                payload: Bytes::from(vec![0u8; 4088]),
            },
            &mut buf,
        )
        .unwrap();
    assert_eq!(buf.len(), 4096);
}

#[test]
fn property_flags_and_continuation() {
    let mut b = BytesMut::new();
    b.put_u16(0x8000 | 1); // content-type present, continuation
    b.put_u16(0); // empty continuation word
    b.put_u8(4);
    b.put_slice(b"text");
    let p = BasicProperties::decode(&b).unwrap();
    assert_eq!(p.content_type.as_deref(), Some("text"));
    // A continuation word naming properties basic does not have.
    let err = BasicProperties::decode(b"\x00\x01\x80\x00").unwrap_err();
    assert!(
        matches!(
            err,
            WireError::BadPropertyFlags {
                flags: 0x8000,
                word: 1
            }
        ),
        "{err}"
    );
    // Bit 1 of the first word would be a 15th property.
    assert!(BasicProperties::decode(b"\x00\x02").is_err());
    // Trailing octets after the last property.
    assert!(BasicProperties::decode(b"\x00\x00\x00").is_err());
}

#[test]
fn properties_use_rabbitmq_flag_order() {
    let p = BasicProperties {
        delivery_mode: Some(2),
        kind: Some("t".into()),
        ..Default::default()
    };
    let mut b = BytesMut::new();
    p.encode(&mut b).unwrap();
    assert_eq!(&b[..], b"\x10\x20\x02\x01t");
    assert!(p.is_persistent());
}

#[test]
fn content_header_raw_is_resent_verbatim() {
    let mut codec = FrameCodec::new(4096);
    // Flags with an empty continuation word: not what we would encode, so re-sending must use raw.
    let mut payload = BytesMut::new();
    payload.put_u16(60);
    payload.put_u16(0);
    payload.put_u64(3);
    payload.put_slice(b"\x80\x01\x00\x00\x04text");
    let wire = raw_frame(2, 1, &payload);
    let mut buf = wire.clone();
    let frame = codec.decode(&mut buf).unwrap().unwrap();
    let mut out = BytesMut::new();
    codec.encode(&frame, &mut out).unwrap();
    assert_eq!(out, wire);
}

#[test]
fn header_for_a_class_without_content_is_unexpected() {
    let mut codec = FrameCodec::new(4096);
    let mut payload = BytesMut::new();
    payload.put_u16(50);
    payload.put_u16(0);
    payload.put_u64(0);
    payload.put_u16(0);
    let err = decode_err(&mut codec, &raw_frame(2, 1, &payload));
    assert_eq!(err.reply_code(), reply_code::UNEXPECTED_FRAME);
    let err = decode_err(
        &mut codec,
        &raw_frame(2, 1, b"\x00\x3c\x00\x01\0\0\0\0\0\0\0\0\0\0"),
    );
    assert!(
        matches!(
            err,
            WireError::BadContentWeight {
                channel: 1,
                weight: 1
            }
        ),
        "{err}"
    );
    assert_eq!(err.reply_code(), reply_code::UNEXPECTED_FRAME);
    let err = decode_err(&mut codec, &raw_frame(2, 1, b"\x00\x3c\x00"));
    assert_eq!(err.reply_code(), reply_code::FRAME_ERROR);
}

fn decode_all(codec: &mut FrameCodec, buf: &mut BytesMut) -> Vec<Frame> {
    let mut out = Vec::new();
    while let Some(f) = codec.decode(buf).unwrap() {
        out.push(f);
    }
    out
}

#[test]
fn content_message_is_split_so_no_frame_exceeds_frame_max() {
    let frame_max = 4096u32;
    let body: Vec<u8> = (0..10_000u32).map(|i| i as u8).collect();
    let header = ContentHeader::new(60, body.len() as u64, BasicProperties::default()).unwrap();
    let deliver = Method::BasicDeliver(basic::Deliver {
        consumer_tag: "ctag".into(),
        delivery_tag: 1,
        redelivered: false,
        exchange: "".into(),
        routing_key: "q".into(),
    });
    let mut buf = BytesMut::new();
    encode_content(&mut buf, 3, &deliver, &header, &body, frame_max).unwrap();
    let mut codec = FrameCodec::new(frame_max);
    let frames = decode_all(&mut codec, &mut buf);
    assert_eq!(
        frames.len(),
        2 + 3,
        "10_000 octets in 4088-octet frames is 3 body frames"
    );
    assert_eq!(
        frames[0],
        Frame::Method {
            channel: 3,
            method: deliver
        }
    );
    assert_eq!(frames[1], Frame::Header { channel: 3, header });
    let mut joined = Vec::new();
    for f in &frames[2..] {
        let Frame::Body {
            channel: 3,
            payload,
        } = f
        else {
            panic!("{f:?}")
        };
        assert!(payload.len() <= frame_max as usize - FRAME_OVERHEAD);
        joined.extend_from_slice(payload);
    }
    assert_eq!(joined, body);
}

#[test]
fn empty_body_sends_no_body_frame() {
    let header = ContentHeader::new(60, 0, BasicProperties::default()).unwrap();
    let publish = Method::BasicPublish(basic::Publish::default());
    let codec = FrameCodec::new(4096);
    let mut buf = BytesMut::new();
    codec
        .encode_content(&mut buf, 1, &publish, &header, b"")
        .unwrap();
    let mut codec = codec;
    assert_eq!(decode_all(&mut codec, &mut buf).len(), 2);
}

#[test]
fn body_exactly_one_frame_payload_is_one_frame() {
    let body = vec![1u8; 4088];
    let header = ContentHeader::new(60, body.len() as u64, BasicProperties::default()).unwrap();
    let mut buf = BytesMut::new();
    encode_content(
        &mut buf,
        1,
        &Method::BasicPublish(basic::Publish::default()),
        &header,
        &body,
        4096,
    )
    .unwrap();
    let mut codec = FrameCodec::new(4096);
    assert_eq!(decode_all(&mut codec, &mut buf).len(), 3);
}

#[test]
fn connection_start_as_rabbitmq_sends_it() {
    let mut caps = FieldTable::new();
    caps.insert("publisher_confirms", true);
    caps.insert("exchange_exchange_bindings", true);
    caps.insert("basic.nack", true);
    caps.insert("consumer_cancel_notify", true);
    let mut props = FieldTable::new();
    props.insert("capabilities", caps);
    props.insert("product", "lockgate");
    let start = Method::ConnectionStart(connection::Start {
        version_major: 0,
        version_minor: 9,
        server_properties: props,
        mechanisms: Bytes::from_static(b"PLAIN AMQPLAIN"),
        locales: Bytes::from_static(b"en_US"),
    });
    assert!(start.is_synchronous());
    assert!(!start.has_content());
    assert_eq!(start.name(), "connection.start");
    let mut codec = FrameCodec::default();
    let mut buf = BytesMut::new();
    codec
        .encode(
            Frame::Method {
                channel: 0,
                method: start.clone(),
            },
            &mut buf,
        )
        .unwrap();
    assert_eq!(
        codec.decode(&mut buf).unwrap(),
        Some(Frame::Method {
            channel: 0,
            method: start
        })
    );
}

#[test]
fn reply_code_names_and_scopes() {
    assert_eq!(reply_code::name(reply_code::NOT_FOUND), Some("NOT_FOUND"));
    assert!(reply_code::is_soft_error(reply_code::PRECONDITION_FAILED));
    assert!(!reply_code::is_soft_error(reply_code::FRAME_ERROR));
    assert_eq!(reply_code::NO_ROUTE, 312);
    assert_eq!(reply_code::INVALID_PATH, 402);
}

#[test]
fn frame_max_too_small_for_any_body_octet_is_an_error_not_a_panic() {
    let header = ContentHeader::new(60, 1, BasicProperties::default()).unwrap();
    let publish = Method::BasicPublish(basic::Publish::default());
    for frame_max in [1u32, 8] {
        let mut buf = BytesMut::from(&b"keep"[..]);
        let err = encode_content(&mut buf, 1, &publish, &header, b"x", frame_max).unwrap_err();
        assert!(matches!(err, WireError::EncodeTooLarge { .. }), "{err}");
        assert_eq!(&buf[..], b"keep");
    }
}

#[test]
fn method_frame_over_frame_max_is_not_written() {
    let mut table = FieldTable::new();
    table.insert("big", FieldValue::LongString(Bytes::from(vec![b'x'; 5000])));
    let declare = Method::QueueDeclare(queue::Declare {
        queue: "q".into(),
        arguments: table,
        ..Default::default()
    });
    let mut codec = FrameCodec::new(4096);
    let mut buf = BytesMut::new();
    let err = codec
        .encode(
            Frame::Method {
                channel: 1,
                method: declare,
            },
            &mut buf,
        )
        .unwrap_err();
    assert!(matches!(err, WireError::EncodeTooLarge { .. }), "{err}");
    assert!(buf.is_empty());
}

#[test]
fn amqplain_response_decodes_as_table_entries() {
    let response = b"\x05LOGINS\x00\x00\x00\x05guest\x08PASSWORDS\x00\x00\x00\x05guest";
    let t = FieldTable::decode_entries(response).unwrap();
    assert_eq!(t.get("LOGIN").and_then(FieldValue::as_str), Some("guest"));
    assert_eq!(
        t.get("PASSWORD").and_then(FieldValue::as_str),
        Some("guest")
    );
    assert!(FieldTable::decode_entries(&response[..10]).is_err());
}

#[test]
fn content_with_a_body_size_mismatch_is_an_error() {
    let header = ContentHeader::new(60, 3, BasicProperties::default()).unwrap();
    let mut buf = BytesMut::new();
    let err = encode_content(
        &mut buf,
        1,
        &Method::BasicPublish(basic::Publish::default()),
        &header,
        b"toolong",
        4096,
    )
    .unwrap_err();
    assert!(
        matches!(
            err,
            WireError::BodySizeMismatch {
                declared: 3,
                actual: 7
            }
        ),
        "{err}"
    );
    assert!(buf.is_empty());
}

#[test]
fn every_contract_reply_code_exists() {
    use reply_code::*;
    let codes = [
        REPLY_SUCCESS,
        CONTENT_TOO_LARGE,
        NO_ROUTE,
        NO_CONSUMERS,
        CONNECTION_FORCED,
        INVALID_PATH,
        ACCESS_REFUSED,
        NOT_FOUND,
        RESOURCE_LOCKED,
        PRECONDITION_FAILED,
        FRAME_ERROR,
        SYNTAX_ERROR,
        COMMAND_INVALID,
        CHANNEL_ERROR,
        UNEXPECTED_FRAME,
        RESOURCE_ERROR,
        NOT_ALLOWED,
        NOT_IMPLEMENTED,
        INTERNAL_ERROR,
    ];
    assert_eq!(
        codes,
        [
            200, 311, 312, 313, 320, 402, 403, 404, 405, 406, 501, 502, 503, 504, 505, 506, 530,
            540, 541
        ]
    );
    assert!(codes.iter().all(|c| name(*c).is_some()));
}

#[test]
fn duplicate_table_keys_keep_the_first_value_like_rabbitmq() {
    let mut b = BytesMut::new();
    b.put_u32(2 * 7);
    b.put_slice(b"\x01kI\x00\x00\x00\x01");
    b.put_slice(b"\x01kI\x00\x00\x00\x02");
    let t = FieldTable::decode(&b).unwrap();
    assert_eq!(t.len(), 1);
    assert_eq!(t.get("k"), Some(&FieldValue::I32(1)));
}

#[test]
fn header_rebuilt_from_stored_raw_equals_the_original() {
    let props = BasicProperties {
        delivery_mode: Some(2),
        headers: Some(
            [("x-death".to_string(), FieldValue::Array(vec![]))]
                .into_iter()
                .collect(),
        ),
        ..Default::default()
    };
    let header = ContentHeader::new(60, 42, props).unwrap();
    let rebuilt = ContentHeader::from_raw(60, 42, header.raw.clone()).unwrap();
    assert_eq!(rebuilt, header);
    assert!(ContentHeader::from_raw(60, 42, bytes::Bytes::from_static(b"\x80")).is_err());
}
