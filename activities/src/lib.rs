//! Idempotent activities for the real estate. One module per external system; each activity
//! checks whether its effect already happened before acting, classifies its errors as retryable
//! or not with a message naming the system, the target and what to check, and never carries a
//! secret in its input, output or error.

pub mod elb;
pub mod k8s;
pub mod preflight;
pub mod ssh;
pub mod wait;
pub mod yb;
