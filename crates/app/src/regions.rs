//! Data residency: which region a tenant lives in, and the check that a
//! node touches only the tenants of the region it serves
//! (docs/residency.md).
//!
//! A node serves one region: its data directory (event log, key store,
//! blobs, views) is that region's. The tenant directory is global and
//! holds, per tenant, its id and its region, nothing else. A tenant's
//! region is written there before the tenant exists, and never changes
//! except by a move (docs/residency.md); a node asked about a tenant of
//! another region refuses before it reads or writes anything of it.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use uuid::Uuid;

use crate::AppError;

/// How long a node trusts what it read of a tenant's placement. A move
/// freezes a tenant by writing its placement; it waits this plus
/// [`DIRECTORY_REFRESH`], twice over, before it copies anything, so every
/// node has seen the freeze.
pub const PLACEMENT_TTL: Duration = Duration::from_secs(2);

/// Where a tenant lives, as the directory holds it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Placement {
    pub region: String,
    /// Set while the tenant moves to another region (docs/residency.md):
    /// neither region serves it until the move switches it over.
    pub moving_to: Option<String>,
}

impl Placement {
    pub fn settled(region: &str) -> Self {
        Self { region: region.into(), moving_to: None }
    }
}

/// A directory operation's future.
pub type DirFuture<'a, T> = std::pin::Pin<Box<dyn std::future::Future<Output = Result<T, String>> + Send + 'a>>;

/// The global tenant directory (a port: a directory of files shared by
/// the nodes, or a PostgreSQL database).
pub trait TenantDirectory: Send + Sync {
    /// Where `tenant` lives (`None`: not in the directory), at once: what
    /// the directory's files say, or a database directory's copy in
    /// memory (which follows the other nodes' writes within
    /// [`DIRECTORY_REFRESH`]).
    fn placement(&self, tenant: Uuid) -> Result<Option<Placement>, String>;
    /// Where `tenant` lives, read from the directory itself (a move's steps).
    fn fresh(&self, tenant: Uuid) -> DirFuture<'_, Option<Placement>>;
    /// Records that `tenant` lives in `region`; fails if it is recorded
    /// already (a region is fixed at creation).
    fn place<'a>(&'a self, tenant: Uuid, region: &'a str) -> DirFuture<'a, ()>;
    /// Replaces the placement `from` by `to`, atomically, only if it is
    /// still `from` (a move's freeze and switch); otherwise an error
    /// naming what it is.
    fn replace<'a>(&'a self, tenant: Uuid, from: &'a Placement, to: &'a Placement) -> DirFuture<'a, ()>;
}

/// How long a directory kept in memory may lag the others' writes, at most.
pub const DIRECTORY_REFRESH: Duration = Duration::from_secs(1);

/// A tenant as this node sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Residence {
    /// This node's region serves it (or the directory does not know it:
    /// older than the directory, or not there at all).
    Here,
    /// It is moving from this node's region to `to`.
    Leaving { to: String },
    /// It is moving from `from` to this node's region.
    Arriving { from: String },
    /// It lives in another region.
    Elsewhere { region: String },
}

/// What a background process (an erasure, a restriction, a retention
/// sweep) does with a tenant.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Gate {
    /// The tenant is this region's: go on.
    Go,
    /// It is moving: try again later (after the move, the region it
    /// lands in goes on).
    Wait,
    /// It is another region's: leave it to that region.
    Leave,
}

/// [`Gate`] for `tenant` (always `Go` without regions).
pub fn gate(regions: Option<&Regions>, tenant: Uuid) -> Result<Gate, AppError> {
    let Some(r) = regions else { return Ok(Gate::Go) };
    Ok(match r.residence(tenant)? {
        Residence::Here => Gate::Go,
        Residence::Leaving { .. } | Residence::Arriving { .. } => Gate::Wait,
        Residence::Elsewhere { .. } => Gate::Leave,
    })
}

/// The regions as this node sees them.
pub struct Regions {
    /// The region this node serves.
    this: String,
    /// Every region of the deployment (a tenant may be created in any).
    known: Vec<String>,
    directory: Arc<dyn TenantDirectory>,
    /// Placements looked up, and when (trusted for [`PLACEMENT_TTL`]).
    cache: Mutex<HashMap<Uuid, (Option<Placement>, Instant)>>,
}

impl Regions {
    pub fn new(this: String, known: Vec<String>, directory: Arc<dyn TenantDirectory>) -> Self {
        Self { this, known, directory, cache: Mutex::new(HashMap::new()) }
    }

