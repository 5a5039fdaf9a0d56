//! The object stores of one engine: the local file system, and one store per S3 bucket, Azure
//! container, GCS bucket or web server.
//!
//! DataFusion finds a table's store by the URL's scheme and authority, so every store a table or
//! an output uses is made here once, counted ([`CountingStore`]), and registered with the
//! session's object-store registry; tables and outputs then share it. Two tables may not
//! configure one bucket differently, since DataFusion keeps one store per bucket. Must not know
//! about tables or output formats: callers hand it locations and get stores back.

use super::azure::azure_store;
use super::counting::{CountingStore, StoreCounters};
use super::gcs::gcs_store;
use super::http::http_store;
use super::local::MappedLocalStore;
use super::s3::s3_store;
use super::{Location, StoreKind};
use crate::config::{
    AzureSettings, GcsSettings, HttpSettings, S3Settings, StorageSection, TableStorage,
};
use crate::error::{Error, Result};
use datafusion::error::DataFusionError;
use datafusion::execution::object_store::{DefaultObjectStoreRegistry, ObjectStoreRegistry};
use object_store::path::Path as StorePath;
use object_store::ObjectStore;
use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};

/// Where an object output (`s3://bucket/key`, `az://container/key`, `gs://...`, `https://...`)
/// goes: the store, the key, and the kind of store (which decides how the output is uploaded).
pub(crate) struct ObjectTarget {
    pub(crate) store: Arc<dyn ObjectStore>,
    pub(crate) path: StorePath,
    pub(crate) kind: StoreKind,
}

/// The settings one store was built from.
#[derive(Clone, PartialEq)]
enum StoreSettings {
    S3(S3Settings),
    Azure(AzureSettings),
    Gcs(GcsSettings),
    Http(HttpSettings),
}

/// `own` over `defaults`, or the defaults alone.
fn merged<T: Clone>(own: Option<&T>, defaults: &T, over: fn(&T, &T) -> T) -> T {
    own.map_or_else(|| defaults.clone(), |own| over(own, defaults))
}

/// The stores of one engine, all counted into one [`StoreCounters`].
pub(crate) struct StoreRegistry {
    /// DataFusion's registry, where scans look stores up by URL.
    datafusion: Arc<dyn ObjectStoreRegistry>,
    counters: Arc<StoreCounters>,
    local: Arc<dyn ObjectStore>,
    /// `[storage.*]`: the settings of every store a table does not configure itself.
    defaults: StorageSection,
    /// One store per `scheme://authority`, with the settings it was built from.
    stores: Mutex<HashMap<String, BuiltStore>>,
}

/// A store, with the settings it was built from (to refuse a second, different set).
type BuiltStore = (StoreSettings, Arc<dyn ObjectStore>);

