//! The writer task: owns the socket's write half and turns [`Outbound`] messages into bytes.
//!
//! Replies and deliveries arrive on one unbounded mpsc, so they leave in the order they were
//! queued: the reader queues consume-ok before the broker can deliver to the new consumer. The
//! writer encodes everything that is ready into one buffer and writes it with one syscall when
//! the queue runs dry, instead of flushing per frame.

use std::io;
use std::sync::Arc;
use std::time::Duration;

use bytes::BytesMut;
use lockgate_broker::{Delivery, Message};
use lockgate_wire::{DeliverOctets, Frame, FrameCodec, Method};
use tokio::io::{AsyncWrite, AsyncWriteExt};
use tokio::sync::mpsc::UnboundedReceiver;

/// Flush before the buffer grows past this, even if more is queued.
const MAX_BATCH: usize = 1 << 20;
/// The first write of a batch goes out once this much is encoded, without waiting for the
/// rest: the writer had run dry, so the client may be idle too, and it starts on these
/// deliveries (and acks them sooner) while the writer encodes the others.
const FIRST_FLUSH: usize = 16 * 1024;
/// A buffer that grew past this (a burst of deliveries) is released once the writer has had
/// nothing to write for [`RELEASE_AFTER`]: otherwise every connection that once had a burst
/// would keep its largest batch resident for as long as it lives.
const KEEP_IDLE: usize = 64 * 1024;
/// See [`KEEP_IDLE`].
const RELEASE_AFTER: Duration = Duration::from_secs(1);

/// Something the connection sends to its client.
#[derive(Debug)]
pub enum Outbound {
    /// A frame without content (methods, heartbeats). Boxed, like the method below, so that
    /// the queue's slots stay the size of a delivery, the common case.
    Frame(Box<Frame>),
    /// A content-bearing method (basic.return, basic.get-ok) and the message it carries.
    Content {
        /// Channel number.
        channel: u16,
        /// The method frame's method.
        method: Box<Method>,
        /// The message: its stored header bytes and body are written as they are.
        message: Arc<Message>,
    },
    /// A basic.deliver for a consumer.
    Deliver {
        /// Channel number.
        channel: u16,
        /// What the broker delivered.
        delivery: Delivery,
    },
    /// Several basic.delivers for a channel, in order: what a queue's drain handed over
    /// together (one send instead of one per delivery).
    Deliveries {
        /// Channel number.
        channel: u16,
        /// What the broker delivered.
        deliveries: Vec<Delivery>,
    },
    /// From now on split bodies at this frame size (after connection.tune-ok).
    FrameMax(u32),
    /// Send nothing queued after this until the store commit completes (replies that
    /// promise durability). What was queued before goes out first.
    AfterCommit(lockgate_store::Commit),
    /// Write what is queued and stop, leaving the socket open.
    Shutdown,
}

impl Outbound {
    /// A method frame.
    pub fn method(channel: u16, method: impl Into<Method>) -> Self {
        Self::Frame(Box::new(Frame::Method {
            channel,
            method: method.into(),
        }))
    }
}

/// Runs until [`Outbound::Shutdown`], until every sender is gone, or until a write fails.
/// Returns the write half, everything written and the socket still open: when to close it is
/// the connection's call.
///
/// # Errors
/// The socket write failed (the peer went away).
pub async fn run<W: AsyncWrite + Unpin>(
    mut socket: W,
    mut rx: UnboundedReceiver<Outbound>,
    frame_max: u32,
) -> io::Result<W> {
    let mut codec = FrameCodec::new(frame_max);
    // Grown on first use: an idle connection keeps only what its handshake replies took.
    let mut buf = BytesMut::new();
    // Set when a store commit failed: connection.close 541 was sent, and nothing queued after
    // it goes out (those replies promised durability). The client answers close-ok and hangs up.
    let mut store_failed = false;
    while let Some(first) = next_batch(&mut rx, &mut buf).await {
        let mut next = Some(first);
        let mut stop = false;
        let mut flush_at = FIRST_FLUSH;
        while let Some(msg) = next {
            match msg {
                Outbound::Shutdown => {
                    stop = true;
                    break;
                }
                Outbound::FrameMax(max) => codec.set_frame_max(max),
                _ if store_failed => {}
                Outbound::AfterCommit(commit) => {
                    if !buf.is_empty() {
                        write_out(&mut socket, &mut buf).await?;
                    }
                    if let Err(e) = commit.wait().await {
                        tracing::error!(error = %e, "store write failed, closing the connection");
                        store_failed = true;
                        encode(&codec, store_failure_close(), &mut buf)?;
                    }
                }
                Outbound::Deliveries {
                    channel,
                    deliveries,
                } => {
                    // Written out as a run of single deliveries would be, and each dropped
                    // (its memory released) once encoded.
                    for delivery in deliveries {
                        encode_delivery(&codec, channel, &delivery, &mut buf)?;
                        if buf.len() >= flush_at {
                            write_out(&mut socket, &mut buf).await?;
                            flush_at = MAX_BATCH;
                        }
                    }
                }
                other => encode(&codec, other, &mut buf)?,
            }
            if buf.len() >= flush_at {
                write_out(&mut socket, &mut buf).await?;
                flush_at = MAX_BATCH;
            }
            next = rx.try_recv().ok();
        }
        if !buf.is_empty() {
            write_out(&mut socket, &mut buf).await?;
        }
        if stop {
            break;
        }
    }
    Ok(socket)
}

