//! Deterministic simulation (issue 13): the explorer over crash points and faults.
