//! Where table files live: locations, globs, listing, and the object stores behind them.
//!
//! The model: a table location is a file, a folder or a glob (`*`, `**`, `?`, `[..]`, `{a,b}`),
//! on local disk or behind an `s3://`, `az://` (`azure://`, `abfs[s]://`), `gs://` or `https://`
//! URL. Every location is read through an object store, found by its scheme and authority in the
//! engine's [`StoreRegistry`] (`registry`): the local file system ([`local`], whose large reads
//! are memory maps), or one store per S3 bucket ([`s3`]), Azure container ([`azure`]), GCS bucket
//! ([`gcs`]) or web server ([`http`]), each wrapped in a [`CountingStore`] ([`counting`]) whose
//! counters the progress bar and `--stats` read. DataFusion's listing only globs local paths without a scheme, and only in the `glob`
//! crate's dialect, so this module splits a location into a listing prefix and a pattern itself,
//! lists the prefix once, and matches with `globset` (the matcher ripgrep uses), so every store
//! globs the same way. Local paths are resolved lexically ([`normalize_path`]) before anything
//! reads them.
//!
//! Must not print or log secrets; must not interpret table data (the catalog and engine do):
//! it only hands out bytes.

pub(crate) mod azure;
pub(crate) mod client;
pub(crate) mod counting;
pub(crate) mod gcs;
pub(crate) mod http;
pub(crate) mod local;
pub(crate) mod registry;
pub(crate) mod s3;

pub(crate) use counting::StoreCounters;
pub(crate) use registry::{ObjectTarget, StoreRegistry};

use crate::error::{Error, Result};
use datafusion::datasource::listing::ListingTableUrl;
use futures::stream::TryStreamExt;
use globset::{Glob, GlobMatcher};
use object_store::path::Path as StorePath;
use object_store::{ObjectMeta, ObjectStore, ObjectStoreExt};
use std::path::{Component, Path, PathBuf};
use std::sync::Arc;
use url::Url;

/// The kinds of store a location can be in, by URL scheme.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum StoreKind {
    Local,
    S3,
    /// Azure Blob Storage and ADLS Gen2: `az://`, `azure://`, `abfs://`, `abfss://`.
    Azure,
    Gcs,
    /// Files on a web server: `https://`, or `http://` where allowed.
    Http,
}

impl StoreKind {
    /// The store kind of a URL scheme; `None` for a scheme Spillway does not read.
    pub(crate) fn of_scheme(scheme: &str) -> Option<StoreKind> {
        Some(match scheme {
            "file" => StoreKind::Local,
            "s3" => StoreKind::S3,
            "az" | "azure" | "abfs" | "abfss" => StoreKind::Azure,
            "gs" => StoreKind::Gcs,
            "https" | "http" => StoreKind::Http,
            _ => return None,
        })
    }

    /// What the part after `scheme://` names, for messages.
    fn authority_name(self) -> &'static str {
        match self {
            StoreKind::Azure => "container",
            StoreKind::Http => "host",
            _ => "bucket",
        }
    }

    /// A bucket-like store: a key that is not an object may be a prefix of objects, and its
    /// "folders" exist only as prefixes.
    fn has_prefixes(self) -> bool {
        matches!(self, StoreKind::S3 | StoreKind::Azure | StoreKind::Gcs)
    }
}

/// Whether an output names an object store (`s3://`, `az://`, `gs://`, `https://`, ...) rather
/// than a local file.
pub(crate) fn is_object_url(output: &str) -> bool {
    output
        .split_once("://")
        .and_then(|(scheme, _)| StoreKind::of_scheme(scheme))
        .is_some_and(|kind| kind != StoreKind::Local)
}

/// Characters that make a path segment a glob pattern.
const GLOB_CHARS: &[char] = &['*', '?', '[', '{'];

/// A parsed table location: the store it is in, the listing prefix, and an optional pattern
/// that files below the prefix must match.
#[derive(Debug, Clone)]
pub(crate) struct Location {
    /// What the user wrote, for error messages.
    pub(crate) original: String,
    /// The folder (or single file) to list, as a URL.
    pub(crate) base: Url,
    /// The glob, relative to `base`, if the location has one.
    pub(crate) pattern: Option<String>,
}

/// A location resolved to the files it names.
#[derive(Debug, Clone)]
pub(crate) struct ResolvedLocation {
    pub(crate) location: Location,
    /// Matching files, sorted by path, hidden and `_`-prefixed files left out.
    pub(crate) files: Vec<ObjectMeta>,
}

