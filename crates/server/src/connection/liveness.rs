//! Heartbeat liveness: when the peer counts as gone.

/// Heartbeat bookkeeping, ticked every half heartbeat (when the server sends its own, as
/// RabbitMQ does): a peer that sends nothing for two whole heartbeat intervals is dead.
#[derive(Debug, Default)]
pub(super) struct Liveness {
    received: bool,
    silent_ticks: u32,
}

/// Half-heartbeat ticks of silence after which the peer is dead: two heartbeat intervals.
const DEAD_AFTER_TICKS: u32 = 4;

impl Liveness {
    /// Something arrived from the peer.
    pub(super) fn received(&mut self) {
        self.received = true;
    }

    /// Half a heartbeat interval passed; returns true when the peer is to be dropped.
    pub(super) fn tick(&mut self) -> bool {
        if std::mem::take(&mut self.received) {
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
        assert!(!liveness.tick());
        for _ in 1..DEAD_AFTER_TICKS {
            assert!(!liveness.tick());
        }
        assert!(liveness.tick());
    }

    #[test]
    fn any_frame_resets_the_silence() {
        let mut liveness = Liveness::default();
        for _ in 1..DEAD_AFTER_TICKS {
            assert!(!liveness.tick());
        }
        liveness.received();
        assert!(!liveness.tick());
        for _ in 1..DEAD_AFTER_TICKS {
            assert!(!liveness.tick());
        }
    }
}
