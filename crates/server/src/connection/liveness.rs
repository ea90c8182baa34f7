//! Heartbeat liveness: when the peer counts as gone.

/// Heartbeat bookkeeping, ticked every half heartbeat (when the server sends its own, as
/// RabbitMQ does): a peer that sends nothing for two whole heartbeat intervals is dead.
///
/// "Nothing" means no octet, as the spec says ("no incoming traffic (i.e. received octets)")
/// and RabbitMQ counts (the socket's received octets): a client sending a large frame over a
/// slow link sends no heartbeat frame meanwhile, and is alive.
#[derive(Debug, Default)]
pub(super) struct Liveness {
    received: bool,
    silent_ticks: u32,
    /// The read buffer's length at the last tick.
    buffered: usize,
}

/// Half-heartbeat ticks of silence after which the peer is dead: two heartbeat intervals.
const DEAD_AFTER_TICKS: u32 = 4;

impl Liveness {
    /// A frame arrived from the peer.
    pub(super) fn received(&mut self) {
        self.received = true;
    }

    /// Half a heartbeat interval passed; `buffered` is the read buffer's length now, holding
    /// the part of a frame read so far: it changes between ticks without a whole frame only
    /// when octets arrived. Returns true when the peer is to be dropped.
    pub(super) fn tick(&mut self, buffered: usize) -> bool {
        let octets = std::mem::replace(&mut self.buffered, buffered) != buffered;
        if std::mem::take(&mut self.received) || octets {
            self.silent_ticks = 0;
        } else {
            self.silent_ticks += 1;
        }
        self.silent_ticks >= DEAD_AFTER_TICKS
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn peer_is_dead_after_two_silent_heartbeat_intervals() {
        let mut liveness = Liveness::default();
        liveness.received();
        assert!(!liveness.tick(0));
        for _ in 1..DEAD_AFTER_TICKS {
            assert!(!liveness.tick(0));
        }
        assert!(liveness.tick(0));
    }

    #[test]
    fn any_frame_resets_the_silence() {
        let mut liveness = Liveness::default();
        for _ in 1..DEAD_AFTER_TICKS {
            assert!(!liveness.tick(0));
        }
        liveness.received();
        assert!(!liveness.tick(0));
        for _ in 1..DEAD_AFTER_TICKS {
            assert!(!liveness.tick(0));
        }
    }

    #[test]
    fn octets_of_an_unfinished_frame_reset_the_silence() {
        let mut liveness = Liveness::default();
        let mut buffered = 0;
        for _ in 0..4 * DEAD_AFTER_TICKS {
            buffered += 1;
            assert!(!liveness.tick(buffered));
        }
        for _ in 1..DEAD_AFTER_TICKS {
            assert!(!liveness.tick(buffered));
        }
        assert!(
            liveness.tick(buffered),
            "a frame stalled half-way is silence"
        );
    }
}