    pub fn this(&self) -> &str {
        &self.this
    }

    pub fn known(&self) -> &[String] {
        &self.known
    }

    pub fn directory(&self) -> &Arc<dyn TenantDirectory> {
        &self.directory
    }

    /// The tenant's placement, read again from the directory itself (a
    /// move's own steps, which must not act on a stale one).
    pub async fn placement_now(&self, tenant: Uuid) -> Result<Option<Placement>, AppError> {
        let found = self
            .directory
            .fresh(tenant)
            .await
            .map_err(|e| AppError::Unavailable(format!("the tenant directory cannot be read: {e}")))?;
        self.cache.lock().unwrap_or_else(|e| e.into_inner()).insert(tenant, (found.clone(), Instant::now()));
        Ok(found)
    }

    fn lookup(&self, tenant: Uuid) -> Result<Option<Placement>, AppError> {
        if let Some((p, at)) = self.cache.lock().unwrap_or_else(|e| e.into_inner()).get(&tenant)
            && at.elapsed() < PLACEMENT_TTL
        {
            return Ok(p.clone());
        }
        let found = self
            .directory
            .placement(tenant)
            .map_err(|e| AppError::Unavailable(format!("the tenant directory cannot be read: {e}")))?;
        self.cache.lock().unwrap_or_else(|e| e.into_inner()).insert(tenant, (found.clone(), Instant::now()));
        Ok(found)
    }

    /// Where the tenant lives, from this node's point of view.
    pub fn residence(&self, tenant: Uuid) -> Result<Residence, AppError> {
        Ok(self.residence_of(self.lookup(tenant)?))
    }

    pub fn residence_of(&self, placement: Option<Placement>) -> Residence {
        match placement {
            None => Residence::Here,
            Some(Placement { region, moving_to: None }) if region == self.this => Residence::Here,
            Some(Placement { region, moving_to: Some(to) }) if region == self.this => Residence::Leaving { to },
            Some(Placement { region, moving_to: Some(to) }) if to == self.this => Residence::Arriving { from: region },
            Some(Placement { region, .. }) => Residence::Elsewhere { region },
        }
    }

    /// Refuses a tenant of another region (before anything of it is read),
    /// and a tenant on its way between regions (retry after the move).
    /// A tenant the directory does not know is left to the call (it is
    /// unknown here too, or older than the directory).
    pub fn require_local(&self, tenant: Uuid) -> Result<(), AppError> {
        match self.residence(tenant)? {
            Residence::Here => Ok(()),
            Residence::Leaving { to } => Err(AppError::Unavailable(format!(
                "tenant {tenant} is moving from region {} to region {to}; try again when the move is done",
                self.this
            ))),
            Residence::Arriving { from: region } | Residence::Elsewhere { region } => Err(AppError::ElsewhereRegion {
                message: format!(
                    "tenant {tenant} lives in region {region}; this node serves region {}: send the request to a \
                         node of region {region}",
                    self.this
                ),
                region,
            }),
        }
    }

    /// The region of a new tenant (`requested`, or this node's when
    /// empty), recorded in the directory. Another region's tenant is
    /// created by a node of that region.
    pub async fn place_new(&self, tenant: Uuid, requested: &str) -> Result<String, AppError> {
        let region = if requested.is_empty() { self.this.clone() } else { requested.to_string() };
        self.require_known(&region, "region")?;
        if region != self.this {
            return Err(AppError::ElsewhereRegion {
                message: format!(
                    "a tenant of region {region} is created by a node of region {region}; this node serves region {}",
                    self.this
                ),
                region,
            });
        }
        self.directory
            .place(tenant, &region)
            .await
            .map_err(|e| AppError::Unavailable(format!("the tenant directory cannot be written: {e}")))?;
        self.cache
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(tenant, (Some(Placement::settled(&region)), Instant::now()));
        Ok(region)
    }

    /// Refuses a region the deployment does not have, listing the ones it has.
    pub fn require_known(&self, region: &str, field: &'static str) -> Result<(), AppError> {
        if self.known.iter().any(|r| r == region) {
            return Ok(());
        }
        Err(AppError::invalid(
            field,
            format!("{region:?} is not a region of this deployment ({})", self.known.join(", ")),
        ))
    }