impl StoreRegistry {
    /// The registry of a session whose object stores live in `datafusion`: the local store is
    /// registered at once, the others on first use.
    pub(crate) fn new(
        datafusion: Arc<dyn ObjectStoreRegistry>,
        defaults: StorageSection,
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
            defaults,
            stores: Mutex::new(HashMap::new()),
        })
    }

    /// Request and byte counters of every store.
    pub(crate) fn counters(&self) -> &Arc<StoreCounters> {
        &self.counters
    }

    /// The settings a location's store is built from: the table's over `[storage.*]`.
    fn settings_for(&self, kind: StoreKind, table: Option<&TableStorage>) -> StoreSettings {
        let defaults = &self.defaults;
        match kind {
            StoreKind::Azure => StoreSettings::Azure(merged(
                table.and_then(|t| t.azure.as_ref()),
                &defaults.azure,
                AzureSettings::over,
            )),
            StoreKind::Gcs => StoreSettings::Gcs(merged(
                table.and_then(|t| t.gcs.as_ref()),
                &defaults.gcs,
                GcsSettings::over,
            )),
            StoreKind::Http => StoreSettings::Http(merged(
                table.and_then(|t| t.http.as_ref()),
                &defaults.http,
                HttpSettings::over,
            )),
            StoreKind::S3 | StoreKind::Local => StoreSettings::S3(merged(
                table.and_then(|t| t.s3.as_ref()),
                &defaults.s3,
                S3Settings::over,
            )),
        }
    }

    /// The store a location lives in, made (and registered with DataFusion) on first use.
    /// `table` settings override `[storage.*]`; two tables may not configure one bucket
    /// differently, since DataFusion keeps one store per bucket.
    pub(crate) fn store_for(
        &self,
        location: &Location,
        table: Option<&TableStorage>,
    ) -> Result<Arc<dyn ObjectStore>> {
        let Some(key) = location.store_key() else {
            return Ok(self.local.clone());
        };
        let settings = self.settings_for(location.kind(), table);
        let mut stores = self
            .stores
            .lock()
            .map_err(|_| Error::Internal("store registry poisoned".into()))?;
        if let Some((existing, store)) = stores.get(key) {
            if *existing == settings {
                return Ok(store.clone());
            }
            return Err(Error::Config(format!(
                "`{key}` is given two different sets of store settings; tables in one bucket, \
                 container or server must share them"
            )));
        }
        let authority = location.base.host_str().unwrap_or_default();
        let store = match &settings {
            StoreSettings::S3(s3) => s3_store(authority, s3)?,
            StoreSettings::Azure(azure) => azure_store(key, azure)?,
            StoreSettings::Gcs(gcs) => gcs_store(authority, gcs)?,
            StoreSettings::Http(http) => http_store(key, http)?,
        };
        let store: Arc<dyn ObjectStore> =
            Arc::new(CountingStore::new(store, self.counters.clone()));
        let url = url::Url::parse(key).map_err(|e| Error::Usage(format!("`{key}`: {e}")))?;
        self.datafusion.register_store(&url, store.clone());
        stores.insert(key.to_string(), (settings, store.clone()));
        Ok(store)
    }

    /// Where an object output goes: its store (configured by `[storage.*]`) and key.
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
            kind: location.kind(),
        })
    }
}

/// DataFusion's store registry, making a bucket's (container's, server's) store on its first
/// use from this process's own `[storage.*]` settings and environment. A cluster node meets buckets named by
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
        self.inner.register_store(&registry_url(url), store)
    }

    fn deregister_store(&self, url: &url::Url) -> datafusion::error::Result<Arc<dyn ObjectStore>> {
        self.inner.deregister_store(&registry_url(url))
    }

    fn get_store(&self, url: &url::Url) -> datafusion::error::Result<Arc<dyn ObjectStore>> {
        let missing = match self.inner.get_store(&registry_url(url)) {
            Ok(store) => return Ok(store),
            Err(missing) => missing,
        };
        let Some(stores) = self.stores.get() else {
            return Err(missing);
        };
        let object = StoreKind::of_scheme(url.scheme()).is_some_and(|k| k != StoreKind::Local);
        if !object || !url.has_host() {
            return Err(missing);
        }
        let location = Location::parse(&format!("{}/", &url[..url::Position::BeforePath]))
            .map_err(|e| DataFusionError::External(Box::new(e)))?;
        stores
            .store_for(&location, None)
            .map_err(|e| DataFusionError::External(Box::new(e)))
    }
}

/// The URL a store is kept under. DataFusion keys stores by scheme, host and port only, so
/// `abfss://a@acct.dfs.core.windows.net` and `abfss://b@acct...` (two containers of one
/// account) would share one store: the container is moved into the host for the key.
fn registry_url(url: &url::Url) -> std::borrow::Cow<'_, url::Url> {
    if url.username().is_empty() {
        return std::borrow::Cow::Borrowed(url);
    }
    let host = &url[url::Position::BeforeHost..url::Position::AfterPort];
    match url::Url::parse(&format!("{}://{}.{host}/", url.scheme(), url.username())) {
        Ok(keyed) => std::borrow::Cow::Owned(keyed),
        Err(_) => std::borrow::Cow::Borrowed(url),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn two_containers_of_one_account_are_kept_apart() {
        let a = url::Url::parse("abfss://a@acct.dfs.core.windows.net/x/y.csv").unwrap();
        let b = url::Url::parse("abfss://b@acct.dfs.core.windows.net/x/y.csv").unwrap();
        assert_ne!(registry_url(&a).as_str(), registry_url(&b).as_str());
        let s3 = url::Url::parse("s3://bucket/k").unwrap();
        assert_eq!(registry_url(&s3).as_str(), "s3://bucket/k");
    }
}
