//! The domain's rules as given/when/then: given past events, when a
//! command, then these events or this refusal. No store, no runtime.

use domain::pype::{Pype, PypeCommand, PypeEvent};
use domain::session::{ParticipantKind, Reason, Session, SessionCommand, SessionEvent, Status};
use domain::subject::{Birth, Subject, SubjectCommand, SubjectEvent};
use domain::tenant::{Tenant, TenantCommand, TenantEvent, TenantSettings};
use domain::{Aggregate, Ctx, Rejection, Timers};
use uuid::Uuid;

const T0: i64 = 1_795_000_000_000_000; // 2026-11-18 11:06 UTC
const SEC: i64 = 1_000_000;

fn id(n: u128) -> Uuid {
    Uuid::from_u128(n)
}

struct Given<A: Aggregate>(A);

fn given<A: Aggregate>(events: &[A::Event]) -> Given<A> {
    Given(A::replay(events))
}

impl<A: Aggregate> Given<A> {
    fn when(&self, command: A::Command, at: i64) -> Result<Vec<A::Event>, Rejection> {
        let events = self.0.decide(&command, &Ctx { now_micros: at })?;
        // Whatever is decided must also fold without surprises.
        let mut s = self.0.clone();
        for e in &events {
            s.evolve(e);
        }
        Ok(events)
    }
}

fn invalid_field<T: std::fmt::Debug>(r: Result<T, Rejection>) -> &'static str {
    match r {
        Err(Rejection::InvalidArgument { field, .. }) => field,
        other => panic!("expected InvalidArgument, got {other:?}"),
    }
}

const TIMERS: Timers = Timers { inactive_after_secs: 60, close_after_secs: 600 };

fn started() -> Vec<SessionEvent> {
    vec![SessionEvent::Started {
        session: id(1),
        tenant: id(2),
        pype: id(3),
        end_user: id(4),
        timers: TIMERS,
        at_micros: T0,
        tracking: Default::default(),
    }]
}

fn start_cmd(timers: Option<Timers>) -> SessionCommand {
    SessionCommand::Start {
        session: id(1),
        tenant: id(2),
        pype: id(3),
        end_user: id(4),
        pype_timers: TIMERS,
        timers,
        tracking: Default::default(),
    }
}

#[test]
fn a_session_starts_with_its_end_user_and_the_pype_timers() {
    assert_eq!(given::<Session>(&[]).when(start_cmd(None), T0).unwrap(), started());
    let own = Timers { inactive_after_secs: 30, close_after_secs: 90 };
    let events = given::<Session>(&[]).when(start_cmd(Some(own)), T0).unwrap();
    assert!(matches!(events[0], SessionEvent::Started { timers, .. } if timers == own));
    assert_eq!(
        invalid_field(
            given::<Session>(&[]).when(start_cmd(Some(Timers { inactive_after_secs: 1, close_after_secs: 90 })), T0)
        ),
        "timers"
    );
    assert_eq!(
        given::<Session>(&started()).when(start_cmd(None), T0),
        Err(Rejection::AlreadyExists { what: "session" })
    );
    let s = Session::replay(&started());
    assert!(s.participants[&id(4)].present);
}

#[test]
fn under_do_not_track_no_device_is_recorded() {
    for tracking in [
        domain::session::Tracking { do_not_track: true, global_privacy_control: false },
        domain::session::Tracking { do_not_track: false, global_privacy_control: true },
    ] {
        let start = SessionCommand::Start {
            session: id(1),
            tenant: id(2),
            pype: id(3),
            end_user: id(4),
            pype_timers: TIMERS,
            timers: None,
            tracking,
        };
        let mut history = given::<Session>(&[]).when(start, T0).unwrap();
        assert!(matches!(history[0], SessionEvent::Started { tracking: t, .. } if t == tracking));
        let post = SessionCommand::PostMessage {
            sender: id(4),
            body: "hi".into(),
            device: Some("iPhone 15".into()),
            attachments: vec![],
        };
        let events = given::<Session>(&history).when(post, T0 + SEC).unwrap();
        assert!(matches!(&events[0], SessionEvent::MessagePosted { device: None, .. }), "{events:?}");
        history.extend(events);
        assert!(Session::replay(&history).tracking.declined());
    }
}