impl Location {
    /// Parse what the user wrote. Local paths may be relative to the current directory.
    pub(crate) fn parse(text: &str) -> Result<Location> {
        if text.trim().is_empty() {
            return Err(Error::Usage("an empty table location".into()));
        }
        if let Some(rest) = text.strip_prefix("file://") {
            return Self::parse_local(text, rest);
        }
        if let Some((scheme, rest)) = text.split_once("://") {
            return match StoreKind::of_scheme(scheme) {
                Some(kind) => Self::parse_object(text, kind, scheme, rest),
                None => Err(Error::Usage(format!(
                    "location `{text}`: unknown scheme (local paths, file://, s3://, az://, \
                     abfss://, gs:// and https:// are supported)"
                ))),
            };
        }
        Self::parse_local(text, text)
    }

    /// `scheme://authority/key`: the authority is a bucket, a container (`container@account.dfs.
    /// core.windows.net` for ADLS Gen2) or a web server's `host:port`.
    fn parse_object(original: &str, kind: StoreKind, scheme: &str, rest: &str) -> Result<Location> {
        let (authority, key) = rest.split_once('/').unwrap_or((rest, ""));
        if authority.is_empty() {
            return Err(Error::Usage(format!(
                "location `{original}`: no {} name",
                kind.authority_name()
            )));
        }
        // A password in the URL would be printed with every message naming the location.
        if kind == StoreKind::Http && authority.contains('@') {
            return Err(Error::Usage(format!(
                "location `{}://{}/...`: credentials in the URL are not supported (they would be \
                 printed in messages)",
                scheme,
                authority.rsplit('@').next().unwrap_or_default()
            )));
        }
        let (prefix, pattern) = split_glob(key);
        let mut base = Url::parse(&format!("{scheme}://{authority}/"))
            .map_err(|e| Error::Usage(format!("location `{original}`: {e}")))?;
        let as_folder = pattern.is_some() || prefix.is_empty() || prefix.ends_with('/');
        let segments: Vec<&str> = prefix.split('/').filter(|s| !s.is_empty()).collect();
        {
            let mut path = base
                .path_segments_mut()
                .map_err(|()| Error::Usage(format!("location `{original}` is not a valid URL")))?;
            path.clear().extend(&segments);
            if as_folder && !segments.is_empty() {
                path.push("");
            }
        }
        Ok(Location {
            original: original.to_string(),
            base,
            pattern: pattern.map(str::to_string),
        })
    }

    /// The kind of store the location is in.
    pub(crate) fn kind(&self) -> StoreKind {
        StoreKind::of_scheme(self.base.scheme()).unwrap_or(StoreKind::Local)
    }

    /// `scheme://authority` of a location outside the local file system: one store serves
    /// each (`s3://bucket`, `az://container`, `abfss://container@account.dfs.core.windows.net`,
    /// `gs://bucket`, `https://host:port`).
    pub(crate) fn store_key(&self) -> Option<&str> {
        (self.kind() != StoreKind::Local).then(|| &self.base[..url::Position::BeforePath])
    }

    /// The same location seen as a folder (for a key that turned out to be a prefix).
    pub(crate) fn as_folder(&self) -> Location {
        let mut folder = self.clone();
        if !folder.base.path().ends_with('/') {
            let path = format!("{}/", folder.base.path());
            folder.base.set_path(&path);
        }
        folder
    }

    fn parse_local(original: &str, path: &str) -> Result<Location> {
        let (prefix, pattern) = split_glob(path);
        let prefix = if prefix.is_empty() { "." } else { prefix };
        let absolute = std::path::absolute(prefix)
            .map_err(|e| Error::Usage(format!("location `{original}`: {e}")))?;
        // object_store refuses a path with `..` in it; the user meant the file it leads to.
        let absolute = normalize_path(&absolute);
        let as_folder = pattern.is_some() || absolute.is_dir();
        let base = if as_folder {
            Url::from_directory_path(&absolute)
        } else {
            Url::from_file_path(&absolute)
        }
        .map_err(|()| Error::Usage(format!("location `{original}` is not a valid path")))?;
        Ok(Location {
            original: original.to_string(),
            base,
            pattern: pattern.map(str::to_string),
        })
    }

