//! Heartbeat liveness: when the peer counts as gone.

/// Heartbeat bookkeeping: a peer that sends nothing for two whole intervals is dead.
#[derive(Debug, Default)]
pub(super) struct Liveness {
    received: bool,
    silent_intervals: u32,
}

impl Liveness {
    /// Something arrived from the peer.
    pub(super) fn received(&mut self) {
        self.received = true;
    }

    /// One heartbeat interval passed; returns true when the peer is to be dropped.
    pub(super) fn tick(&mut self) -> bool {
        if std::mem::take(&mut self.received) {
            self.silent_intervals = 0;
        } else {
            self.silent_intervals += 1;
        }
        self.silent_intervals >= 2
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn peer_is_dead_after_two_silent_intervals() {
        let mut liveness = Liveness::default();
        assert!(!liveness.tick());
        liveness.received();
        assert!(!liveness.tick());
        assert!(!liveness.tick());
        assert!(liveness.tick());
    }

    #[test]
    fn any_frame_resets_the_silence() {
        let mut liveness = Liveness::default();
        assert!(!liveness.tick());
        liveness.received();
        assert!(!liveness.tick());
        assert!(!liveness.tick());
        liveness.received();
        assert!(!liveness.tick());
    }
}
