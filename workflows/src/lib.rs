//! The runbooks as workflows. `yb-maintenance` is the seed runbook (`../shared/seed/runbook.md`),
//! driven by an [`inventory::Inventory`] file; [`plan`] reads the live estate and says what a run
//! would do without changing anything.

pub mod guard;
pub mod inventory;
pub mod maintenance;
pub mod plan;
pub mod preflight;
#[cfg(feature = "sandbox")]
pub mod sandbox;

use waymark_engine::runtime::EngineBuilder;

pub use inventory::Inventory;
pub use maintenance::YbMaintenance;

/// Registers every workflow and every activity they call.
pub fn register(b: EngineBuilder) -> EngineBuilder {
    let b = b
        .workflow(YbMaintenance)
        .activity(guard::RestoreTrafficIfSafe);
    let b = waymark_activities::k8s::register(b);
    let b = waymark_activities::ssh::register(b);
    let b = waymark_activities::yb::register(b);
    let b = waymark_activities::preflight::register(b);
    waymark_activities::elb::register(b)
}
