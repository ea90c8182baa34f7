//! lockgate-broker (work in progress).