#[test]
fn messages_are_numbered_and_only_participants_post() {
    let g = given::<Session>(&started());
    let events = g
        .when(
            SessionCommand::PostMessage {
                sender: id(4),
                body: "hi".into(),
                device: Some("ios".into()),
                attachments: vec![],
            },
            T0 + SEC,
        )
        .unwrap();
    assert_eq!(
        events,
        vec![SessionEvent::MessagePosted {
            seq: 1,
            sender: id(4),
            sent_at_micros: T0 + SEC,
            body: "hi".into(),
            device: Some("ios".into()),
            attachments: vec![]
        }]
    );
    assert!(matches!(
        g.when(SessionCommand::PostMessage { sender: id(9), body: "x".into(), device: None, attachments: vec![] }, T0),
        Err(Rejection::FailedPrecondition { .. })
    ));
    assert_eq!(
        invalid_field(g.when(
            SessionCommand::PostMessage { sender: id(4), body: "  ".into(), device: None, attachments: vec![] },
            T0
        )),
        "body"
    );
    let long = "x".repeat(10_001);
    assert_eq!(
        invalid_field(
            g.when(SessionCommand::PostMessage { sender: id(4), body: long, device: None, attachments: vec![] }, T0)
        ),
        "body"
    );
    let mut history = started();
    history.push(SessionEvent::ParticipantJoined { participant: id(5), kind: ParticipantKind::Agent, at_micros: T0 });
    history.push(SessionEvent::MessagePosted {
        seq: 1,
        sender: id(4),
        sent_at_micros: T0,
        body: "a".into(),
        device: None,
        attachments: vec![],
    });
    let events = given::<Session>(&history)
        .when(SessionCommand::PostMessage { sender: id(5), body: "b".into(), device: None, attachments: vec![] }, T0)
        .unwrap();
    assert!(matches!(events[0], SessionEvent::MessagePosted { seq: 2, .. }));
    // After leaving, an agent cannot post.
    history.push(SessionEvent::ParticipantLeft { participant: id(5), at_micros: T0 });
    assert!(
        given::<Session>(&history)
            .when(
                SessionCommand::PostMessage { sender: id(5), body: "c".into(), device: None, attachments: vec![] },
                T0
            )
            .is_err()
    );
}

#[test]
fn timers_move_a_session_to_inactive_then_closed_and_a_message_revives_it() {
    let g = given::<Session>(&started());
    assert_eq!(g.when(SessionCommand::Tick, T0 + 59 * SEC).unwrap(), vec![]);
    let inactive = g.when(SessionCommand::Tick, T0 + 60 * SEC).unwrap();
    assert_eq!(inactive, vec![SessionEvent::BecameInactive { reason: Reason::Timer, at_micros: T0 + 60 * SEC }]);
    let mut history = started();
    history.extend(inactive);
    let g = given::<Session>(&history);
    assert_eq!(g.0.status, Status::Inactive);
    assert_eq!(g.0.next_deadline_micros(), Some(T0 + 660 * SEC));
    let revived = g
        .when(
            SessionCommand::PostMessage { sender: id(4), body: "back".into(), device: None, attachments: vec![] },
            T0 + 100 * SEC,
        )
        .unwrap();
    assert_eq!(revived[0], SessionEvent::Reactivated { reason: Reason::Api, at_micros: T0 + 100 * SEC });
    assert_eq!(
        g.when(SessionCommand::Tick, T0 + 660 * SEC).unwrap(),
        vec![SessionEvent::Closed { reason: Reason::Timer, at_micros: T0 + 660 * SEC }]
    );
}

#[test]
fn an_overdue_session_passes_both_deadlines_stamped_with_each() {
    let events = given::<Session>(&started()).when(SessionCommand::Tick, T0 + 10_000 * SEC).unwrap();
    assert_eq!(
        events,
        vec![
            SessionEvent::BecameInactive { reason: Reason::Timer, at_micros: T0 + 60 * SEC },
            SessionEvent::Closed { reason: Reason::Timer, at_micros: T0 + 660 * SEC },
        ]
    );
}

