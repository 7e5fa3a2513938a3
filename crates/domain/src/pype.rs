//! Pype: a branded channel of a tenant, with its agents and bots and the
//! Session timer defaults; open until archived.

use std::collections::BTreeSet;

use uuid::Uuid;

use crate::common::{Aggregate, Ctx, FieldClass, Rejection, Timers, check_text};

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PypeCommand {
    Create {
        pype: Uuid,
        tenant: Uuid,
        name: String,
        description: String,
        timers: Timers,
    },
    AssignAgent {
        agent: Uuid,
    },
    UnassignAgent {
        agent: Uuid,
    },
    AssignBot {
        bot: Uuid,
    },
    UnassignBot {
        bot: Uuid,
    },
    SetTimers {
        timers: Timers,
    },
    /// Days a closed Session's content is kept in this Pype; `None`: the
    /// tenant's setting; `Some(0)`: no limit.
    SetRetention {
        days: Option<u32>,
    },
    Archive,
}

/// Serialize: for operators' tools (`pypes replay`), never a stored format.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub enum PypeEvent {
    Created { pype: Uuid, tenant: Uuid, name: String, description: String, timers: Timers, at_micros: i64 },
    AgentAssigned { agent: Uuid },
    AgentUnassigned { agent: Uuid },
    BotAssigned { bot: Uuid },
    BotUnassigned { bot: Uuid },
    TimersSet { timers: Timers },
    RetentionSet { days: Option<u32> },
    Archived { at_micros: i64 },
}

/// A Pype's name and description are the tenant's branding, not personal data.
pub const FIELDS: &[(&str, &str, FieldClass)] =
    &[("Created", "name", FieldClass::Clear), ("Created", "description", FieldClass::Clear)];

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Pype {
    pub id: Option<Uuid>,
    pub tenant: Uuid,
    pub name: String,
    pub description: String,
    pub agents: BTreeSet<Uuid>,
    pub bots: BTreeSet<Uuid>,
    pub timers: Timers,
    /// Overrides the tenant's retention when set.
    pub retention_days: Option<u32>,
    pub archived: bool,
}

impl Pype {
    /// Whether `participant` may join a Session of this Pype as `kind`:
    /// agents and bots must be assigned to it; the end user always may.
    pub fn may_join(&self, participant: Uuid, kind: crate::session::ParticipantKind) -> Result<(), Rejection> {
        use crate::session::ParticipantKind;
        let assigned = match kind {
            ParticipantKind::Agent => self.agents.contains(&participant),
            ParticipantKind::Bot => self.bots.contains(&participant),
            ParticipantKind::EndUser => true,
        };
        if assigned {
            Ok(())
        } else {
            Err(Rejection::precondition("the participant is not assigned to the session's pype"))
        }
    }

    pub fn require_open(&self) -> Result<(), Rejection> {
        match (self.id, self.archived) {
            (None, _) => Err(Rejection::NotFound { what: "pype" }),
            (Some(_), true) => Err(Rejection::precondition("the pype is archived")),
            _ => Ok(()),
        }
    }
}

impl Aggregate for Pype {
    type Command = PypeCommand;
    type Event = PypeEvent;

    fn decide(&self, command: &PypeCommand, ctx: &Ctx) -> Result<Vec<PypeEvent>, Rejection> {
        if let PypeCommand::Create { pype, tenant, name, description, timers } = command {
            if self.id.is_some() {
                return Err(Rejection::AlreadyExists { what: "pype" });
            }
            check_text("name", name, 200, true)?;
            check_text("description", description, 2000, false)?;
            timers.validate("timers")?;
            return Ok(vec![PypeEvent::Created {
                pype: *pype,
                tenant: *tenant,
                name: name.trim().to_string(),
                description: description.clone(),
                timers: *timers,
                at_micros: ctx.now_micros,
            }]);
        }
        if matches!(command, PypeCommand::Archive) {
            if self.id.is_none() {
                return Err(Rejection::NotFound { what: "pype" });
            }
            return Ok(if self.archived { vec![] } else { vec![PypeEvent::Archived { at_micros: ctx.now_micros }] });
        }
        self.require_open()?;
        Ok(match command {
            PypeCommand::AssignAgent { agent } if !self.agents.contains(agent) => {
                vec![PypeEvent::AgentAssigned { agent: *agent }]
            }
            PypeCommand::UnassignAgent { agent } if self.agents.contains(agent) => {
                vec![PypeEvent::AgentUnassigned { agent: *agent }]
            }
            PypeCommand::AssignBot { bot } if !self.bots.contains(bot) => vec![PypeEvent::BotAssigned { bot: *bot }],
            PypeCommand::UnassignBot { bot } if self.bots.contains(bot) => vec![PypeEvent::BotUnassigned { bot: *bot }],
            PypeCommand::SetRetention { days } => {
                if days.is_some_and(|d| d > 3650) {
                    return Err(Rejection::invalid("retention_days", "at most 3650 days"));
                }
                if *days == self.retention_days { vec![] } else { vec![PypeEvent::RetentionSet { days: *days }] }
            }
            PypeCommand::SetTimers { timers } => {
                timers.validate("timers")?;
                if *timers == self.timers { vec![] } else { vec![PypeEvent::TimersSet { timers: *timers }] }
            }
            // Assigning what is assigned, or removing what is not: nothing changes.
            _ => vec![],
        })
    }

    fn evolve(&mut self, event: &PypeEvent) {
        match event {
            PypeEvent::Created { pype, tenant, name, description, timers, .. } => {
                self.id = Some(*pype);
                self.tenant = *tenant;
                self.name = name.clone();
                self.description = description.clone();
                self.timers = *timers;
            }
            PypeEvent::AgentAssigned { agent } => {
                self.agents.insert(*agent);
            }
            PypeEvent::AgentUnassigned { agent } => {
                self.agents.remove(agent);
            }
            PypeEvent::BotAssigned { bot } => {
                self.bots.insert(*bot);
            }
            PypeEvent::BotUnassigned { bot } => {
                self.bots.remove(bot);
            }
            PypeEvent::TimersSet { timers } => self.timers = *timers,
            PypeEvent::RetentionSet { days } => self.retention_days = *days,
            PypeEvent::Archived { .. } => self.archived = true,
        }
    }
}
