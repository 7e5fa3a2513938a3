//! Tenant isolation, RPC by RPC: every call made with tenant A's key about
//! tenant B's ids is refused (or, for calls that name no ids, acts on A
//! alone), with no credentials or a revoked key every call is
//! UNAUTHENTICATED, and no answer or error carries anything of B's. B's
//! data is unchanged afterwards.

mod common;

use common::{ADMIN, Ids, RPCS, authed, call, clients, download, post, setup, start, upload, upload_messages};
use proto::api as pb;
use tonic::Code;

/// Calls that name no other tenant's ids: with A's key they act on A.
const ACT_ON_CALLER: &[&str] = &[
    "CreateApiKey",
    "CreatePype",
    "RegisterSubject",
    "InviteSubject",
    "ListEndUsers",
    "Logout",
    "ImportSessions",
    "ExportTenant",
    "CreateWebhook",
    "ListWebhooks",
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_rpc_keeps_tenants_apart() {
    let data = tempfile::tempdir().unwrap();
    let server = start(data.path());
    let mut c = clients(&server.grpc).await;
    let a = setup(&mut c, "alpha-user").await;
    let b = setup(&mut c, "bravo-canary-user").await;
    let body = "bravo canary body 7d1e";
    c.sessions.post_message(authed(&b.key, post(&b, body))).await.unwrap();
    let ch = tonic::transport::Channel::from_shared(server.grpc.clone()).unwrap().connect().await.unwrap();
    let picture = b"bravo canary picture 5c2a";
    let b_media = upload(&ch, &b.key, None, upload_messages(&b.session, &b.user, "image/png", picture, 7))
        .await
        .unwrap()
        .media_id;
    let b_key_id = uuid::Uuid::parse_str(b.key.split('_').nth(2).unwrap()).unwrap().to_string();
    let b_ids = Ids {
        tenant: b.tenant.clone(),
        pype: b.pype.clone(),
        session: b.session.clone(),
        user: b.user.clone(),
        api_key_id: b_key_id.clone(),
        media: b_media.clone(),
    };
    // What must never show in an answer to A.
    let secrets = [
        b.tenant.as_str(),
        &b.pype,
        &b.session,
        &b.user,
        &b_key_id,
        &b_media,
        "bravo-canary-user",
        body,
        "bravo canary picture",
    ];

    // A revoked key of A's.
    let revoked = c.tenants.create_api_key(authed(&a.key, pb::CreateApiKeyRequest {})).await.unwrap().into_inner();
    c.tenants
        .revoke_api_key(authed(
            &a.key,
            pb::RevokeApiKeyRequest { api_key_id: revoked.api_key_id.clone(), ..Default::default() },
        ))
        .await
        .unwrap();

    for rpc in RPCS {
        let got = call(&ch, rpc, &a.key, None, &b_ids).await;
        let text = match &got {
            Ok(reply) => reply.clone(),
            Err(e) => format!("{:?} {}", e.code(), e.message()),
        };
        for secret in secrets {
            assert!(!text.contains(secret), "{rpc}: B's {secret:?} in the answer to A: {text}");
        }
        if !ACT_ON_CALLER.contains(rpc) {
            assert!(got.is_err(), "{rpc} with A's key and B's ids succeeded: {text}");
        }
        for (who, key) in [("no key", ""), ("revoked key", revoked.api_key.as_str())] {
            let got = call(&ch, rpc, key, None, &b_ids).await;
            assert!(matches!(&got, Err(e) if e.code() == Code::Unauthenticated), "{rpc} with {who}: {got:?}");
            let text = format!("{got:?}");
            for secret in secrets {
                assert!(!text.contains(secret), "{rpc} with {who}: {secret:?} in {text}");
            }
        }
    }

    // B is as it was: its key works, its user is active, one message.
    let user =
        c.subjects.get_subject(authed(&b.key, pb::GetSubjectRequest { subject_id: b.user.clone() })).await.unwrap();
    assert_eq!(user.into_inner().status, pb::SubjectStatus::Active as i32);
    let messages = c
        .views
        .list_messages(authed(&b.key, pb::ListMessagesRequest { session_id: b.session.clone(), ..Default::default() }))
        .await
        .unwrap()
        .into_inner()
        .messages;
    assert_eq!(messages.len(), 1);
    assert_eq!(messages[0].body, body);
    let request = pb::DownloadMediaRequest { session_id: b.session.clone(), media_id: b_media, ..Default::default() };
    assert_eq!(download(&ch, &b.key, None, request).await.unwrap().1, picture);
    let _ = ADMIN;
}
