//! The PHI guard: who may see what of protected health information, on every path out.
//!
//! A [`Policy`] is compiled once from `[privacy]` in `spillway.toml`: which columns of which
//! tables identify a person (`subject`, `identifier`) or may help to (`quasi`), and per role
//! which columns it sees raw or masked, which rows it sees, and whether it may only read
//! aggregates (with small cells suppressed). The engine installs [`guard::PrivacyGuard`] for the
//! session's role as an analyzer rule, so the policy is applied to the logical plan of every
//! statement, whatever its shape and whichever entry point sent it (`query`, reports, the
//! scheduler, `serve`). `functions` holds the de-identification functions (`pseudonym`,
//! `generalize_date`, `zip3`, `age_band`), `audit` the hash-chained audit log. Must not print,
//! log or plan with a key's bytes, and must not be bypassable by a query shape or the cache.

pub(crate) mod audit;
pub(crate) mod functions;
pub(crate) mod guard;
pub(crate) mod people;

use crate::config::{PrivacySection, RoleSection};
use crate::error::{Error, Result};
use datafusion::arrow::datatypes::DataType;
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// CMS's cell-size rule: no published cell may stand for fewer than 11 people.
pub(crate) const DEFAULT_MIN_CELL_SIZE: u64 = 11;

/// The variable `--encrypt` reads its key from when the config names none.
pub(crate) const DEFAULT_ENCRYPTION_KEY_ENV: &str = "SPILLWAY_ENCRYPTION_KEY";

/// What a column says about a person.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ColumnClass {
    /// Names the person the row is about (member_id): small cells count these.
    Subject,
    /// Names a person or party (NPI, claim number).
    Identifier,
    /// Narrows down who a person is (dates, ZIP, state).
    Quasi,
}

impl ColumnClass {
    fn parse(text: &str) -> Option<ColumnClass> {
        match text {
            "subject" => Some(ColumnClass::Subject),
            "identifier" => Some(ColumnClass::Identifier),
            "quasi" => Some(ColumnClass::Quasi),
            _ => None,
        }
    }
}

/// How a role sees a column it may not see raw. Every mask keeps the column's type, so a
/// masked table has the schema of the raw one and every query shape plans the same way.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Mask {
    /// A keyed HMAC-SHA-256 token: stable, so joins and distinct counts still work.
    Pseudonym,
    /// NULL.
    Redact,
    /// Dates to the first of their month or year; other types are redacted.
    Month,
    Year,
    /// ZIP codes to their first three digits (`000` where fewer than 20,000 people live).
    Zip3,
    /// The class's default: dates to the year (HIPAA safe harbor), anything else redacted.
    Generalize,
}

impl Mask {
    fn parse(text: &str) -> Option<Mask> {
        match text {
            "pseudonym" => Some(Mask::Pseudonym),
            "redact" => Some(Mask::Redact),
            "month" => Some(Mask::Month),
            "year" => Some(Mask::Year),
            "zip3" => Some(Mask::Zip3),
            "generalize" => Some(Mask::Generalize),
            _ => None,
        }
    }

    /// The mask as it applies to a column of `data_type`: `Generalize` and the date masks
    /// become what they mean for that type.
    pub(crate) fn for_type(self, data_type: &DataType) -> Mask {
        let is_date = matches!(
            data_type,
            DataType::Date32 | DataType::Date64 | DataType::Timestamp(..)
        );
        match self {
            Mask::Generalize if is_date => Mask::Year,
            Mask::Generalize | Mask::Month | Mask::Year if !is_date => Mask::Redact,
            Mask::Pseudonym if !pseudonym_type(data_type) => Mask::Redact,
            Mask::Zip3 if !is_string(data_type) => Mask::Redact,
            other => other,
        }
    }
}

fn is_string(data_type: &DataType) -> bool {
    matches!(
        data_type,
        DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View
    )
}

/// Types `pseudonym()` keeps: text, and integers (a keyed integer of the same width).
pub(crate) fn pseudonym_type(data_type: &DataType) -> bool {
    is_string(data_type) || data_type.is_integer()
}

/// What one role sees of one column.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ColumnView {
    Raw,
    Masked(Mask),
}

