//! Every event type the system stores, spelled once. A stored event's
//! type names its protobuf payload in `proto/pypes/events/v1/events.proto`
//! (where each is described); renaming one is a format change.

pub const CONSENT_GRANTED: &str = "ConsentGranted";
pub const CONSENT_WITHDRAWN: &str = "ConsentWithdrawn";
pub const LOCATION_SHARED: &str = "LocationShared";
pub const MEDIA_UPLOADED: &str = "MediaUploaded";
pub const MESSAGE_POSTED: &str = "MessagePosted";
pub const PARTICIPANT_JOINED: &str = "ParticipantJoined";
pub const PARTICIPANT_LEFT: &str = "ParticipantLeft";
pub const PYPE_AGENT_ASSIGNED: &str = "PypeAgentAssigned";
pub const PYPE_AGENT_UNASSIGNED: &str = "PypeAgentUnassigned";
pub const PYPE_ARCHIVED: &str = "PypeArchived";
pub const PYPE_BOT_ASSIGNED: &str = "PypeBotAssigned";
pub const PYPE_BOT_UNASSIGNED: &str = "PypeBotUnassigned";
pub const PYPE_CREATED: &str = "PypeCreated";
pub const PYPE_RETENTION_SET: &str = "PypeRetentionSet";
pub const PYPE_TIMERS_SET: &str = "PypeTimersSet";
pub const READ_HORIZON_ADVANCED: &str = "ReadHorizonAdvanced";
pub const SESSION_BECAME_INACTIVE: &str = "SessionBecameInactive";
pub const SESSION_CLOSED: &str = "SessionClosed";
pub const SESSION_CONTENT_EXPIRED: &str = "SessionContentExpired";
pub const SESSION_ERASED: &str = "SessionErased";
pub const SESSION_REACTIVATED: &str = "SessionReactivated";
pub const SESSION_RESTRICTED: &str = "SessionRestricted";
pub const SESSION_RESTRICTION_LIFTED: &str = "SessionRestrictionLifted";
pub const SESSION_STARTED: &str = "SessionStarted";
pub const SUBJECT_DEACTIVATED: &str = "SubjectDeactivated";
pub const SUBJECT_ERASED: &str = "SubjectErased";
pub const SUBJECT_ERASURE_CERTIFIED: &str = "SubjectErasureCertified";
pub const SUBJECT_ERASURE_KEYS_SHREDDED: &str = "SubjectErasureKeysShredded";
pub const SUBJECT_ERASURE_REQUESTED: &str = "SubjectErasureRequested";
pub const SUBJECT_ERASURE_SHRED_PLANNED: &str = "SubjectErasureShredPlanned";
pub const SUBJECT_INVITED: &str = "SubjectInvited";
pub const SUBJECT_ONBOARDED: &str = "SubjectOnboarded";
pub const SUBJECT_PASSWORD_SET: &str = "SubjectPasswordSet";
pub const SUBJECT_PROCESSING_RESTRICTED: &str = "SubjectProcessingRestricted";
pub const SUBJECT_REACTIVATED: &str = "SubjectReactivated";
pub const SUBJECT_RECTIFIED: &str = "SubjectRectified";
pub const SUBJECT_REGISTERED: &str = "SubjectRegistered";
pub const SUBJECT_RESTRICTION_LIFTED: &str = "SubjectRestrictionLifted";
pub const TENANT_API_KEY_ISSUED: &str = "TenantApiKeyIssued";
pub const TENANT_API_KEY_REVOKED: &str = "TenantApiKeyRevoked";
pub const TENANT_CANCELLED: &str = "TenantCancelled";
pub const TENANT_CREATED: &str = "TenantCreated";
pub const TENANT_KEYS_SHREDDED: &str = "TenantKeysShredded";
pub const TENANT_OFFBOARDING_CERTIFIED: &str = "TenantOffboardingCertified";
pub const TENANT_SETTINGS_UPDATED: &str = "TenantSettingsUpdated";
pub const USERNAME_RESERVED: &str = "UsernameReserved";
pub const STAFF_ADDED: &str = "StaffAdded";
pub const STAFF_KEY_ROTATED: &str = "StaffKeyRotated";
pub const STAFF_DISABLED: &str = "StaffDisabled";
pub const BREAK_GLASS_OPENED: &str = "BreakGlassOpened";
pub const BREAK_GLASS_CLOSED: &str = "BreakGlassClosed";
pub const LOGIN_SUCCEEDED: &str = "LoginSucceeded";
pub const LOGIN_FAILED: &str = "LoginFailed";
pub const AUTH_SESSION_STARTED: &str = "AuthSessionStarted";
pub const AUTH_SESSION_USED: &str = "AuthSessionUsed";
pub const AUTH_SESSION_ENDED: &str = "AuthSessionEnded";
pub const AUDIT_ENTRY: &str = "AuditEntry";
pub const SUBJECT_RESTRICTION_APPLIED: &str = "SubjectRestrictionApplied";
pub const PROCESS_CHECKPOINT: &str = "ProcessCheckpoint";
pub const WEBHOOK_CREATED: &str = "WebhookCreated";
pub const WEBHOOK_SECRET_ROTATED: &str = "WebhookSecretRotated";
pub const WEBHOOK_PAUSED: &str = "WebhookPaused";
pub const WEBHOOK_RESUMED: &str = "WebhookResumed";
pub const WEBHOOK_DELETED: &str = "WebhookDeleted";
pub const WEBHOOK_CHECKPOINT: &str = "WebhookCheckpoint";
pub const WEBHOOK_REDELIVERY: &str = "WebhookRedelivery";
pub const SNAPSHOT_TAKEN: &str = "SnapshotTaken";
pub const ACCESS_ALERT: &str = "AccessAlert";
pub const TENANT_MOVE_SWITCHED: &str = "TenantMoveSwitched";
pub const TENANT_MOVE_CERTIFIED: &str = "TenantMoveCertified";

