//! Property: for any sequence of commands, folding the events the live run
//! produced gives exactly the live state (what actors rebuild from the log
//! is what they had in memory).

use domain::session::{ParticipantKind, Session, SessionCommand};
use domain::subject::{Birth, Subject, SubjectCommand};
use domain::{Aggregate, Ctx, Timers};
use proptest::prelude::*;
use uuid::Uuid;

fn who() -> impl Strategy<Value = Uuid> {
    (1u128..6).prop_map(Uuid::from_u128)
}

fn start(tracking: domain::session::Tracking) -> SessionCommand {
    SessionCommand::Start {
        session: Uuid::from_u128(100),
        tenant: Uuid::from_u128(200),
        pype: Uuid::from_u128(300),
        end_user: Uuid::from_u128(1),
        pype_timers: Timers { inactive_after_secs: 60, close_after_secs: 120 },
        timers: None,
        tracking,
    }
}

fn session_command() -> impl Strategy<Value = SessionCommand> {
    prop_oneof![
        Just(start(Default::default())),
        // Under Do-Not-Track: devices are dropped, the state says so.
        Just(start(domain::session::Tracking { do_not_track: true, global_privacy_control: false })),
        (who(), "[a-z ]{0,12}", proptest::option::of("[a-z]{1,5}"), proptest::collection::vec(0u128..3, 0..3))
            .prop_map(|(sender, body, device, media)| SessionCommand::PostMessage {
                sender,
                body,
                device,
                attachments: media.into_iter().map(|m| Uuid::from_u128(500 + m)).collect(),
            }),
        (who(), 0u128..3, 1u64..5000).prop_map(|(uploader, m, size)| SessionCommand::RecordMedia {
            media: Uuid::from_u128(500 + m),
            meta: domain::session::MediaMeta {
                uploader,
                content_type: "image/png".into(),
                size,
                sha256: vec![1; 32],
                file_name: (m == 1).then(|| "a.png".to_string()),
                key_id: Uuid::from_u128(900 + m),
                at_micros: 0,
            },
        }),
        (who(), 0u64..8, any::<bool>()).prop_map(|(participant, up_to, private)| SessionCommand::AdvanceReadHorizon {
            participant,
            up_to,
            private
        }),
        (who(), prop_oneof![Just(ParticipantKind::Agent), Just(ParticipantKind::Bot), Just(ParticipantKind::EndUser)])
            .prop_map(|(participant, kind)| SessionCommand::Join { participant, kind }),
        who().prop_map(|participant| SessionCommand::Leave { participant }),
        Just(SessionCommand::Close),
        Just(SessionCommand::Tick),
    ]
}

fn replay_matches_live<A: Aggregate>(commands: Vec<(A::Command, i64)>) -> Result<(), TestCaseError> {
    let mut live = A::default();
    let mut log = Vec::new();
    let mut now = 1_795_000_000_000_000i64;
    for (command, step) in commands {
        now += step;
        if let Ok(events) = live.decide(&command, &Ctx { now_micros: now }) {
            for e in events {
                live.evolve(&e);
                log.push(e);
            }
        }
        prop_assert_eq!(&A::replay(&log), &live);
    }
    Ok(())
}

proptest! {
    #[test]
    fn session_replay_equals_live(commands in prop::collection::vec((session_command(), 0i64..200_000_000), 0..60)) {
        replay_matches_live::<Session>(commands)?;
    }

    #[test]
    fn subject_replay_equals_live(ops in prop::collection::vec((0u8..5, "[a-z]{2,6}"), 0..20)) {
        let commands = ops.into_iter().map(|(op, name)| {
            let cmd = match op {
                0 => SubjectCommand::Register {
                    subject: Uuid::from_u128(7), tenant: Uuid::from_u128(2), username: name.clone(),
                    email: format!("{name}@example.com"), phone: String::new(), birth: Birth::AttestedAtLeast13,
                },
                1 => SubjectCommand::Invite { subject: Uuid::from_u128(7), tenant: Uuid::from_u128(2), email: format!("{name}@example.com") },
                2 => SubjectCommand::Onboard { username: name, phone: String::new(), birth: Birth::AttestedAtLeast13 },
                3 => SubjectCommand::Deactivate,
                _ => SubjectCommand::Reactivate,
            };
            (cmd, 1_000_000)
        }).collect();
        replay_matches_live::<Subject>(commands)?;
    }
}