    /// The listing prefix in the store's own path syntax.
    pub(crate) fn prefix(&self) -> Result<StorePath> {
        StorePath::from_url_path(self.base.path())
            .map_err(|e| Error::Usage(format!("location `{}`: {e}", self.original)))
    }

    /// Whether the location names a folder (or a glob) rather than one file.
    pub(crate) fn is_folder(&self) -> bool {
        self.base.path().ends_with('/')
    }

    /// The URL of one file of this location's store, for DataFusion's listing table.
    pub(crate) fn file_url(&self, path: &StorePath) -> Result<ListingTableUrl> {
        let mut url = self.base.clone();
        url.set_path("");
        url.path_segments_mut()
            .map_err(|()| Error::Internal(format!("`{}` cannot hold a path", self.base)))?
            .extend(path.parts().map(|part| part.as_ref().to_string()));
        ListingTableUrl::try_new(url, None).map_err(Error::from)
    }

    /// The location's folder as a DataFusion listing URL (for hive-partitioned tables, whose
    /// partition values DataFusion reads from the paths below it).
    pub(crate) fn folder_url(&self) -> Result<ListingTableUrl> {
        ListingTableUrl::try_new(self.base.clone(), None).map_err(Error::from)
    }
}

/// Split a path at the first segment holding a glob character: `("data/", "claims_*.csv")`.
pub(crate) fn split_glob(path: &str) -> (&str, Option<&str>) {
    let mut offset = 0;
    for segment in path.split_inclusive('/') {
        if segment.contains(GLOB_CHARS) {
            return (&path[..offset], Some(&path[offset..]));
        }
        offset += segment.len();
    }
    (path, None)
}

/// Build the matcher for a glob: `*` and `?` stay within one path segment, `**` crosses them.
fn glob_matcher(location: &Location, pattern: &str) -> Result<GlobMatcher> {
    Glob::new(pattern)
        .and_then(|_| {
            globset::GlobBuilder::new(pattern)
                .literal_separator(true)
                .backslash_escape(true)
                .build()
        })
        .map(|glob| glob.compile_matcher())
        .map_err(|e| Error::Usage(format!("location `{}`: bad glob: {e}", location.original)))
}

/// Hidden files (`.name`) and markers (`_SUCCESS`) are never table data: temporary outputs and
/// manifests live beside the data.
fn is_hidden(relative: &str) -> bool {
    relative
        .split('/')
        .any(|segment| segment.starts_with('.') || segment.starts_with('_'))
}

/// List the files a location names. A single file is returned as is; a folder yields every
/// file below it (recursively); a glob yields the files below its prefix that match it.
/// An empty result is an error that names the location.
pub(crate) async fn resolve(
    store: &Arc<dyn ObjectStore>,
    location: &Location,
) -> Result<ResolvedLocation> {
    let mut location = location.clone();
    let prefix = location.prefix()?;
    let prefixes = location.kind().has_prefixes();
    let files = if location.is_folder() {
        list_matching(store, &location, &prefix).await?
    } else {
        match store.head(&prefix).await {
            Ok(meta) => vec![meta],
            // An object store has no folders: a key that is not an object may be a prefix.
            Err(object_store::Error::NotFound { .. }) if prefixes => {
                location = location.as_folder();
                list_matching(store, &location, &prefix).await?
            }
            Err(object_store::Error::NotFound { .. }) => Vec::new(),
            // Some S3-compatible servers answer HEAD on a "folder" with an error, not 404.
            Err(e) if prefixes => {
                let folder = location.as_folder();
                let files = list_matching(store, &folder, &prefix).await?;
                if files.is_empty() {
                    return Err(store_error(&location.original, e));
                }
                location = folder;
                files
            }
            Err(e) => return Err(store_error(&location.original, e)),
        }
    };
    if files.is_empty() {
        let what = if location.pattern.is_some() {
            "no file matches the glob"
        } else if location.is_folder() {
            "the folder holds no files"
        } else {
            "no such file"
        };
        return Err(Error::Input(format!("{what} `{}`", location.original)));
    }
    Ok(ResolvedLocation { location, files })
}