/// Waits for the first message of the next batch. A buffer past [`KEEP_IDLE`] is dropped
/// (its capacity freed) if nothing comes for [`RELEASE_AFTER`]; the timer is armed only then,
/// so a writer with a small buffer waits as plainly as before.
async fn next_batch(rx: &mut UnboundedReceiver<Outbound>, buf: &mut BytesMut) -> Option<Outbound> {
    if buf.capacity() <= KEEP_IDLE {
        return rx.recv().await;
    }
    match tokio::time::timeout(RELEASE_AFTER, rx.recv()).await {
        Ok(msg) => msg,
        Err(_) => {
            *buf = BytesMut::new();
            rx.recv().await
        }
    }
}

/// connection.close 541, RabbitMQ's code for a broker-side failure.
fn store_failure_close() -> Outbound {
    Outbound::method(
        0,
        lockgate_wire::connection::Close {
            reply_code: lockgate_wire::reply_code::INTERNAL_ERROR,
            reply_text: "INTERNAL_ERROR - the message store failed".into(),
            class_id: 0,
            method_id: 0,
        },
    )
}

/// Writes and flushes what `buf` holds, then empties it (keeping its capacity).
async fn write_out<W: AsyncWrite + Unpin>(socket: &mut W, buf: &mut BytesMut) -> io::Result<()> {
    socket.write_all(buf).await?;
    socket.flush().await?;
    buf.clear();
    Ok(())
}

fn encode(codec: &FrameCodec, msg: Outbound, buf: &mut BytesMut) -> io::Result<()> {
    match msg {
        Outbound::Frame(frame) => {
            tracing::trace!(?frame, "send");
            codec.encode_frame(&frame, buf).map_err(io::Error::other)
        }
        Outbound::Content {
            channel,
            method,
            message,
        } => {
            tracing::trace!(
                channel,
                ?method,
                size = message.body().len(),
                "send content"
            );
            codec
                .encode_content(buf, channel, &method, message.header_ref(), message.body())
                .map_err(io::Error::other)
        }
        Outbound::Deliver { channel, delivery } => encode_delivery(codec, channel, &delivery, buf),
        // Handled by `run` (deliveries: one at a time, with its flush threshold).
        Outbound::Deliveries { .. }
        | Outbound::FrameMax(_)
        | Outbound::AfterCommit(_)
        | Outbound::Shutdown => Ok(()),
    }
}

/// Encodes one basic.deliver with its content.
fn encode_delivery(
    codec: &FrameCodec,
    channel: u16,
    delivery: &Delivery,
    buf: &mut BytesMut,
) -> io::Result<()> {
    let message = &delivery.message;
    // The names as octets: they were strings when they came in, and re-checking
    // their UTF-8 for every delivery shows in profiles.
    let deliver = DeliverOctets {
        consumer_tag: delivery.consumer_tag.as_str().as_bytes(),
        delivery_tag: delivery.delivery_tag.0,
        redelivered: delivery.redelivered,
        exchange: message.exchange_bytes(),
        routing_key: message.routing_key_bytes(),
    };
    tracing::trace!(
        channel,
        consumer_tag = delivery.consumer_tag.as_str(),
        delivery_tag = delivery.delivery_tag.0,
        redelivered = delivery.redelivered,
        exchange = message.exchange(),
        routing_key = message.routing_key(),
        "send delivery"
    );
    codec
        .encode_delivery_octets(buf, channel, &deliver, message.header_ref(), message.body())
        .map_err(io::Error::other)
}

#[cfg(test)]
mod tests {
    use tokio::sync::mpsc;

    use super::*;

    fn delivery(tag: u64, body: &'static [u8]) -> Delivery {
        let header = lockgate_wire::ContentHeader::new(
            60,
            body.len() as u64,
            lockgate_wire::BasicProperties::default(),
        )
        .expect("header");
        let message = Message::new(String::new(), "q".into(), header, body.into());
        Delivery {
            consumer_tag: "c".into(),
            delivery_tag: lockgate_broker::DeliveryTag(tag),
            redelivered: tag == 2,
            no_ack: false,
            message: Arc::new(message),
        }
    }