/// A role's rules for one table.
#[derive(Debug, Clone, Default)]
pub(crate) struct RoleTable {
    raw: BTreeSet<String>,
    masks: BTreeMap<String, Mask>,
    /// SQL text, checked for syntax when the policy is compiled; planned against the table.
    pub(crate) filter: Option<String>,
}

/// One `[privacy.roles.NAME]`.
#[derive(Debug, Clone)]
pub(crate) struct Role {
    pub(crate) name: String,
    pub(crate) unrestricted: bool,
    pub(crate) aggregate_only: bool,
    pub(crate) min_cell_size: u64,
    tables: BTreeMap<String, RoleTable>,
}

/// The compiled `[privacy]` section.
#[derive(Debug, Clone)]
pub(crate) struct Policy {
    classes: BTreeMap<String, BTreeMap<String, ColumnClass>>,
    roles: BTreeMap<String, Arc<Role>>,
    default_role: Option<String>,
    /// Tables registered under another name over a protected table's files (`--table`):
    /// guarded as that table.
    aliases: BTreeMap<String, String>,
    pub(crate) audit_log: Option<PathBuf>,
    key_source: KeySource,
    encryption_key_source: KeySource,
}

/// Where a key comes from. The key itself is read when it is needed and never kept in a
/// struct that derives `Debug`.
#[derive(Debug, Clone)]
enum KeySource {
    None,
    Env(String),
    File(PathBuf),
}

impl Policy {
    /// Compile and check `[privacy]`; `None` when it says nothing (no guard, no audit).
    pub(crate) fn from_config(section: &PrivacySection) -> Result<Option<Arc<Policy>>> {
        let configured = !section.columns.is_empty()
            || !section.roles.is_empty()
            || section.audit_log.is_some()
            || section.default_role.is_some()
            || section.key_env.is_some()
            || section.key_file.is_some();
        let encryption_key_source = key_source(
            "encryption_key",
            section.encryption_key_env.clone(),
            section.encryption_key_file.clone(),
        )?;
        let encryption_key_source = match encryption_key_source {
            KeySource::None => KeySource::Env(DEFAULT_ENCRYPTION_KEY_ENV.into()),
            other => other,
        };
        if !configured {
            // Nothing to guard or audit; maybe a key for `--encrypt`.
            let named =
                section.encryption_key_env.is_some() || section.encryption_key_file.is_some();
            return Ok(named.then(|| Arc::new(Policy::encryption_only(encryption_key_source))));
        }
        let default_min = section.min_cell_size.unwrap_or(DEFAULT_MIN_CELL_SIZE);
        if default_min == 0 {
            return Err(Error::Config(
                "[privacy] min_cell_size: must be at least 1".into(),
            ));
        }
        let mut classes = BTreeMap::new();
        for (table, columns) in &section.columns {
            let mut table_classes = BTreeMap::new();
            for (column, class) in columns {
                let parsed = ColumnClass::parse(class).ok_or_else(|| {
                    Error::Config(format!(
                        "[privacy.columns.{table}] {column} = \"{class}\": expected \"subject\", \"identifier\" or \"quasi\""
                    ))
                })?;
                table_classes.insert(column.to_ascii_lowercase(), parsed);
            }
            let subjects = table_classes
                .values()
                .filter(|c| **c == ColumnClass::Subject)
                .count();
            if subjects > 1 {
                return Err(Error::Config(format!(
                    "[privacy.columns.{table}]: {subjects} columns are \"subject\"; mark the one that names the person"
                )));
            }
            classes.insert(table.to_ascii_lowercase(), table_classes);
        }
        let mut roles = BTreeMap::new();
        for (name, role) in &section.roles {
            roles.insert(
                name.clone(),
                Arc::new(compile_role(name, role, default_min)?),
            );
        }
        if let Some(role) = &section.default_role {
            if !roles.contains_key(role) {
                return Err(Error::Config(format!(
                    "[privacy] default_role = \"{role}\": no [privacy.roles.{role}]"
                )));
            }
        } else if !classes.is_empty() {
            return Err(Error::Config(
                "[privacy] default_role: protected columns are declared, so name the role that `query` and `report` run under".into(),
            ));
        }
        let key_source = key_source("key", section.key_env.clone(), section.key_file.clone())?;
        let policy = Policy {
            classes,
            roles,
            default_role: section.default_role.clone(),
            aliases: BTreeMap::new(),
            audit_log: section.audit_log.clone(),
            key_source,
            encryption_key_source,
        };
        policy.check_pseudonym_key()?;
        Ok(Some(Arc::new(policy)))
    }

