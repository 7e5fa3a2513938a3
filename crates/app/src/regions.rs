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

use uuid::Uuid;

use crate::AppError;

/// The global tenant directory (a port: a directory of files shared by
/// the nodes, or a database).
pub trait TenantDirectory: Send + Sync {
    /// The region `tenant` lives in (`None`: not in the directory).
    fn region_of(&self, tenant: Uuid) -> Result<Option<String>, String>;
    /// Records that `tenant` lives in `region`; fails if it is recorded
    /// already (a region is fixed at creation).
    fn place(&self, tenant: Uuid, region: &str) -> Result<(), String>;
}

/// The regions as this node sees them.
pub struct Regions {
    /// The region this node serves.
    this: String,
    /// Every region of the deployment (a tenant may be created in any).
    known: Vec<String>,
    directory: Arc<dyn TenantDirectory>,
    /// Regions looked up (fixed, so kept).
    cache: Mutex<HashMap<Uuid, Arc<str>>>,
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

    fn lookup(&self, tenant: Uuid) -> Result<Option<Arc<str>>, AppError> {
        if let Some(r) = self.cache.lock().unwrap_or_else(|e| e.into_inner()).get(&tenant) {
            return Ok(Some(r.clone()));
        }
        let found = self
            .directory
            .region_of(tenant)
            .map_err(|e| AppError::Unavailable(format!("the tenant directory cannot be read: {e}")))?;
        Ok(found.map(|r| {
            let r: Arc<str> = r.into();
            self.cache.lock().unwrap_or_else(|e| e.into_inner()).insert(tenant, r.clone());
            r
        }))
    }

    /// Refuses a tenant of another region (before anything of it is read).
    /// A tenant the directory does not know is left to the call (it is
    /// unknown here too, or older than the directory).
    pub fn require_local(&self, tenant: Uuid) -> Result<(), AppError> {
        match self.lookup(tenant)? {
            Some(r) if *r != *self.this => Err(AppError::ElsewhereRegion {
                region: r.to_string(),
                message: format!(
                    "tenant {tenant} lives in region {r}; this node serves region {}: send the request to a node \
                     of region {r}",
                    self.this
                ),
            }),
            _ => Ok(()),
        }
    }

    /// The region of a new tenant (`requested`, or this node's when
    /// empty), recorded in the directory. Another region's tenant is
    /// created by a node of that region.
    pub fn place_new(&self, tenant: Uuid, requested: &str) -> Result<String, AppError> {
        let region = if requested.is_empty() { self.this.clone() } else { requested.to_string() };
        if !self.known.contains(&region) {
            return Err(AppError::invalid(
                "region",
                format!("{region:?} is not a region of this deployment ({})", self.known.join(", ")),
            ));
        }
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
            .map_err(|e| AppError::Unavailable(format!("the tenant directory cannot be written: {e}")))?;
        self.cache.lock().unwrap_or_else(|e| e.into_inner()).insert(tenant, region.as_str().into());
        Ok(region)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Default)]
    struct Memory(Mutex<HashMap<Uuid, String>>);

    impl TenantDirectory for Memory {
        fn region_of(&self, tenant: Uuid) -> Result<Option<String>, String> {
            Ok(self.0.lock().unwrap().get(&tenant).cloned())
        }
        fn place(&self, tenant: Uuid, region: &str) -> Result<(), String> {
            match self.0.lock().unwrap().insert(tenant, region.into()) {
                None => Ok(()),
                Some(_) => Err("placed twice".into()),
            }
        }
    }

    #[test]
    fn a_node_places_its_own_regions_tenants_and_refuses_the_others() {
        let dir = Arc::new(Memory::default());
        let known = vec!["eu".to_string(), "us".to_string()];
        let eu = Regions::new("eu".into(), known.clone(), dir.clone());
        let us = Regions::new("us".into(), known, dir.clone());
        let (a, b) = (Uuid::now_v7(), Uuid::now_v7());
        assert_eq!(eu.place_new(a, "").unwrap(), "eu");
        let e = eu.place_new(b, "us").unwrap_err();
        assert_eq!(e.region(), Some("us"));
        assert!(matches!(eu.place_new(b, "mars"), Err(AppError::Invalid { field: "region", .. })));
        assert_eq!(us.place_new(b, "us").unwrap(), "us");
        assert!(eu.require_local(a).is_ok() && us.require_local(b).is_ok());
        let e = eu.require_local(b).unwrap_err();
        assert_eq!(e.region(), Some("us"));
        assert!(e.to_string().contains("region us"), "{e}");
        assert_eq!(us.require_local(a).unwrap_err().region(), Some("eu"));
        // Unknown to the directory: left to the call.
        assert!(eu.require_local(Uuid::now_v7()).is_ok());
    }
}
