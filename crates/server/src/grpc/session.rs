//! `SessionService`.

use app::import::{ImportItem, ImportMessage, ImportReport, ImportStatus, ImportStream};
use domain::session::ParticipantKind;
use proto::api as pb;
use tonic::{Request, Streaming};

use super::convert::{event_out, kind_in, session_out, state_out, timers_in};
use super::{Handle, Reply, Streamed, credentials};

/// The import stream's items as the application takes them.
fn import_items(mut stream: Streaming<pb::ImportSessionRequest>) -> ImportStream {
    let (tx, rx) = tokio::sync::mpsc::channel(64);
    tokio::spawn(async move {
        loop {
            let item = match stream.message().await {
                Ok(Some(r)) => Ok(ImportItem {
                    import_id: r.import_id,
                    pype_id: r.pype_id,
                    end_user_id: r.end_user_id,
                    started_at_micros: r.started_at_micros,
                    messages: r
                        .messages
                        .into_iter()
                        .map(|m| ImportMessage {
                            sender_id: m.sender_id,
                            kind: match pb::ParticipantKind::try_from(m.sender_kind) {
                                Ok(pb::ParticipantKind::Unspecified | pb::ParticipantKind::Agent) => {
                                    Some(ParticipantKind::Agent)
                                }
                                Ok(pb::ParticipantKind::Bot) => Some(ParticipantKind::Bot),
                                Ok(pb::ParticipantKind::EndUser) => Some(ParticipantKind::EndUser),
                                Err(_) => None,
                            },
                            body: m.body,
                            sent_at_micros: m.sent_at_micros,
                        })
                        .collect(),
                    closed_at_micros: r.closed_at_micros,
                }),
                Ok(None) => return,
                Err(status) => Err(status.message().to_string()),
            };
            let failed = item.is_err();
            if tx.send(item).await.is_err() || failed {
                return;
            }
        }
    });
    rx
}

fn import_out(r: ImportReport) -> pb::ImportSessionsResponse {
    use pb::import_session_result::Status as S;
    pb::ImportSessionsResponse {
        written: r.written,
        already_imported: r.already_imported,
        failed: r.failed,
        messages_written: r.messages_written,
        results: r
            .results
            .into_iter()
            .map(|i| pb::ImportSessionResult {
                import_id: i.import_id,
                status: match i.status {
                    ImportStatus::Written => S::Written,
                    ImportStatus::AlreadyImported => S::AlreadyImported,
                    ImportStatus::Failed => S::Failed,
                } as i32,
                session_id: i.session.map(|s| s.to_string()).unwrap_or_default(),
                messages: i.messages,
                reason: i.reason,
            })
            .collect(),
    }
}

#[tonic::async_trait]
impl pb::session_service_server::SessionService for Handle {
    async fn import_sessions(
        &self,
        request: Request<Streaming<pb::ImportSessionRequest>>,
    ) -> Reply<pb::ImportSessionsResponse> {
        let who = credentials(request.metadata());
        let items = import_items(request.into_inner());
        self.unary("ImportSessions", async { Ok(import_out(self.app.import_sessions(&who, items).await?)) }).await
    }

    async fn start_session(&self, request: Request<pb::StartSessionRequest>) -> Reply<pb::Session> {
        let who = credentials(request.metadata());
        let r = request.into_inner();
        self.unary("StartSession", async {
            let tracking = domain::session::Tracking {
                do_not_track: r.do_not_track,
                global_privacy_control: r.global_privacy_control,
            };
            Ok(session_out(
                &self.app.start_session(&who, &r.pype_id, &r.end_user_id, timers_in(r.timers), tracking).await?,
            ))
        })
        .await
    }

    async fn post_message(&self, request: Request<pb::PostMessageRequest>) -> Reply<pb::PostMessageResponse> {
        let who = credentials(request.metadata());
        let r = request.into_inner();
        self.unary("PostMessage", async {
            let from = app::sessions::SentFrom { device: r.device, do_not_track: r.do_not_track };
            let done =
                self.app.post_message(&who, &r.session_id, &r.sender_id, r.body, from, &r.attachment_ids).await?;
            Ok(pb::PostMessageResponse {
                seq: done.seq,
                sent_at_micros: done.sent_at_micros,
                state: state_out(done.status),
            })
        })
        .await
    }

    async fn advance_read_horizon(&self, request: Request<pb::AdvanceReadHorizonRequest>) -> Reply<pb::Session> {
        let who = credentials(request.metadata());
        let r = request.into_inner();
        self.unary("AdvanceReadHorizon", async {
            Ok(session_out(
                &self.app.advance_read_horizon(&who, &r.session_id, &r.participant_id, r.up_to, r.private).await?,
            ))
        })
        .await
    }

    async fn join_session(&self, request: Request<pb::JoinSessionRequest>) -> Reply<pb::Session> {
        let who = credentials(request.metadata());
        let r = request.into_inner();
        self.unary("JoinSession", async {
            let kind = kind_in("kind", r.kind);
            Ok(session_out(&self.app.join_session(&who, &r.session_id, &r.participant_id, kind).await?))
        })
        .await
    }

    async fn leave_session(&self, request: Request<pb::LeaveSessionRequest>) -> Reply<pb::Session> {
        let who = credentials(request.metadata());
        let r = request.into_inner();
        self.unary("LeaveSession", async {
            Ok(session_out(&self.app.leave_session(&who, &r.session_id, &r.participant_id).await?))
        })
        .await
    }

    async fn share_location(&self, request: Request<pb::ShareLocationRequest>) -> Reply<pb::Session> {
        let who = credentials(request.metadata());
        let r = request.into_inner();
        self.unary("ShareLocation", async {
            let (session, participant) = (&r.session_id, &r.participant_id);
            Ok(session_out(
                &self.app.share_location(&who, session, participant, r.latitude, r.longitude, r.accuracy_m).await?,
            ))
        })
        .await
    }

    async fn close_session(&self, request: Request<pb::CloseSessionRequest>) -> Reply<pb::Session> {
        let who = credentials(request.metadata());
        let r = request.into_inner();
        self.unary("CloseSession", async { Ok(session_out(&self.app.close_session(&who, &r.session_id).await?)) }).await
    }

    async fn get_session(&self, request: Request<pb::GetSessionRequest>) -> Reply<pb::Session> {
        let who = credentials(request.metadata());
        let r = request.into_inner();
        self.unary("GetSession", async { Ok(session_out(&self.app.get_session(&who, &r.session_id).await?)) }).await
    }

    async fn list_sessions(&self, request: Request<pb::ListSessionsRequest>) -> Reply<pb::ListSessionsResponse> {
        let who = credentials(request.metadata());
        let r = request.into_inner();
        self.unary("ListSessions", async {
            let page = self.app.list_sessions(&who, &r.pype_id, r.page_size, &r.page_token).await?;
            Ok(pb::ListSessionsResponse {
                sessions: page.sessions.iter().map(session_out).collect(),
                next_page_token: page.next_page_token,
            })
        })
        .await
    }

    type WatchSessionStream = Streamed<pb::SessionEvent>;

    async fn watch_session(&self, request: Request<pb::WatchSessionRequest>) -> Reply<Self::WatchSessionStream> {
        let who = credentials(request.metadata());
        let r = request.into_inner();
        // The id is checked by the call; a malformed one never streams.
        let session = uuid::Uuid::parse_str(&r.session_id).unwrap_or_default();
        self.streaming("WatchSession", self.app.watch_session(&who, &r.session_id, r.from_version), move |w| {
            event_out(session, w)
        })
        .await
    }
}
