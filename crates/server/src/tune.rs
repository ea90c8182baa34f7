//! connection.tune / tune-ok negotiation.

use crate::config::{Limits, FRAME_MIN_SIZE};

/// The values in force after connection.tune-ok.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Tuning {
    /// Highest usable channel number.
    pub channel_max: u16,
    /// Largest frame either side may send.
    pub frame_max: u32,
    /// Heartbeat interval in seconds; 0 disables heartbeats.
    pub heartbeat: u16,
}

/// What the server proposes in connection.tune.
pub fn proposal(limits: &Limits) -> Tuning {
    Tuning {
        channel_max: limits.channel_max,
        frame_max: limits.frame_max,
        heartbeat: limits.heartbeat,
    }
}

/// Validates the client's connection.tune-ok against the server's proposal and returns the
/// values in force.
///
/// As RabbitMQ (`rabbit_reader`, `validate_negotiated_integer_value`): a channel-max or
/// frame-max above the proposal, or a frame-max below 4096, is refused. Unlike RabbitMQ, 0
/// ("no limit") is accepted and means the proposal. The heartbeat is the client's value: the
/// client has already picked the lower non-zero of both sides, and 0 means it wants none
/// (rabbitmq-c's tools ask for none, and must not be dropped for being silent).
///
/// # Errors
/// The text of the 530 NOT_ALLOWED connection.close, in RabbitMQ's words.
pub fn negotiate(server: Tuning, client: Tuning) -> Result<Tuning, String> {
    let channel_max = match client.channel_max {
        0 => server.channel_max,
        c if c > server.channel_max => return Err(too_high("channel_max", c, server.channel_max)),
        c => c,
    };
    let frame_max = match client.frame_max {
        0 => server.frame_max,
        f if f < FRAME_MIN_SIZE => {
            return Err(format!(
                "NOT_ALLOWED - negotiated frame_max = {f} is lower than the minimum allowed \
                 value ({FRAME_MIN_SIZE})"
            ))
        }
        f if f > server.frame_max => return Err(too_high("frame_max", f, server.frame_max)),
        f => f,
    };
    Ok(Tuning {
        channel_max,
        frame_max,
        heartbeat: client.heartbeat,
    })
}

fn too_high(field: &str, client: impl std::fmt::Display, server: impl std::fmt::Display) -> String {
    format!(
        "NOT_ALLOWED - negotiated {field} = {client} is higher than the maximum allowed value \
         ({server})"
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    const SERVER: Tuning = Tuning {
        channel_max: 2047,
        frame_max: 131_072,
        heartbeat: 60,
    };

    fn client(channel_max: u16, frame_max: u32, heartbeat: u16) -> Tuning {
        Tuning {
            channel_max,
            frame_max,
            heartbeat,
        }
    }

    #[test]
    fn proposal_comes_from_limits() {
        assert_eq!(proposal(&Limits::default()), SERVER);
    }

    #[test]
    fn lower_client_values_win() {
        assert_eq!(
            negotiate(SERVER, client(10, 4096, 5)),
            Ok(client(10, 4096, 5))
        );
        assert_eq!(negotiate(SERVER, SERVER), Ok(SERVER));
    }

    #[test]
    fn zero_means_the_server_proposal() {
        assert_eq!(
            negotiate(SERVER, client(0, 0, 60)),
            Ok(client(2047, 131_072, 60))
        );
    }

    #[test]
    fn heartbeat_is_the_clients_choice() {
        assert_eq!(negotiate(SERVER, client(1, 4096, 0)).unwrap().heartbeat, 0);
        assert_eq!(
            negotiate(SERVER, client(1, 4096, 600)).unwrap().heartbeat,
            600
        );
    }

    #[test]
    fn out_of_range_values_are_refused() {
        let err = negotiate(SERVER, client(1, 4095, 0)).unwrap_err();
        assert!(
            err.starts_with("NOT_ALLOWED - negotiated frame_max = 4095 is lower"),
            "{err}"
        );
        let err = negotiate(SERVER, client(1, 131_073, 0)).unwrap_err();
        assert!(err.contains("frame_max = 131073 is higher"), "{err}");
        let err = negotiate(SERVER, client(2048, 4096, 0)).unwrap_err();
        assert!(err.contains("channel_max = 2048 is higher"), "{err}");
    }
}
