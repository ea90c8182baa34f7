//! Codec throughput: encoding and decoding the frames of `basic.publish` and
//! `basic.deliver` content messages (method + header + body), in messages per
//! second. Run with `cargo bench -p lockgate-wire --bench codec`.

use bytes::{Bytes, BytesMut};
use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use lockgate_wire::{
    basic, encode_content, encode_delivery, BasicProperties, ContentHeader, DeliverRef, Frame,
    FrameCodec, Method, BASIC_CLASS_ID,
};
use tokio_util::codec::Decoder;

const FRAME_MAX: u32 = 131_072;
const BATCH: usize = 1000;

fn publish() -> Method {
    Method::BasicPublish(basic::Publish {
        exchange: "amq.direct".into(),
        routing_key: "orders.placed".into(),
        ..basic::Publish::default()
    })
}

fn deliver(tag: u64) -> Method {
    Method::BasicDeliver(basic::Deliver {
        consumer_tag: "amq.ctag-0123456789abcdef".into(),
        delivery_tag: tag,
        redelivered: false,
        exchange: "amq.direct".into(),
        routing_key: "orders.placed".into(),
    })
}

fn header(size: usize) -> ContentHeader {
    let properties = BasicProperties {
        content_type: Some("application/octet-stream".into()),
        delivery_mode: Some(2),
        ..BasicProperties::default()
    };
    ContentHeader::new(BASIC_CLASS_ID, size as u64, properties).expect("valid header")
}

/// `BATCH` content messages built by `method(i)`, encoded into one buffer.
fn encoded(size: usize, method: impl Fn(u64) -> Method) -> BytesMut {
    let header = header(size);
    let body = vec![0x5a; size];
    let mut buf = BytesMut::new();
    for i in 0..BATCH as u64 {
        encode_content(&mut buf, 1, &method(i), &header, &body, FRAME_MAX).expect("encodes");
    }
    buf
}

fn encode(c: &mut Criterion) {
    let mut group = c.benchmark_group("encode");
    group.throughput(Throughput::Elements(BATCH as u64));
    for size in [16usize, 1024] {
        let header = header(size);
        let body = Bytes::from(vec![0x5a; size]);
        let publish = publish();
        group.bench_function(format!("publish/{size}B"), |b| {
            let mut buf = BytesMut::with_capacity(BATCH * (size + 128));
            b.iter(|| {
                buf.clear();
                for _ in 0..BATCH {
                    encode_content(&mut buf, 1, &publish, &header, &body, FRAME_MAX)
                        .expect("encodes");
                }
                buf.len()
            });
        });
        // Built beforehand: the string allocations of a `Deliver` are the
        // server's, not the encoder's.
        let delivers: Vec<Method> = (0..BATCH as u64).map(deliver).collect();
        group.bench_function(format!("deliver/{size}B"), |b| {
            let mut buf = BytesMut::with_capacity(BATCH * (size + 160));
            b.iter(|| {
                buf.clear();
                for method in &delivers {
                    encode_content(&mut buf, 1, method, &header, &body, FRAME_MAX)
                        .expect("encodes");
                }
                buf.len()
            });
        });
        // What the server writes: the arguments borrowed from the message and the consumer.
        group.bench_function(format!("deliver-ref/{size}B"), |b| {
            let mut buf = BytesMut::with_capacity(BATCH * (size + 160));
            b.iter(|| {
                buf.clear();
                for tag in 0..BATCH as u64 {
                    let deliver = DeliverRef {
                        consumer_tag: "amq.ctag-0123456789abcdef",
                        delivery_tag: tag,
                        redelivered: false,
                        exchange: "amq.direct",
                        routing_key: "orders.placed",
                    };
                    encode_delivery(&mut buf, 1, &deliver, &header, &body, FRAME_MAX)
                        .expect("encodes");
                }
                buf.len()
            });
        });
    }
    group.finish();
}

fn decode_all(codec: &mut FrameCodec, mut buf: BytesMut) -> usize {
    let mut frames = 0;
    while let Some(frame) = codec.decode(&mut buf).expect("decodes") {
        if matches!(frame, Frame::Body { .. }) {
            frames += 1;
        }
    }
    frames
}

fn decode(c: &mut Criterion) {
    let mut group = c.benchmark_group("decode");
    group.throughput(Throughput::Elements(BATCH as u64));
    for size in [16usize, 1024] {
        let publishes = encoded(size, |_| publish());
        let deliveries = encoded(size, deliver);
        let mut codec = FrameCodec::new(FRAME_MAX);
        assert_eq!(decode_all(&mut codec, publishes.clone()), BATCH);
        group.bench_function(format!("publish/{size}B"), |b| {
            b.iter_batched(
                || publishes.clone(),
                |buf| decode_all(&mut codec, buf),
                BatchSize::SmallInput,
            );
        });
        group.bench_function(format!("deliver/{size}B"), |b| {
            b.iter_batched(
                || deliveries.clone(),
                |buf| decode_all(&mut codec, buf),
                BatchSize::SmallInput,
            );
        });
    }
    group.finish();
}

criterion_group!(benches, encode, decode);
criterion_main!(benches);