#[test]
fn a_closed_session_refuses_writes() {
    let mut history = started();
    history.push(SessionEvent::Closed { reason: Reason::Api, at_micros: T0 });
    let g = given::<Session>(&history);
    for cmd in [
        SessionCommand::PostMessage { sender: id(4), body: "x".into(), device: None, attachments: vec![] },
        SessionCommand::Join { participant: id(5), kind: ParticipantKind::Agent },
        SessionCommand::AdvanceReadHorizon { participant: id(4), up_to: 0, private: false },
    ] {
        assert!(matches!(g.when(cmd, T0), Err(Rejection::FailedPrecondition { .. })));
    }
    assert_eq!(g.when(SessionCommand::Close, T0).unwrap(), vec![], "closing again changes nothing");
    assert_eq!(g.when(SessionCommand::Tick, T0 + 1_000_000 * SEC).unwrap(), vec![]);
    assert_eq!(g.0.next_deadline_micros(), None);
    assert_eq!(given::<Session>(&[]).when(SessionCommand::Close, T0), Err(Rejection::NotFound { what: "session" }));
}

#[test]
fn read_horizons_only_move_forward() {
    let mut history = started();
    for seq in 1..=3 {
        history.push(SessionEvent::MessagePosted {
            seq,
            sender: id(4),
            sent_at_micros: T0,
            body: "m".into(),
            device: None,
            attachments: vec![],
        });
    }
    history.push(SessionEvent::ReadHorizonAdvanced { participant: id(4), up_to: 2, private: false });
    let g = given::<Session>(&history);
    assert_eq!(
        g.when(SessionCommand::AdvanceReadHorizon { participant: id(4), up_to: 1, private: false }, T0).unwrap(),
        vec![]
    );
    assert_eq!(
        g.when(SessionCommand::AdvanceReadHorizon { participant: id(4), up_to: 2, private: false }, T0).unwrap(),
        vec![]
    );
    assert_eq!(
        g.when(SessionCommand::AdvanceReadHorizon { participant: id(4), up_to: 3, private: true }, T0).unwrap(),
        vec![SessionEvent::ReadHorizonAdvanced { participant: id(4), up_to: 3, private: true }]
    );
    // Going private without moving keeps the horizon where it is.
    assert_eq!(
        g.when(SessionCommand::AdvanceReadHorizon { participant: id(4), up_to: 1, private: true }, T0).unwrap(),
        vec![SessionEvent::ReadHorizonAdvanced { participant: id(4), up_to: 2, private: true }]
    );
    assert_eq!(
        invalid_field(g.when(SessionCommand::AdvanceReadHorizon { participant: id(4), up_to: 4, private: false }, T0)),
        "up_to"
    );
}

#[test]
fn participants_join_and_leave_but_the_end_user_stays() {
    let g = given::<Session>(&started());
    let joined = g.when(SessionCommand::Join { participant: id(5), kind: ParticipantKind::Bot }, T0).unwrap();
    assert_eq!(
        joined,
        vec![SessionEvent::ParticipantJoined { participant: id(5), kind: ParticipantKind::Bot, at_micros: T0 }]
    );
    assert!(matches!(
        g.when(SessionCommand::Leave { participant: id(4) }, T0),
        Err(Rejection::FailedPrecondition { .. })
    ));
    assert_eq!(
        invalid_field(g.when(SessionCommand::Join { participant: id(6), kind: ParticipantKind::EndUser }, T0)),
        "kind"
    );
    assert_eq!(g.when(SessionCommand::Leave { participant: id(9) }, T0).unwrap(), vec![]);
}

#[test]
fn subjects_register_once_and_never_under_13() {
    let birth = Birth::Date { year: 1990, month: 5, day: 17 };
    let register = |username: &str, email: &str, phone: &str, birth: Birth| SubjectCommand::Register {
        subject: id(7),
        tenant: id(2),
        username: username.into(),
        email: email.into(),
        phone: phone.into(),
        birth,
    };
    let events =
        given::<Subject>(&[]).when(register("Ada.L", "ada@example.com", "+4915112345678", birth.clone()), T0).unwrap();
    assert!(matches!(&events[0], SubjectEvent::Registered { username, .. } if username == "ada.l"));
    let g = given::<Subject>(&[]);
    assert_eq!(invalid_field(g.when(register("a", "ada@example.com", "", birth.clone()), T0)), "username");
    assert_eq!(invalid_field(g.when(register("ada", "ada.example.com", "", birth.clone()), T0)), "email");
    assert_eq!(invalid_field(g.when(register("ada", "ada@example.com", "12345", birth.clone()), T0)), "phone");
    assert_eq!(
        invalid_field(g.when(register("ada", "ada@example.com", "", Birth::Date { year: 2020, month: 1, day: 1 }), T0)),
        "birth"
    );
    assert_eq!(
        invalid_field(
            g.when(register("ada", "ada@example.com", "", Birth::Date { year: 1990, month: 2, day: 30 }), T0)
        ),
        "birth"
    );
    // Thirteen today is old enough; thirteen tomorrow is not (T0 is 2026-11-18).
    assert!(g.when(register("teen", "t@example.com", "", Birth::Date { year: 2013, month: 11, day: 18 }), T0).is_ok());
    assert!(g.when(register("teen", "t@example.com", "", Birth::Date { year: 2013, month: 11, day: 19 }), T0).is_err());
    assert!(g.when(register("ada", "ada@example.com", "", Birth::AttestedAtLeast13), T0).is_ok());
    let g = given::<Subject>(&events);
    assert_eq!(
        g.when(register("ada", "ada@example.com", "", birth), T0),
        Err(Rejection::AlreadyExists { what: "subject" })
    );
}

