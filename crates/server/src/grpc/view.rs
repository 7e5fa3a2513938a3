//! `ViewService`: Sessions, messages, the end-user directory and Pype
//! overviews from the read models.

use proto::api as pb;
use proto::views::SessionState;
use tonic::Request;

use super::convert::{attachment_out, id_text};
use super::{Handle, Reply, credentials};

#[tonic::async_trait]
impl pb::view_service_server::ViewService for Handle {
    async fn get_session_view(&self, request: Request<pb::GetSessionViewRequest>) -> Reply<pb::SessionView> {
        let who = credentials(request.metadata());
        let r = request.into_inner();
        self.unary("GetSessionView", async {
            let (session, row) = self.app.get_session_view(&who, &r.session_id).await?;
            let participants = row
                .participants
                .iter()
                .map(|p| pb::Participant {
                    participant_id: id_text(&p.participant_id),
                    kind: p.kind,
                    present: p.present,
                    // Private horizons are the end user's own business.
                    read_up_to: row
                        .horizons
                        .iter()
                        .find(|h| h.participant_id == p.participant_id && !h.private)
                        .map(|h| h.up_to),
                })
                .collect();
            let state = match SessionState::try_from(row.state).unwrap_or(SessionState::Unspecified) {
                SessionState::Active => pb::SessionState::Active,
                SessionState::Inactive => pb::SessionState::Inactive,
                SessionState::Closed => pb::SessionState::Closed,
                SessionState::Unspecified => pb::SessionState::Unspecified,
            };
            Ok(pb::SessionView {
                session_id: session.to_string(),
                pype_id: id_text(&row.pype_id),
                end_user_id: id_text(&row.end_user_id),
                state: state as i32,
                participants,
                started_micros: row.started_micros,
                last_activity_micros: row.last_activity_micros,
                closed_micros: row.closed_micros,
                close_reason: match (state, row.close_reason) {
                    (pb::SessionState::Closed, 2) => "timer".into(),
                    (pb::SessionState::Closed, _) => "api".into(),
                    _ => String::new(),
                },
                message_count: row.messages,
                erased: row.erased,
            })
        })
        .await
    }

    async fn list_messages(&self, request: Request<pb::ListMessagesRequest>) -> Reply<pb::ListMessagesResponse> {
        let who = credentials(request.metadata());
        let r = request.into_inner();
        let session = uuid::Uuid::parse_str(&r.session_id).unwrap_or_default();
        self.unary("ListMessages", async {
            let (messages, next_after_seq) =
                self.app.list_messages(&who, &r.session_id, r.after_seq, r.page_size).await?;
            Ok(pb::ListMessagesResponse {
                messages: messages
                    .into_iter()
                    .map(|m| pb::Message {
                        seq: m.seq,
                        sender_id: id_text(&m.sender),
                        sent_at_micros: m.sent_at_micros,
                        erased: m.erased,
                        body: m.body,
                        device: m.device,
                        attachments: m.attachments.iter().map(|a| attachment_out(session, a)).collect(),
                    })
                    .collect(),
                next_after_seq,
            })
        })
        .await
    }

    async fn list_end_users(&self, request: Request<pb::ListEndUsersRequest>) -> Reply<pb::ListEndUsersResponse> {
        let who = credentials(request.metadata());
        let r = request.into_inner();
        self.unary("ListEndUsers", async {
            let (users, next_page_token) = self.app.list_end_users(&who, r.page_size, &r.page_token).await?;
            Ok(pb::ListEndUsersResponse {
                end_users: users
                    .into_iter()
                    .map(|u| pb::EndUser {
                        subject_id: u.subject.to_string(),
                        username: u.username,
                        email: u.email,
                        phone: u.phone,
                        state: u.state.into(),
                        created_micros: u.created_micros,
                    })
                    .collect(),
                next_page_token,
            })
        })
        .await
    }

    async fn get_pype_overview(&self, request: Request<pb::GetPypeOverviewRequest>) -> Reply<pb::PypeOverview> {
        let who = credentials(request.metadata());
        let r = request.into_inner();
        self.unary("GetPypeOverview", async {
            let (pype, o) = self.app.get_pype_overview(&who, &r.pype_id).await?;
            Ok(pb::PypeOverview {
                pype_id: pype.to_string(),
                sessions_total: o.sessions_total,
                active: o.active,
                inactive: o.inactive,
                closed: o.closed,
                last_activity_micros: o.last_activity_micros,
            })
        })
        .await
    }
}