/// All of them (the tidy test reads this list).
pub const ALL: &[&str] = &[
    SNAPSHOT_TAKEN,
    CONSENT_GRANTED,
    CONSENT_WITHDRAWN,
    LOCATION_SHARED,
    MEDIA_UPLOADED,
    MESSAGE_POSTED,
    PARTICIPANT_JOINED,
    PARTICIPANT_LEFT,
    PYPE_AGENT_ASSIGNED,
    PYPE_AGENT_UNASSIGNED,
    PYPE_ARCHIVED,
    PYPE_BOT_ASSIGNED,
    PYPE_BOT_UNASSIGNED,
    PYPE_CREATED,
    PYPE_RETENTION_SET,
    PYPE_TIMERS_SET,
    READ_HORIZON_ADVANCED,
    SESSION_BECAME_INACTIVE,
    SESSION_CLOSED,
    SESSION_CONTENT_EXPIRED,
    SESSION_ERASED,
    SESSION_REACTIVATED,
    SESSION_RESTRICTED,
    SESSION_RESTRICTION_LIFTED,
    SESSION_STARTED,
    SUBJECT_DEACTIVATED,
    SUBJECT_ERASED,
    SUBJECT_ERASURE_CERTIFIED,
    SUBJECT_ERASURE_KEYS_SHREDDED,
    SUBJECT_ERASURE_REQUESTED,
    SUBJECT_ERASURE_SHRED_PLANNED,
    SUBJECT_INVITED,
    SUBJECT_ONBOARDED,
    SUBJECT_PASSWORD_SET,
    SUBJECT_PROCESSING_RESTRICTED,
    SUBJECT_REACTIVATED,
    SUBJECT_RECTIFIED,
    SUBJECT_REGISTERED,
    SUBJECT_RESTRICTION_LIFTED,
    TENANT_API_KEY_ISSUED,
    TENANT_API_KEY_REVOKED,
    TENANT_CANCELLED,
    TENANT_CREATED,
    TENANT_KEYS_SHREDDED,
    TENANT_OFFBOARDING_CERTIFIED,
    TENANT_SETTINGS_UPDATED,
    USERNAME_RESERVED,
    STAFF_ADDED,
    STAFF_KEY_ROTATED,
    STAFF_DISABLED,
    BREAK_GLASS_OPENED,
    BREAK_GLASS_CLOSED,
    LOGIN_SUCCEEDED,
    LOGIN_FAILED,
    AUTH_SESSION_STARTED,
    AUTH_SESSION_USED,
    AUTH_SESSION_ENDED,
    AUDIT_ENTRY,
    WEBHOOK_CREATED,
    WEBHOOK_SECRET_ROTATED,
    WEBHOOK_PAUSED,
    WEBHOOK_RESUMED,
    WEBHOOK_DELETED,
    WEBHOOK_CHECKPOINT,
    WEBHOOK_REDELIVERY,
    ACCESS_ALERT,
    TENANT_MOVE_SWITCHED,
    TENANT_MOVE_CERTIFIED,
];
