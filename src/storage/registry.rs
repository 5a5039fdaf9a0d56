//! The object stores of one engine: the local file system, and one S3 store per bucket.
//!
//! DataFusion finds a table's store by the URL's scheme and bucket, so every store a table or an
//! output uses is made here once, counted ([`CountingStore`]), and registered with the session's
//! object-store registry; tables and outputs then share it. Two tables may not configure one
//! bucket differently, since DataFusion keeps one store per bucket. Must not know about tables or
//! output formats: callers hand it locations and get stores back.

use super::counting::{CountingStore, StoreCounters};
use super::local::MappedLocalStore;
use super::s3::s3_store;
use super::Location;
use crate::config::S3Settings;
use crate::error::{Error, Result};
use datafusion::error::DataFusionError;
use datafusion::execution::object_store::{DefaultObjectStoreRegistry, ObjectStoreRegistry};
use object_store::path::Path as StorePath;
use object_store::ObjectStore;
use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};

/// Where an `s3://bucket/key` output goes: the bucket's store and the key.
pub(crate) struct ObjectTarget {
    pub(crate) store: Arc<dyn ObjectStore>,
    pub(crate) path: StorePath,
}

/// The stores of one engine, all counted into one [`StoreCounters`].
pub(crate) struct StoreRegistry {
    /// DataFusion's registry, where scans look stores up by URL.
    datafusion: Arc<dyn ObjectStoreRegistry>,
    counters: Arc<StoreCounters>,
    local: Arc<dyn ObjectStore>,
    /// `[storage.s3]`: the settings of every bucket a table does not configure itself.
    s3_defaults: S3Settings,
    /// One store per bucket, with the settings it was built from.
    s3: Mutex<HashMap<String, (S3Settings, Arc<dyn ObjectStore>)>>,
}

impl StoreRegistry {
    /// The registry of a session whose object stores live in `datafusion`: the local store is
    /// registered at once, S3 stores on first use.
    pub(crate) fn new(
        datafusion: Arc<dyn ObjectStoreRegistry>,
        s3_defaults: S3Settings,
    ) -> Result<StoreRegistry> {
        let counters = Arc::new(StoreCounters::default());
        let local: Arc<dyn ObjectStore> = Arc::new(CountingStore::new(
            Arc::new(MappedLocalStore::new()),
            counters.clone(),
        ));
        let file_url = url::Url::parse("file://").map_err(|e| Error::Internal(e.to_string()))?;
        datafusion.register_store(&file_url, local.clone());
        Ok(StoreRegistry {
            datafusion,
            counters,
            local,
            s3_defaults,
            s3: Mutex::new(HashMap::new()),
        })
    }

    /// Request and byte counters of every store.
    pub(crate) fn counters(&self) -> &Arc<StoreCounters> {
        &self.counters
    }

    /// The store a location lives in, made (and registered with DataFusion) on first use.
    /// `table` settings override `[storage.s3]`; two tables may not configure one bucket
    /// differently, since DataFusion keeps one store per bucket.
    pub(crate) fn store_for(
        &self,
        location: &Location,
        table: Option<&S3Settings>,
    ) -> Result<Arc<dyn ObjectStore>> {
        let Some(bucket) = location.bucket() else {
            return Ok(self.local.clone());
        };
        let settings = match table {
            Some(own) => own.over(&self.s3_defaults),
            None => self.s3_defaults.clone(),
        };
        let mut stores = self
            .s3
            .lock()
            .map_err(|_| Error::Internal("store registry poisoned".into()))?;
        if let Some((existing, store)) = stores.get(bucket) {
            if *existing == settings {
                return Ok(store.clone());
            }
            return Err(Error::Config(format!(
                "bucket `{bucket}` is given two different sets of S3 settings; \
                 tables in one bucket must share them"
            )));
        }
        let store: Arc<dyn ObjectStore> = Arc::new(CountingStore::new(
            s3_store(bucket, &settings)?,
            self.counters.clone(),
        ));
        let url = url::Url::parse(&format!("s3://{bucket}"))
            .map_err(|e| Error::Usage(format!("bucket `{bucket}`: {e}")))?;
        self.datafusion.register_store(&url, store.clone());
        stores.insert(bucket.to_string(), (settings, store.clone()));
        Ok(store)
    }

    /// Where an `s3://bucket/key` output goes: the bucket's store (configured by
    /// `[storage.s3]`) and the key.
    pub(crate) fn object_target(&self, url: &str) -> Result<ObjectTarget> {
        let location = Location::parse(url).map_err(|e| e.context("-o"))?;
        if location.pattern.is_some() || location.is_folder() {
            return Err(Error::Usage(format!(
                "-o {url}: name an object, not a folder or glob"
            )));
        }
        let store = self.store_for(&location, None)?;
        Ok(ObjectTarget {
            store,
            path: location.prefix()?,
        })
    }
}

/// DataFusion's store registry, making an S3 bucket's store on its first use from this
/// process's own `[storage.s3]` settings and environment. A cluster node meets buckets named by
/// the plans it runs, never by tables of its own, and must not take their settings from a job.
pub(crate) struct OnDemandStores {
    inner: DefaultObjectStoreRegistry,
    /// Set once, right after the runtime is built; lives as long as the runtime.
    stores: OnceLock<Arc<StoreRegistry>>,
}

impl OnDemandStores {
    pub(crate) fn new() -> OnDemandStores {
        OnDemandStores {
            inner: DefaultObjectStoreRegistry::new(),
            stores: OnceLock::new(),
        }
    }

    /// The registry that makes the stores (it registers them back here).
    pub(crate) fn attach(&self, stores: Arc<StoreRegistry>) {
        let _ = self.stores.set(stores);
    }
}

impl std::fmt::Debug for OnDemandStores {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OnDemandStores")
            .field("inner", &self.inner)
            .finish()
    }
}

impl ObjectStoreRegistry for OnDemandStores {
    fn register_store(
        &self,
        url: &url::Url,
        store: Arc<dyn ObjectStore>,
    ) -> Option<Arc<dyn ObjectStore>> {
        self.inner.register_store(url, store)
    }

    fn deregister_store(&self, url: &url::Url) -> datafusion::error::Result<Arc<dyn ObjectStore>> {
        self.inner.deregister_store(url)
    }

    fn get_store(&self, url: &url::Url) -> datafusion::error::Result<Arc<dyn ObjectStore>> {
        let missing = match self.inner.get_store(url) {
            Ok(store) => return Ok(store),
            Err(missing) => missing,
        };
        let (Some(stores), "s3", Some(bucket)) = (self.stores.get(), url.scheme(), url.host_str())
        else {
            return Err(missing);
        };
        let location = Location::parse(&format!("s3://{bucket}/"))
            .map_err(|e| DataFusionError::External(Box::new(e)))?;
        stores
            .store_for(&location, None)
            .map_err(|e| DataFusionError::External(Box::new(e)))
    }
}