    async fn written(messages: Vec<Outbound>, frame_max: u32) -> Vec<u8> {
        let (tx, rx) = mpsc::unbounded_channel();
        for msg in messages {
            tx.send(msg).expect("writer queue");
        }
        tx.send(Outbound::Shutdown).expect("writer queue");
        run(Vec::new(), rx, frame_max).await.expect("written")
    }

    #[tokio::test]
    async fn deliveries_handed_over_together_are_written_as_one_by_one() {
        let bodies: [&'static [u8]; 3] = [b"one", b"two", &[7; 300]];
        let one_by_one = (1..)
            .zip(bodies)
            .map(|(tag, body)| Outbound::Deliver {
                channel: 3,
                delivery: delivery(tag, body),
            })
            .collect();
        let together = vec![Outbound::Deliveries {
            channel: 3,
            deliveries: (1..).zip(bodies).map(|(t, b)| delivery(t, b)).collect(),
        }];
        // A frame_max that splits the last body.
        let expected = written(one_by_one, 256).await;
        assert_eq!(written(together, 256).await, expected);
        assert!(expected.len() > 300);
    }

    /// A socket that keeps what each flush sent as one write.
    #[derive(Default)]
    struct Writes {
        flushed: Vec<Vec<u8>>,
        pending: Vec<u8>,
    }

    impl AsyncWrite for Writes {
        fn poll_write(
            mut self: std::pin::Pin<&mut Self>,
            _: &mut std::task::Context<'_>,
            data: &[u8],
        ) -> std::task::Poll<io::Result<usize>> {
            self.pending.extend_from_slice(data);
            std::task::Poll::Ready(Ok(data.len()))
        }

        fn poll_flush(
            mut self: std::pin::Pin<&mut Self>,
            _: &mut std::task::Context<'_>,
        ) -> std::task::Poll<io::Result<()>> {
            let written = std::mem::take(&mut self.pending);
            if !written.is_empty() {
                self.flushed.push(written);
            }
            std::task::Poll::Ready(Ok(()))
        }

        fn poll_shutdown(
            self: std::pin::Pin<&mut Self>,
            cx: &mut std::task::Context<'_>,
        ) -> std::task::Poll<io::Result<()>> {
            self.poll_flush(cx)
        }
    }

    async fn writes(messages: Vec<Outbound>) -> Vec<Vec<u8>> {
        let (tx, rx) = mpsc::unbounded_channel();
        for msg in messages {
            tx.send(msg).expect("writer queue");
        }
        tx.send(Outbound::Shutdown).expect("writer queue");
        let socket = run(Writes::default(), rx, 131_072).await.expect("written");
        assert!(socket.pending.is_empty());
        socket.flushed
    }

    #[tokio::test]
    async fn a_large_handed_over_batch_goes_out_first_after_the_first_flush_threshold() {
        static BODY: [u8; 1000] = [7; 1000];
        let one_by_one = (1..=40)
            .map(|tag| Outbound::Deliver {
                channel: 3,
                delivery: delivery(tag, &BODY),
            })
            .collect();
        let together = vec![Outbound::Deliveries {
            channel: 3,
            deliveries: (1..=40).map(|tag| delivery(tag, &BODY)).collect(),
        }];
        let expected = writes(one_by_one).await;
        let split = writes(together).await;
        assert_eq!(split, expected);
        // The first write ends with the delivery that crossed the threshold; the rest
        // follow in one.
        assert_eq!(split.len(), 2);
        let each = split.concat().len() / 40;
        assert!(split[0].len() >= FIRST_FLUSH);
        assert!(split[0].len() < FIRST_FLUSH + each);
    }

    #[tokio::test(start_paused = true)]
    async fn a_large_buffer_is_released_after_an_idle_second() {
        let (tx, mut rx) = mpsc::unbounded_channel();
        let mut buf = BytesMut::with_capacity(4 * KEEP_IDLE);
        tokio::spawn(async move {
            tokio::time::sleep(RELEASE_AFTER * 2).await;
            let _ = tx.send(Outbound::Shutdown);
        });
        let msg = next_batch(&mut rx, &mut buf).await;
        assert!(matches!(msg, Some(Outbound::Shutdown)));
        assert_eq!(buf.capacity(), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn a_busy_writer_keeps_its_buffer() {
        let (tx, mut rx) = mpsc::unbounded_channel();
        let mut buf = BytesMut::with_capacity(4 * KEEP_IDLE);
        tokio::spawn(async move {
            tokio::time::sleep(RELEASE_AFTER / 2).await;
            let _ = tx.send(Outbound::Shutdown);
        });
        let msg = next_batch(&mut rx, &mut buf).await;
        assert!(matches!(msg, Some(Outbound::Shutdown)));
        assert!(buf.capacity() >= 4 * KEEP_IDLE);
    }
}
