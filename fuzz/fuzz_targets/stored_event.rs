//! Fuzzes what the log hands the application: a stored-event envelope
//! (`pypes.storage.v1.StoredEvent`, as read from a file-log frame's batch
//! or a database row; an odd first byte reads the rest as frames, as the
//! file log does, so log segments are seeds) turned into a recorded event,
//! then every decoder of event payloads: each
//! entity's `Codec::decode` (sealed fields opened through a keyring), the
//! clear decoders (Sessions, logins, webhooks, moves, checkpoints), the
//! snapshot decoders and the attachment list. Any bytes: an error or a
//! value, never a panic.
#![no_main]

use std::sync::{Arc, OnceLock};

use eventlog::RecordedEvent;
use eventlog::file::format::{self, FrameParse};
use events::codec::{self, Codec};
use keystore::{KeyPolicy, Keyring};
use libfuzzer_sys::fuzz_target;
use prost::Message;
use proto::log::{entry, frame};

struct World {
    rt: tokio::runtime::Runtime,
    keyring: Keyring,
}

fn world() -> &'static World {
    static WORLD: OnceLock<World> = OnceLock::new();
    WORLD.get_or_init(|| {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
        let clock: Arc<dyn eventlog::Clock> = Arc::new(eventlog::SystemClock);
        let root = keystore::crypto::SecretKey::from_bytes(&[7; 32]).expect("root key");
        let provider = Arc::new(keystore::EmbeddedRootProvider::in_memory(root, 0).expect("provider"));
        let store = Arc::new(keystore::LocalKeyStore::in_memory(provider, clock));
        let keyring = Keyring::new(store, KeyPolicy::default()).expect("keyring");
        World { rt, keyring }
    })
}

async fn decode_all(r: &RecordedEvent, keyring: &Keyring) {
    let _ = <domain::tenant::Tenant as Codec>::decode(r, keyring).await;
    let _ = <domain::pype::Pype as Codec>::decode(r, keyring).await;
    let _ = <domain::session::Session as Codec>::decode(r, keyring).await;
    let _ = <domain::subject::Subject as Codec>::decode(r, keyring).await;
    let _ = <domain::staff::StaffDirectory as Codec>::decode(r, keyring).await;
    let _ = codec::decode_snapshot::<domain::session::Session>(r, keyring).await;
    let _ = codec::decode_snapshot::<domain::subject::Subject>(r, keyring).await;
    let _ = codec::decode_session_clear(r);
    let _ = codec::decode_username_reserved(r);
    let _ = codec::decode_webhook_checkpoint(r);
    let _ = codec::decode_webhook_redelivery(r);
    let _ = codec::decode_access_alert(r);
    let _ = codec::decode_move_switched(r);
    let _ = codec::decode_move_certified(r);
    let _ = codec::decode_process_checkpoint(r);
    let _ = codec::decode_auth(r);
}

fn decode_stored(bytes: bytes::Bytes) {
    let Ok(stored) = proto::storage::StoredEvent::decode(bytes) else { return };
    let stream: Arc<str> = Arc::from(stored.stream.as_str());
    let Ok(recorded) = RecordedEvent::from_stored(stored, stream) else { return };
    let w = world();
    w.rt.block_on(decode_all(&recorded, &w.keyring));
}

fuzz_target!(|data: &[u8]| {
    let Some((&selector, rest)) = data.split_first() else { return };
    // The plaintext of a snapshot and of attachment lists, as opened.
    let _ = <domain::session::Session as Codec>::from_snapshot(rest);
    let _ = <domain::subject::Subject as Codec>::from_snapshot(rest);
    let _ = codec::decode_attachments(rest);
    if selector & 1 == 0 {
        decode_stored(bytes::Bytes::copy_from_slice(rest));
        return;
    }
    let mut at = 0;
    while at < rest.len() {
        let FrameParse::Frame { frame, len } = format::parse_frame(&rest[at..]) else { break };
        at += len;
        if let Some(frame::Body::Batch(batch)) = frame.body {
            for e in batch.entries {
                if let Some(entry::Kind::Event(bytes)) = e.kind {
                    decode_stored(bytes);
                }
            }
        }
    }
});