    /// Replaces the tenant's placement (a move's freeze, switch or abort).
    pub async fn replace(&self, tenant: Uuid, from: &Placement, to: &Placement) -> Result<(), AppError> {
        self.directory.replace(tenant, from, to).await.map_err(AppError::FailedPrecondition)?;
        self.cache.lock().unwrap_or_else(|e| e.into_inner()).insert(tenant, (Some(to.clone()), Instant::now()));
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Default)]
    struct Memory(Mutex<HashMap<Uuid, Placement>>);

    impl TenantDirectory for Memory {
        fn placement(&self, tenant: Uuid) -> Result<Option<Placement>, String> {
            Ok(self.0.lock().unwrap().get(&tenant).cloned())
        }
        fn fresh(&self, tenant: Uuid) -> DirFuture<'_, Option<Placement>> {
            Box::pin(async move { self.placement(tenant) })
        }
        fn place<'a>(&'a self, tenant: Uuid, region: &'a str) -> DirFuture<'a, ()> {
            Box::pin(async move {
                match self.0.lock().unwrap().insert(tenant, Placement::settled(region)) {
                    None => Ok(()),
                    Some(_) => Err("placed twice".into()),
                }
            })
        }
        fn replace<'a>(&'a self, tenant: Uuid, from: &'a Placement, to: &'a Placement) -> DirFuture<'a, ()> {
            Box::pin(async move {
                let mut m = self.0.lock().unwrap();
                match m.get(&tenant) {
                    Some(p) if p == from => {
                        m.insert(tenant, to.clone());
                        Ok(())
                    }
                    other => Err(format!("placement is {other:?}")),
                }
            })
        }
    }

    #[tokio::test]
    async fn a_node_places_its_own_regions_tenants_and_refuses_the_others() {
        let dir = Arc::new(Memory::default());
        let known = vec!["eu".to_string(), "us".to_string()];
        let eu = Regions::new("eu".into(), known.clone(), dir.clone());
        let us = Regions::new("us".into(), known, dir.clone());
        let (a, b) = (Uuid::now_v7(), Uuid::now_v7());
        assert_eq!(eu.place_new(a, "").await.unwrap(), "eu");
        let e = eu.place_new(b, "us").await.unwrap_err();
        assert_eq!(e.region(), Some("us"));
        assert!(matches!(eu.place_new(b, "mars").await, Err(AppError::Invalid { field: "region", .. })));
        assert_eq!(us.place_new(b, "us").await.unwrap(), "us");
        assert!(eu.require_local(a).is_ok() && us.require_local(b).is_ok());
        let e = eu.require_local(b).unwrap_err();
        assert_eq!(e.region(), Some("us"));
        assert!(e.to_string().contains("region us"), "{e}");
        assert_eq!(us.require_local(a).unwrap_err().region(), Some("eu"));
        // Unknown to the directory: left to the call.
        assert!(eu.require_local(Uuid::now_v7()).is_ok());
    }

    #[tokio::test]
    async fn a_moving_tenant_is_served_by_neither_region_until_the_switch() {
        let dir = Arc::new(Memory::default());
        let known = vec!["eu".to_string(), "us".to_string()];
        let eu = Regions::new("eu".into(), known.clone(), dir.clone());
        let us = Regions::new("us".into(), known, dir.clone());
        let a = Uuid::now_v7();
        eu.place_new(a, "eu").await.unwrap();
        let moving = Placement { region: "eu".into(), moving_to: Some("us".into()) };
        eu.replace(a, &Placement::settled("eu"), &moving).await.unwrap();
        // A second freeze finds the placement changed.
        assert!(matches!(
            eu.replace(a, &Placement::settled("eu"), &moving).await,
            Err(AppError::FailedPrecondition(_))
        ));
        assert_eq!(eu.residence(a).unwrap(), Residence::Leaving { to: "us".into() });
        assert_eq!(us.residence(a).unwrap(), Residence::Arriving { from: "eu".into() });
        assert!(matches!(eu.require_local(a), Err(AppError::Unavailable(m)) if m.contains("moving")));
        assert_eq!(us.require_local(a).unwrap_err().region(), Some("eu"));
        eu.replace(a, &moving, &Placement::settled("us")).await.unwrap();
        assert_eq!(eu.residence(a).unwrap(), Residence::Elsewhere { region: "us".into() });
        // `us` looked a moment ago: it trusts that for the TTL, then reads again.
        assert_eq!(us.placement_now(a).await.unwrap(), Some(Placement::settled("us")));
        assert_eq!(us.residence(a).unwrap(), Residence::Here);
        assert_eq!(eu.require_local(a).unwrap_err().region(), Some("us"));
    }
}