    fn encryption_only(encryption_key_source: KeySource) -> Policy {
        Policy {
            classes: BTreeMap::new(),
            roles: BTreeMap::new(),
            default_role: None,
            aliases: BTreeMap::new(),
            audit_log: None,
            key_source: KeySource::None,
            encryption_key_source,
        }
    }

    /// A role that masks with `pseudonym` needs the key: say so at start, not mid-query.
    fn check_pseudonym_key(&self) -> Result<()> {
        let masking = self.roles.values().find(|role| {
            role.tables
                .values()
                .any(|table| table.masks.values().any(|m| *m == Mask::Pseudonym))
        });
        // The key itself is read when a session is made: `audit verify` needs no key.
        match masking {
            Some(role) if matches!(self.key_source, KeySource::None) => Err(Error::Config(format!(
                "[privacy.roles.{}] masks with pseudonym, but no key is configured: set [privacy] key_env (a variable holding the key) or key_file",
                role.name
            ))),
            _ => Ok(()),
        }
    }

    /// The role a statement runs under: `asked` (a `--role` flag or a server user's role),
    /// else the default role. Errors name the unknown role.
    pub(crate) fn role(&self, asked: Option<&str>) -> Result<Option<Arc<Role>>> {
        let Some(name) = asked.or(self.default_role.as_deref()) else {
            return Ok(None);
        };
        self.roles.get(name).cloned().map(Some).ok_or_else(|| {
            let known: Vec<&str> = self.roles.keys().map(String::as_str).collect();
            Error::Usage(format!(
                "role `{name}`: no [privacy.roles.{name}] in spillway.toml (roles: {})",
                if known.is_empty() {
                    "none".to_string()
                } else {
                    known.join(", ")
                }
            ))
        })
    }

    /// Guard `alias` (a table registered over the files of protected table `table`) as `table`.
    pub(crate) fn with_aliases(&self, aliases: BTreeMap<String, String>) -> Policy {
        Policy {
            aliases,
            ..self.clone()
        }
    }

    /// The name a table is guarded under (itself, or the protected table it is an alias of).
    pub(crate) fn canonical<'a>(&'a self, table: &'a str) -> &'a str {
        self.aliases.get(table).map(String::as_str).unwrap_or(table)
    }

    /// The table's protected columns and their classes, if it has any.
    pub(crate) fn classes(&self, table: &str) -> Option<&BTreeMap<String, ColumnClass>> {
        self.classes.get(self.canonical(table))
    }

    /// The column small cells are counted by: the `subject`, else the first `identifier`.
    pub(crate) fn subject_column(&self, table: &str) -> Option<&str> {
        let classes = self.classes(table)?;
        classes
            .iter()
            .find(|(_, c)| **c == ColumnClass::Subject)
            .or_else(|| classes.iter().find(|(_, c)| **c == ColumnClass::Identifier))
            .map(|(name, _)| name.as_str())
    }

    /// What `role` sees of `table.column`.
    pub(crate) fn view(&self, role: &Role, table: &str, column: &str) -> ColumnView {
        if role.unrestricted {
            return ColumnView::Raw;
        }
        let table = self.canonical(table);
        let column = column.to_ascii_lowercase();
        if let Some(rules) = role.tables.get(table) {
            if rules.raw.contains(&column) || rules.raw.contains("*") {
                return ColumnView::Raw;
            }
            if let Some(mask) = rules.masks.get(&column) {
                return ColumnView::Masked(*mask);
            }
        }
        match self.classes(table).and_then(|c| c.get(&column)) {
            Some(ColumnClass::Subject | ColumnClass::Identifier) => {
                ColumnView::Masked(Mask::Redact)
            }
            Some(ColumnClass::Quasi) => ColumnView::Masked(Mask::Generalize),
            None => ColumnView::Raw,
        }
    }

