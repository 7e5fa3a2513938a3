//! Platform staff: the directory (one stream, `staff-directory`, decided
//! by `domain::staff` and written by its actor), looked up on every staff
//! call. The role table is `domain::staff::POLICY`.

use std::sync::Arc;

use actors::Registry;
use domain::staff::{Member, StaffCommand, StaffDirectory, StaffEvent};
use uuid::Uuid;

use crate::error::AppError;

pub use domain::staff::{Access, POLICY, access, role_of};

/// The staff directory's actor (one for the platform: tenant and id nil).
pub struct Staff {
    registry: Arc<Registry>,
}

impl Staff {
    pub fn new(registry: Arc<Registry>) -> Self {
        Self { registry }
    }

    /// `f` of the directory as its actor holds it.
    pub async fn with<R>(&self, f: impl FnOnce(&StaffDirectory) -> R) -> Result<R, AppError> {
        let d = self.registry.read::<StaffDirectory>(Uuid::nil(), Uuid::nil()).await?;
        Ok(f(&d.state))
    }

    /// A member of the directory.
    pub async fn member(&self, id: Uuid) -> Result<Option<Member>, AppError> {
        self.with(|d| d.members.get(&id).cloned()).await
    }

    /// The live break-glass grant of `staff` for `tenant`, if any.
    pub async fn live_grant(&self, staff: Uuid, tenant: Uuid, now: i64) -> Result<Option<Uuid>, AppError> {
        self.with(|d| d.live_grant(staff, tenant, now).map(|(g, _)| g)).await
    }

    /// The whole directory (listing).
    pub async fn directory(&self) -> Result<StaffDirectory, AppError> {
        self.with(StaffDirectory::clone).await
    }

    /// Decides and appends `command` through the directory's actor.
    pub async fn execute(&self, command: StaffCommand) -> Result<(Vec<StaffEvent>, StaffDirectory), AppError> {
        let done = self.registry.execute::<StaffDirectory>(Uuid::nil(), Uuid::nil(), command).await?;
        Ok((done.events, std::sync::Arc::unwrap_or_clone(done.state)))
    }
}