async fn list_matching(
    store: &Arc<dyn ObjectStore>,
    location: &Location,
    prefix: &StorePath,
) -> Result<Vec<ObjectMeta>> {
    let matcher = match &location.pattern {
        Some(pattern) => Some(glob_matcher(location, pattern)?),
        None => None,
    };
    let prefix_text = prefix.as_ref();
    let listed: Vec<ObjectMeta> = store
        .list(Some(prefix))
        .map_err(|e| match location.kind() {
            // A web server lists a folder only if it speaks WebDAV; say so, or the user sees
            // only "405 Method Not Allowed".
            StoreKind::Http => store_error(&location.original, e).context(
                "listing an https:// folder or glob needs a WebDAV server (PROPFIND); \
                 name a single file otherwise",
            ),
            _ => store_error(&location.original, e),
        })
        .try_collect()
        .await?;
    let mut files: Vec<ObjectMeta> = listed
        .into_iter()
        .filter(|meta| {
            let relative = relative_to(meta.location.as_ref(), prefix_text);
            !is_hidden(relative) && matcher.as_ref().is_none_or(|glob| glob.is_match(relative))
        })
        .collect();
    files.sort_by(|a, b| a.location.cmp(&b.location));
    Ok(files)
}

/// The text of an error followed by every cause its own text leaves out. An HTTP client's error
/// prints as `builder error` or `error sending request`, and only its sources say why (`URL
/// scheme is not allowed`, `Connection refused`): without them a user cannot act on it.
fn with_causes(error: &(dyn std::error::Error + 'static)) -> String {
    let mut message = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        let text = cause.to_string();
        if !message.contains(&text) {
            message = format!("{message}: {text}");
        }
        source = cause.source();
    }
    message
}

/// `path` with `.` and `..` resolved lexically: `a/./b/../c` is `a/c`, `/..` is `/`, and a
/// relative path keeps the `..` that climb above where it starts (`../x` stays `../x`).
///
/// Lexically, not by canonicalising: an output, or a folder a report run creates, does not exist
/// yet, and a symlinked folder is meant as the user typed it, the way the shell's `cd` treats
/// `..`. The price is the shell's too: `link/..` is the folder holding `link`, not the parent of
/// the folder `link` points to.
pub(crate) fn normalize_path(path: &Path) -> PathBuf {
    let mut resolved = PathBuf::new();
    for component in path.components() {
        match component {
            Component::CurDir => {}
            Component::ParentDir => match resolved.components().next_back() {
                Some(Component::Normal(_)) => {
                    resolved.pop();
                }
                Some(Component::RootDir | Component::Prefix(_)) => {}
                Some(Component::ParentDir | Component::CurDir) | None => resolved.push(".."),
            },
            other => resolved.push(other.as_os_str()),
        }
    }
    if resolved.as_os_str().is_empty() {
        resolved.push(".");
    }
    resolved
}

/// A local output path (`-o`, a report's rendered output) with `.` and `..` resolved as
/// [`normalize_path`] does; an object URL as given.
pub(crate) fn normalize_output(output: String) -> String {
    if output.contains("://") {
        return output;
    }
    normalize_path(Path::new(&output))
        .to_string_lossy()
        .into_owned()
}

fn relative_to<'a>(path: &'a str, prefix: &str) -> &'a str {
    let stripped = path.strip_prefix(prefix).unwrap_or(path);
    stripped.strip_prefix('/').unwrap_or(stripped)
}