    /// The role's row filter on `table`, as SQL text.
    pub(crate) fn row_filter<'a>(&'a self, role: &'a Role, table: &str) -> Option<&'a str> {
        if role.unrestricted {
            return None;
        }
        role.tables
            .get(self.canonical(table))
            .and_then(|t| t.filter.as_deref())
    }

    /// Whether `role` has any rule for `table` (a protected table, or one its role section names).
    pub(crate) fn guards(&self, role: &Role, table: &str) -> bool {
        !role.unrestricted
            && (self.classes(table).is_some() || role.tables.contains_key(self.canonical(table)))
    }

    /// The key of `pseudonym()`, if one is configured (read from its variable or file now).
    pub(crate) fn pseudonym_key(&self) -> Result<Option<functions::PseudonymKey>> {
        read_key(&self.key_source, "[privacy] key")
            .map(|key| key.map(|bytes| functions::PseudonymKey::new(&bytes)))
    }

    /// The AES key of `--encrypt` (16, 24 or 32 bytes, written as base64 or hex).
    pub(crate) fn encryption_key(&self) -> Result<Vec<u8>> {
        encryption_key(&self.encryption_key_source)
    }
}

/// The key of an encrypted output (`--encrypt`, a report's `encrypt = true`), from the policy
/// or, without one, `$SPILLWAY_ENCRYPTION_KEY`. Only Parquet has a standard for encryption at
/// rest; `what` names the flag or header key in errors.
pub(crate) fn output_key(
    what: &str,
    format: crate::output::OutputFormat,
    policy: Option<&Policy>,
) -> Result<crate::output::EncryptionKey> {
    if format != crate::output::OutputFormat::Parquet {
        return Err(Error::Usage(format!(
            "{what}: only Parquet outputs can be encrypted (Parquet modular encryption); write -o FILE.parquet or --format parquet"
        )));
    }
    let key = match policy {
        Some(policy) => policy.encryption_key()?,
        None => default_encryption_key()?,
    };
    Ok(crate::output::EncryptionKey(key))
}

/// The AES key of `--encrypt` when there is no `[privacy]` section at all.
pub(crate) fn default_encryption_key() -> Result<Vec<u8>> {
    encryption_key(&KeySource::Env(DEFAULT_ENCRYPTION_KEY_ENV.into()))
}

fn encryption_key(source: &KeySource) -> Result<Vec<u8>> {
    let missing = || {
        Error::Usage(format!(
            "--encrypt: no key ({}): set {DEFAULT_ENCRYPTION_KEY_ENV} (or [privacy] encryption_key_env / encryption_key_file) to a 16-, 24- or 32-byte AES key in base64 or hex",
            describe_source(source)
        ))
    };
    let text = match read_key(source, "the encryption key") {
        Ok(Some(text)) => text,
        Ok(None) => return Err(missing()),
        Err(Error::Config(message)) if message.contains("is not set") => return Err(missing()),
        Err(other) => return Err(other),
    };
    let text = String::from_utf8_lossy(&text).trim().to_string();
    let decoded = decode_hex(&text).or_else(|| {
        use base64::Engine as _;
        base64::engine::general_purpose::STANDARD
            .decode(text.as_bytes())
            .ok()
    });
    match decoded {
        Some(key) if matches!(key.len(), 16 | 24 | 32) => Ok(key),
        Some(key) => Err(Error::Usage(format!(
            "the encryption key ({}) decodes to {} bytes; AES needs 16, 24 or 32",
            describe_source(source),
            key.len()
        ))),
        None => Err(Error::Usage(format!(
            "the encryption key ({}) is neither base64 nor hex",
            describe_source(source)
        ))),
    }
}

fn decode_hex(text: &str) -> Option<Vec<u8>> {
    if text.len() % 2 != 0 || !text.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    (0..text.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&text[i..i + 2], 16).ok())
        .collect()
}

fn describe_source(source: &KeySource) -> String {
    match source {
        KeySource::None => "none".into(),
        KeySource::Env(name) => format!("variable {name}"),
        KeySource::File(path) => format!("file {}", path.display()),
    }
}

