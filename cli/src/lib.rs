//! Library part of the waymark CLI: pieces shared with the tests.

pub mod follow;
pub mod schedule;
