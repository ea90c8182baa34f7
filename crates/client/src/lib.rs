//! lockgate-client (work in progress).