fn key_source(what: &str, env: Option<String>, file: Option<PathBuf>) -> Result<KeySource> {
    match (env, file) {
        (Some(_), Some(_)) => Err(Error::Config(format!(
            "[privacy] {what}_env and {what}_file: set one of them"
        ))),
        (Some(env), None) => Ok(KeySource::Env(env)),
        (None, Some(file)) => Ok(KeySource::File(file)),
        (None, None) => Ok(KeySource::None),
    }
}

/// A key's bytes from its variable or file. Errors name the variable or file, never the key.
fn read_key(source: &KeySource, what: &str) -> Result<Option<Vec<u8>>> {
    let bytes = match source {
        KeySource::None => return Ok(None),
        KeySource::Env(name) => match std::env::var_os(name) {
            Some(value) => value.into_encoded_bytes(),
            None => {
                return Err(Error::Config(format!(
                    "{what}: the variable {name} is not set"
                )))
            }
        },
        KeySource::File(path) => read_key_file(path, what)?,
    };
    let trimmed = String::from_utf8_lossy(&bytes).trim().as_bytes().to_vec();
    if trimmed.is_empty() {
        return Err(Error::Config(format!(
            "{what} ({}) is empty",
            describe_source(source)
        )));
    }
    Ok(Some(trimmed))
}

fn read_key_file(path: &Path, what: &str) -> Result<Vec<u8>> {
    std::fs::read(path)
        .map_err(|e| Error::Config(format!("{what}: cannot read {}: {e}", path.display())))
}

fn compile_role(name: &str, section: &RoleSection, default_min: u64) -> Result<Role> {
    let min_cell_size = section.min_cell_size.unwrap_or(default_min);
    if min_cell_size == 0 {
        return Err(Error::Config(format!(
            "[privacy.roles.{name}] min_cell_size: must be at least 1"
        )));
    }
    let mut tables = BTreeMap::new();
    for (table, rules) in &section.tables {
        let mut masks = BTreeMap::new();
        for (column, mask) in &rules.mask {
            let parsed = Mask::parse(mask).ok_or_else(|| {
                Error::Config(format!(
                    "[privacy.roles.{name}.tables.{table}] mask {column} = \"{mask}\": expected pseudonym, redact, generalize, month, year or zip3"
                ))
            })?;
            masks.insert(column.to_ascii_lowercase(), parsed);
        }
        if let Some(filter) = &rules.filter {
            check_filter_syntax(filter).map_err(|e| {
                Error::Config(format!("[privacy.roles.{name}.tables.{table}] filter: {e}"))
            })?;
        }
        tables.insert(
            table.to_ascii_lowercase(),
            RoleTable {
                raw: rules.raw.iter().map(|c| c.to_ascii_lowercase()).collect(),
                masks,
                filter: rules.filter.clone(),
            },
        );
    }
    Ok(Role {
        name: name.to_string(),
        unrestricted: section.unrestricted,
        aggregate_only: section.aggregate_only,
        min_cell_size,
        tables,
    })
}

/// A row filter must be one SQL expression.
pub(crate) fn check_filter_syntax(filter: &str) -> std::result::Result<(), String> {
    parse_filter(filter).map(|_| ())
}

/// Parse a row filter into its SQL expression.
pub(crate) fn parse_filter(
    filter: &str,
) -> std::result::Result<datafusion::sql::sqlparser::ast::Expr, String> {
    use datafusion::sql::sqlparser::dialect::GenericDialect;
    use datafusion::sql::sqlparser::parser::Parser;
    Parser::new(&GenericDialect {})
        .try_with_sql(filter)
        .and_then(|mut parser| parser.parse_expr())
        .map_err(|e| e.to_string())
}

/// Whether the person running this process owns `config` (and so may pick a role with
/// `--role`): the file's owner can edit the policy anyway.
pub(crate) fn owns(config: &Path) -> bool {
    use std::os::unix::fs::MetadataExt;
    match std::fs::metadata(config) {
        // SAFETY: geteuid has no preconditions and cannot fail.
        Ok(meta) => meta.uid() == unsafe { libc::geteuid() },
        Err(_) => false,
    }
}