/// Describe an object store error with the location it concerns and its causes, classified.
pub(crate) fn store_error(location: &str, error: object_store::Error) -> Error {
    let message = crate::error::one_line(&with_causes(&error));
    match error {
        object_store::Error::NotFound { .. } => Error::Input(format!("`{location}`: {message}")),
        object_store::Error::Generic { store, .. } if store == "LocalFileSystem" => {
            Error::Input(format!("`{location}`: {message}"))
        }
        _ => Error::Storage(format!("`{location}`: {message}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use local::MappedLocalStore;

    #[test]
    fn globs_split_at_the_first_segment_with_a_glob_character() {
        assert_eq!(
            split_glob("data/claims_*.csv"),
            ("data/", Some("claims_*.csv"))
        );
        assert_eq!(split_glob("/a/b/**/x?.csv"), ("/a/b/", Some("**/x?.csv")));
        assert_eq!(split_glob("/a/{x,y}/f.csv"), ("/a/", Some("{x,y}/f.csv")));
        assert_eq!(split_glob("*.parquet"), ("", Some("*.parquet")));
        assert_eq!(split_glob("/a/b.csv"), ("/a/b.csv", None));
    }

    #[test]
    fn s3_locations_split_bucket_prefix_and_glob() {
        let location = Location::parse("s3://claims/2024/part-*.csv").unwrap();
        assert_eq!(location.store_key(), Some("s3://claims"));
        assert_eq!(location.prefix().unwrap().as_ref(), "2024");
        assert_eq!(location.pattern.as_deref(), Some("part-*.csv"));
        assert!(location.is_folder());
        let file = Location::parse("s3://claims/dir with space/naïve.csv").unwrap();
        assert_eq!(file.prefix().unwrap().as_ref(), "dir with space/naïve.csv");
        assert!(!file.is_folder());
        assert!(Location::parse("s3:///x.csv").is_err());
    }

    #[test]
    fn hidden_and_marker_files_are_not_data() {
        assert!(is_hidden(".claims.csv.tmp"));
        assert!(is_hidden("year=2024/_SUCCESS"));
        assert!(!is_hidden("year=2024/part-0.parquet"));
    }

    #[tokio::test]
    async fn a_glob_lists_only_matching_files_at_the_right_depth() {
        let dir = tempfile::tempdir().unwrap();
        for name in [
            "a.csv",
            "b.csv",
            "c.json",
            "sub/d.csv",
            "sub/deep/e.csv",
            ".hidden.csv",
        ] {
            let path = dir.path().join(name);
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::fs::write(path, "x\n").unwrap();
        }
        let store: Arc<dyn ObjectStore> = Arc::new(MappedLocalStore::new());
        let names = |pattern: &str| {
            let location = Location::parse(&format!("{}/{pattern}", dir.path().display())).unwrap();
            let store = store.clone();
            async move {
                let resolved = resolve(&store, &location).await?;
                Ok::<_, Error>(
                    resolved
                        .files
                        .iter()
                        .map(|m| m.location.filename().unwrap().to_string())
                        .collect::<Vec<_>>(),
                )
            }
        };
        assert_eq!(names("*.csv").await.unwrap(), ["a.csv", "b.csv"]);
        assert_eq!(
            names("**/*.csv").await.unwrap(),
            ["a.csv", "b.csv", "d.csv", "e.csv"]
        );
        assert_eq!(names("{a,c}.*").await.unwrap(), ["a.csv", "c.json"]);
        assert_eq!(names("sub/?.csv").await.unwrap(), ["d.csv"]);
        let error = names("*.parquet").await.unwrap_err();
        assert!(error.to_string().contains("*.parquet"), "{error}");
        assert_eq!(error.exit_code(), crate::error::exit_code::INPUT);
    }

    #[test]
    fn dot_and_dot_dot_resolve_lexically_and_relative_paths_stay_relative() {
        let cases = [
            ("/a/b/../c.csv", "/a/c.csv"),
            ("/a/./b/./c.csv", "/a/b/c.csv"),
            ("/../x", "/x"),
            ("/a/b/../../..", "/"),
            ("../data/h2o.csv", "../data/h2o.csv"),
            ("./../data/./h2o.csv", "../data/h2o.csv"),
            ("missing/../x.csv", "x.csv"),
            ("a/../../x", "../x"),
            ("../../x", "../../x"),
            ("./", "."),
            ("a/..", "."),
            ("report.csv", "report.csv"),
        ];
        for (path, expected) in cases {
            assert_eq!(
                normalize_path(Path::new(path)),
                Path::new(expected),
                "{path}"
            );
        }
    }

    #[test]
    fn a_local_location_with_dot_dot_lists_the_folder_it_leads_to() {
        let location = Location::parse("/srv/acceptance/../data/*.csv").unwrap();
        assert_eq!(location.base.as_str(), "file:///srv/data/");
        assert_eq!(location.prefix().unwrap().as_ref(), "srv/data");
        assert_eq!(location.pattern.as_deref(), Some("*.csv"));
    }

    /// An error whose text is terse and whose source says why, as reqwest's are.
    #[derive(Debug)]
    struct Terse(std::io::Error);

    impl std::fmt::Display for Terse {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("builder error")
        }
    }

    impl std::error::Error for Terse {
        fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
            Some(&self.0)
        }
    }

    #[test]
    fn a_store_error_names_the_causes_its_own_text_leaves_out() {
        let error = object_store::Error::Generic {
            store: "S3",
            source: Box::new(Terse(std::io::Error::other("URL scheme is not allowed"))),
        };
        let message = store_error("s3://data/t.csv", error).to_string();
        assert!(
            message.contains(
                "`s3://data/t.csv`: Generic S3 error: builder error: URL scheme is not allowed"
            ),
            "{message}"
        );
    }
}