#[test]
fn subjects_are_invited_onboard_and_get_deactivated() {
    let invited = given::<Subject>(&[])
        .when(SubjectCommand::Invite { subject: id(7), tenant: id(2), email: "b@example.com".into() }, T0)
        .unwrap();
    let g = given::<Subject>(&invited);
    let onboarded = g
        .when(SubjectCommand::Onboard { username: "bob".into(), phone: "".into(), birth: Birth::AttestedAtLeast13 }, T0)
        .unwrap();
    let mut history = invited.clone();
    history.extend(onboarded);
    let g = given::<Subject>(&history);
    assert!(
        g.when(
            SubjectCommand::Onboard { username: "bob".into(), phone: "".into(), birth: Birth::AttestedAtLeast13 },
            T0
        )
        .is_err()
    );
    let off = g.when(SubjectCommand::Deactivate, T0).unwrap();
    assert_eq!(off, vec![SubjectEvent::Deactivated { at_micros: T0 }]);
    history.extend(off);
    let g = given::<Subject>(&history);
    assert_eq!(g.when(SubjectCommand::Deactivate, T0).unwrap(), vec![]);
    assert_eq!(g.when(SubjectCommand::Reactivate, T0).unwrap(), vec![SubjectEvent::Reactivated { at_micros: T0 }]);
    assert_eq!(
        given::<Subject>(&[]).when(SubjectCommand::Deactivate, T0),
        Err(Rejection::NotFound { what: "subject" })
    );
}

#[test]
fn tenants_and_pypes() {
    let created = given::<Tenant>(&[])
        .when(
            TenantCommand::Create {
                tenant: id(2),
                name: " Acme ".into(),
                settings: TenantSettings::default(),
                first_key: (id(9), [7; 32]),
            },
            T0,
        )
        .unwrap();
    assert!(matches!(&created[0], TenantEvent::Created { name, .. } if name == "Acme"));
    assert_eq!(created[1], TenantEvent::ApiKeyIssued { key_id: id(9), secret_sha256: [7; 32], at_micros: T0 });
    assert_eq!(Tenant::replay(&created).api_keys.len(), 1);
    let bad = TenantSettings { region: "EU West".into(), ..TenantSettings::default() };
    assert_eq!(
        invalid_field(given::<Tenant>(&[]).when(
            TenantCommand::Create { tenant: id(2), name: "x".into(), settings: bad, first_key: (id(9), [7; 32]) },
            T0
        )),
        "settings.region"
    );
    let mut t = created.clone();
    t.extend(given::<Tenant>(&created).when(TenantCommand::Cancel, T0).unwrap());
    assert!(matches!(Tenant::replay(&t).require_active(), Err(Rejection::FailedPrecondition { .. })));

    let create = PypeCommand::Create {
        pype: id(3),
        tenant: id(2),
        name: "Support".into(),
        description: "".into(),
        timers: TIMERS,
    };
    let p = given::<Pype>(&[]).when(create, T0).unwrap();
    let g = given::<Pype>(&p);
    assert_eq!(
        g.when(PypeCommand::AssignAgent { agent: id(5) }, T0).unwrap(),
        vec![PypeEvent::AgentAssigned { agent: id(5) }]
    );
    assert_eq!(g.when(PypeCommand::UnassignAgent { agent: id(5) }, T0).unwrap(), vec![]);
    let mut history = p.clone();
    history.push(PypeEvent::Archived { at_micros: T0 });
    assert!(matches!(
        given::<Pype>(&history).when(PypeCommand::AssignBot { bot: id(6) }, T0),
        Err(Rejection::FailedPrecondition { .. })
    ));
}
