//! lockgate-wire (work in progress).
