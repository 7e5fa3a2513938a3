//! Pypes: the tenant's branded channels and who answers in them.

use domain::Timers;
use domain::pype::{Pype, PypeCommand};
use domain::session::ParticipantKind;
use domain::tenant::Tenant;
use uuid::Uuid;

use crate::auth::Credentials;
use crate::tenants::timers_in;
use crate::{App, AppError, parse_id};

impl App {
    pub async fn create_pype(
        &self,
        who: &Credentials,
        name: String,
        description: String,
        timers: Option<Timers>,
    ) -> Result<Pype, AppError> {
        let tenant = self.tenant(who).await?;
        let t = self.registry.read::<Tenant>(tenant, tenant).await?.into_state();
        t.require_active()?;
        let timers = timers_in("timers", timers)?.unwrap_or(t.settings.timers);
        let id = Uuid::now_v7();
        let cmd = PypeCommand::Create { pype: id, tenant, name, description, timers };
        Ok(self.registry.execute::<Pype>(tenant, id, cmd).await?.into_state())
    }

    pub async fn get_pype(&self, who: &Credentials, pype_id: &str) -> Result<Pype, AppError> {
        let tenant = self.tenant(who).await?;
        let id = parse_id("pype_id", pype_id)?;
        self.pype_of(tenant, id).await
    }

    /// Assigns (or unassigns) an agent or a bot to a Pype.
    pub async fn assign_member(
        &self,
        who: &Credentials,
        pype_id: &str,
        member_id: &str,
        kind: Result<ParticipantKind, AppError>,
        assigned: bool,
    ) -> Result<Pype, AppError> {
        let tenant = self.tenant(who).await?;
        let pype = parse_id("pype_id", pype_id)?;
        let member = parse_id("member_id", member_id)?;
        let cmd = match (kind?, assigned) {
            (ParticipantKind::Agent, true) => PypeCommand::AssignAgent { agent: member },
            (ParticipantKind::Agent, false) => PypeCommand::UnassignAgent { agent: member },
            (ParticipantKind::Bot, true) => PypeCommand::AssignBot { bot: member },
            (ParticipantKind::Bot, false) => PypeCommand::UnassignBot { bot: member },
            (ParticipantKind::EndUser, _) => {
                return Err(AppError::invalid("kind", "only agents and bots are assigned to a pype"));
            }
        };
        Ok(self.registry.execute::<Pype>(tenant, pype, cmd).await?.into_state())
    }

    pub async fn archive_pype(&self, who: &Credentials, pype_id: &str) -> Result<Pype, AppError> {
        let tenant = self.tenant(who).await?;
        let pype = parse_id("pype_id", pype_id)?;
        Ok(self.registry.execute::<Pype>(tenant, pype, PypeCommand::Archive).await?.into_state())
    }

    /// A Pype of `tenant` that exists.
    pub(crate) async fn pype_of(&self, tenant: Uuid, pype: Uuid) -> Result<Pype, AppError> {
        let p = self.registry.read::<Pype>(tenant, pype).await?.into_state();
        p.id.ok_or_else(|| AppError::not_found("pype"))?;
        Ok(p)
    }

    /// An optional `pype_id` of a request (empty: none), checked to be one
    /// of the tenant's Pypes.
    pub(crate) async fn optional_pype(&self, tenant: Uuid, pype_id: &str) -> Result<Option<Uuid>, AppError> {
        if pype_id.is_empty() {
            return Ok(None);
        }
        let id = crate::parse_id("pype_id", pype_id)?;
        self.pype_of(tenant, id).await?;
        Ok(Some(id))
    }
}
