//! Report alerts: telling people that a scheduled report failed, succeeded, or is late, by a
//! webhook (an HTTP POST of JSON), an e-mail (SMTP upgraded with STARTTLS, through `lettre`) or
//! a command (the JSON on its standard input).
//!
//! Owns the `[alerts.NAME]` targets, the rules saying which report alerts whom (`on_failure`,
//! `on_success`, `late_after` in a report header over the same keys in `[reports]`), delivery
//! with retries and doubling waits, and what may be said about a delivery that failed.
//!
//! Must not: change a run's outcome (a delivery that fails is recorded in the history and
//! logged, never returned to the run), print a secret (webhook URLs, header values and SMTP
//! passwords come from the environment, and errors name the target and the host, never the URL's
//! path or query), or decide when reports run (`schedule`).

use crate::config::{AlertSection, ConfigFile};
use crate::error::{Error, Result};
use crate::units::parse_duration;
use chrono::{DateTime, Utc};
use serde::Serialize;
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

/// Which targets a report alerts, and when it counts as late. `None` fields fall back to
/// `[reports]`; an empty list means no alert.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct AlertRules {
    pub(crate) on_failure: Option<Vec<String>>,
    pub(crate) on_success: Option<Vec<String>>,
    pub(crate) late_after: Option<Duration>,
}

impl AlertRules {
    /// These rules, with what they leave unset taken from `defaults`.
    pub(crate) fn over(&self, defaults: &AlertRules) -> AlertRules {
        AlertRules {
            on_failure: self
                .on_failure
                .clone()
                .or_else(|| defaults.on_failure.clone()),
            on_success: self
                .on_success
                .clone()
                .or_else(|| defaults.on_success.clone()),
            late_after: self.late_after.or(defaults.late_after),
        }
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.on_failure.as_ref().is_none_or(Vec::is_empty)
            && self.on_success.as_ref().is_none_or(Vec::is_empty)
            && self.late_after.is_none()
    }
}

/// What an alert is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub(crate) enum Event {
    Succeeded,
    /// Failed with no retries left.
    Failed,
    /// Not succeeded `late_after` after its scheduled time (still running, retrying, skipped).
    Late,
}

impl Event {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Event::Succeeded => "succeeded",
            Event::Failed => "failed",
            Event::Late => "late",
        }
    }
}

/// The alert itself: the JSON a webhook or command receives, and the body of an e-mail.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct Alert {
    pub(crate) report: String,
    pub(crate) status: Event,
    pub(crate) scheduled_for: Option<DateTime<Utc>>,
    /// The last attempt (1 for the first try); 0 when none started (a late, skipped firing).
    pub(crate) attempt: u32,
    pub(crate) run_id: Option<i64>,
    pub(crate) error: Option<String>,
    pub(crate) output: Option<String>,
    pub(crate) rows: Option<u64>,
    pub(crate) bytes: Option<u64>,
    /// The machine the daemon runs on, so a team with several knows which one speaks.
    pub(crate) host: String,
}

impl Alert {
    fn subject(&self) -> String {
        let when = self
            .scheduled_for
            .map(|time| {
                format!(
                    " (scheduled {})",
                    time.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
                )
            })
            .unwrap_or_default();
        format!(
            "[spillway] report {} {}{when}",
            self.report,
            self.status.as_str()
        )
    }

    fn json(&self) -> String {
        // Serialising plain strings, numbers and times cannot fail.
        serde_json::to_string(self).unwrap_or_default()
    }

    fn text(&self) -> String {
        let mut lines = vec![
            format!("report: {}", self.report),
            format!("status: {}", self.status.as_str()),
        ];
        if let Some(time) = self.scheduled_for {
            lines.push(format!("scheduled for: {}", time.to_rfc3339()));
        }
        lines.push(format!("attempt: {}", self.attempt));
        let mut optional = |name: &str, value: Option<String>| {
            if let Some(value) = value {
                lines.push(format!("{name}: {value}"));
            }
        };
        optional("error", self.error.clone());
        optional("output", self.output.clone());
        optional("rows", self.rows.map(|n| n.to_string()));
        optional("bytes", self.bytes.map(|n| n.to_string()));
        optional("run id", self.run_id.map(|n| n.to_string()));
        optional("host", Some(self.host.clone()));
        let mut text = lines.join("\n");
        text.push('\n');
        text
    }
}

/// The name of this machine, for alerts.
pub(crate) fn host_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|name| name.trim().to_string())
        .unwrap_or_else(|_| "unknown".into())
}

/// How one delivery of one alert to one target went.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Delivery {
    pub(crate) tries: u32,
    /// Why the last try failed; `None` once delivered.
    pub(crate) error: Option<String>,
}

/// A try that failed, and whether another could succeed.
struct TryFailed {
    message: String,
    /// A webhook's 4xx answer (other than 408/429) will not change on a retry.
    permanent: bool,
}

impl TryFailed {
    fn retry(message: impl Into<String>) -> TryFailed {
        TryFailed {
            message: message.into(),
            permanent: false,
        }
    }
}

/// How a target is reached.
#[derive(Debug, Clone)]
enum Channel {
    Webhook {
        /// The URL, or the variable holding it (read when sending, never shown).
        url: UrlSource,
        /// Header name → the variable holding its value.
        headers: Vec<(String, String)>,
        ca: Option<Vec<u8>>,
    },
    Email {
        host: String,
        port: u16,
        starttls: bool,
        from: String,
        to: Vec<String>,
        credentials: Option<(String, String)>,
        ca: Option<Vec<u8>>,
    },
    Command(Vec<String>),
}

#[derive(Debug, Clone)]
enum UrlSource {
    Literal(String),
    Env(String),
}

#[derive(Debug, Clone)]
struct Target {
    channel: Channel,
    retries: u32,
    timeout: Duration,
}

/// The alert targets of a config, and the `[reports]` defaults.
#[derive(Debug, Clone, Default)]
pub(crate) struct Alerts {
    targets: BTreeMap<String, Target>,
    defaults: AlertRules,
}

const DEFAULT_RETRIES: u32 = 3;
const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30);
const MAX_WAIT: Duration = Duration::from_secs(60);

impl Alerts {
    /// Read and check `[alerts.*]` and the alert keys of `[reports]`. Every variable a target
    /// reads must be set now, so a daemon does not learn of a typo at 3 a.m.
    pub(crate) fn from_config(config: &ConfigFile) -> Result<Alerts> {
        let mut targets = BTreeMap::new();
        for (name, section) in &config.alerts {
            targets.insert(name.clone(), target(name, section)?);
        }
        let late_after = config
            .reports
            .late_after
            .as_deref()
            .map(|text| {
                parse_duration(text)
                    .map_err(|message| Error::Config(format!("[reports] late_after: {message}")))
            })
            .transpose()?;
        let alerts = Alerts {
            targets,
            defaults: AlertRules {
                on_failure: config.reports.on_failure.clone(),
                on_success: config.reports.on_success.clone(),
                late_after,
            },
        };
        alerts.check_names("[reports]", &alerts.defaults)?;
        Ok(alerts)
    }

    /// A report's rules over the defaults, every name checked (`whose` names the report).
    pub(crate) fn rules(&self, whose: &str, own: &AlertRules) -> Result<AlertRules> {
        let rules = own.over(&self.defaults);
        self.check_names(whose, &rules)?;
        Ok(rules)
    }

    fn check_names(&self, whose: &str, rules: &AlertRules) -> Result<()> {
        for (key, names) in [
            ("on_failure", &rules.on_failure),
            ("on_success", &rules.on_success),
        ] {
            for name in names.iter().flatten() {
                if !self.targets.contains_key(name) {
                    let known: Vec<&str> = self.targets.keys().map(String::as_str).collect();
                    return Err(Error::Config(format!(
                        "{whose}: {key} names `{name}`, but no [alerts.{name}] section defines it \
                         (defined: {})",
                        if known.is_empty() {
                            "none".to_string()
                        } else {
                            known.join(", ")
                        }
                    )));
                }
            }
        }
        Ok(())
    }

    /// Deliver `alert` to the target `name`, trying again after failures with doubling waits
    /// (1 s, 2 s, 4 s, ... at most a minute). Never fails: the outcome is returned to be recorded.
    pub(crate) async fn deliver(&self, name: &str, alert: &Alert) -> Delivery {
        let Some(target) = self.targets.get(name) else {
            return Delivery {
                tries: 0,
                error: Some(format!("no [alerts.{name}] section")),
            };
        };
        let mut tries = 0;
        loop {
            tries += 1;
            let attempt = tokio::time::timeout(target.timeout, send(&target.channel, alert)).await;
            let failed = match attempt {
                Ok(Ok(())) => return Delivery { tries, error: None },
                Ok(Err(failed)) => failed,
                Err(_) => TryFailed::retry(format!(
                    "no answer within {}",
                    crate::units::format_duration(target.timeout)
                )),
            };
            if failed.permanent || tries > target.retries {
                return Delivery {
                    tries,
                    error: Some(failed.message),
                };
            }
            let wait = Duration::from_secs(1u64 << (tries - 1).min(6)).min(MAX_WAIT);
            tracing::warn!(
                "alert `{name}` for report {}: try {tries} failed ({}); trying again in {}",
                alert.report,
                failed.message,
                crate::units::format_duration(wait)
            );
            tokio::time::sleep(wait).await;
        }
    }
}

/// Check one `[alerts.NAME]` section.
fn target(name: &str, section: &AlertSection) -> Result<Target> {
    let at = |message: String| Error::Config(format!("[alerts.{name}]: {message}"));
    let variable = |var: &str| -> Result<String> {
        std::env::var(var).map_err(|_| at(format!("the variable {var} is not set")))
    };
    let ca = section
        .ca_file
        .as_ref()
        .map(|path: &PathBuf| {
            std::fs::read(path).map_err(|e| at(format!("ca_file {}: {e}", path.display())))
        })
        .transpose()?;
    let ways = [
        section.webhook.is_some() || section.webhook_env.is_some(),
        section.smtp.is_some(),
        section.command.is_some(),
    ];
    if ways.iter().filter(|way| **way).count() != 1 {
        return Err(at(
            "give exactly one of webhook (or webhook_env), smtp or command".into(),
        ));
    }
    let channel = if let Some(smtp) = &section.smtp {
        let (host, port) = match smtp.rsplit_once(':') {
            Some((host, port)) => (
                host.to_string(),
                port.parse::<u16>()
                    .map_err(|_| at(format!("smtp `{smtp}`: the port is not a number")))?,
            ),
            None => (smtp.clone(), 587),
        };
        let starttls = match section.tls.as_deref().unwrap_or("starttls") {
            "starttls" => true,
            "none" => false,
            other => return Err(at(format!("tls `{other}`: use starttls or none"))),
        };
        let from = section
            .from
            .clone()
            .ok_or_else(|| at("an e-mail alert needs `from`".into()))?;
        if section.to.is_empty() {
            return Err(at("an e-mail alert needs `to = [...]`".into()));
        }
        for address in std::iter::once(&from).chain(&section.to) {
            address
                .parse::<lettre::message::Mailbox>()
                .map_err(|e| at(format!("address `{address}`: {e}")))?;
        }
        let credentials = match (&section.username_env, &section.password_env) {
            (Some(user), Some(password)) => Some((variable(user)?, variable(password)?)),
            (None, None) => None,
            _ => {
                return Err(at(
                    "give both username_env and password_env, or neither".into()
                ))
            }
        };
        Channel::Email {
            host,
            port,
            starttls,
            from,
            to: section.to.clone(),
            credentials,
            ca,
        }
    } else if let Some(command) = &section.command {
        if command.is_empty() {
            return Err(at(
                "command is empty: give the program, then its arguments".into()
            ));
        }
        Channel::Command(command.clone())
    } else {
        let url = match (&section.webhook, &section.webhook_env) {
            (Some(url), None) => UrlSource::Literal(url.clone()),
            (None, Some(var)) => {
                variable(var)?;
                UrlSource::Env(var.clone())
            }
            _ => return Err(at("give webhook or webhook_env, not both".into())),
        };
        let text = match &url {
            UrlSource::Literal(url) => url.clone(),
            UrlSource::Env(var) => variable(var)?,
        };
        let parsed = url::Url::parse(&text).map_err(|_| {
            at(match &url {
                UrlSource::Literal(_) => "webhook is not a URL".to_string(),
                UrlSource::Env(var) => format!("the variable {var} does not hold a URL"),
            })
        })?;
        if !matches!(parsed.scheme(), "http" | "https") {
            return Err(at("webhook must be an http:// or https:// URL".into()));
        }
        for var in section.headers_env.values() {
            variable(var)?;
        }
        Channel::Webhook {
            url,
            headers: section
                .headers_env
                .iter()
                .map(|(header, var)| (header.clone(), var.clone()))
                .collect(),
            ca,
        }
    };
    let timeout = section
        .timeout
        .as_deref()
        .map(|text| parse_duration(text).map_err(|message| at(format!("timeout: {message}"))))
        .transpose()?
        .unwrap_or(DEFAULT_TIMEOUT);
    Ok(Target {
        channel,
        retries: section.retries.unwrap_or(DEFAULT_RETRIES),
        timeout,
    })
}

/// One try.
async fn send(channel: &Channel, alert: &Alert) -> std::result::Result<(), TryFailed> {
    match channel {
        Channel::Webhook { url, headers, ca } => post(url, headers, ca.as_deref(), alert).await,
        Channel::Email {
            host,
            port,
            starttls,
            from,
            to,
            credentials,
            ca,
        } => {
            mail(
                host,
                *port,
                *starttls,
                from,
                to,
                credentials.as_ref(),
                ca.as_deref(),
                alert,
            )
            .await
        }
        Channel::Command(argv) => run_command(argv, alert).await,
    }
}

async fn post(
    url: &UrlSource,
    headers: &[(String, String)],
    ca: Option<&[u8]>,
    alert: &Alert,
) -> std::result::Result<(), TryFailed> {
    let text = match url {
        UrlSource::Literal(url) => url.clone(),
        UrlSource::Env(var) => std::env::var(var)
            .map_err(|_| TryFailed::retry(format!("the variable {var} is not set")))?,
    };
    let parsed = url::Url::parse(&text)
        .map_err(|_| TryFailed::retry("the webhook is not a URL".to_string()))?;
    // Only the host is ever shown: chat webhooks carry their token in the path.
    let host = parsed.host_str().unwrap_or("?").to_string();
    let mut client = reqwest::Client::builder();
    if let Some(pem) = ca {
        for certificate in reqwest::Certificate::from_pem_bundle(pem)
            .map_err(|e| TryFailed::retry(format!("ca_file: {}", e.without_url())))?
        {
            client = client.add_root_certificate(certificate);
        }
    }
    let client = client
        .build()
        .map_err(|e| TryFailed::retry(format!("webhook to {host}: {}", e.without_url())))?;
    let mut request = client
        .post(parsed)
        .header("content-type", "application/json")
        .header(
            "user-agent",
            concat!("spillway/", env!("CARGO_PKG_VERSION")),
        );
    for (header, var) in headers {
        let value = std::env::var(var)
            .map_err(|_| TryFailed::retry(format!("the variable {var} is not set")))?;
        request = request.header(header.as_str(), value);
    }
    let response = request
        .body(alert.json())
        .send()
        .await
        .map_err(|e| TryFailed::retry(format!("webhook to {host}: {}", error_chain(e))))?;
    let status = response.status();
    if status.is_success() {
        return Ok(());
    }
    Err(TryFailed {
        message: format!("webhook to {host}: HTTP {status}"),
        permanent: status.is_client_error()
            && status != reqwest::StatusCode::REQUEST_TIMEOUT
            && status != reqwest::StatusCode::TOO_MANY_REQUESTS,
    })
}

/// A reqwest error and its causes, without the URL.
fn error_chain(error: reqwest::Error) -> String {
    let error = error.without_url();
    let mut text = error.to_string();
    let mut source = std::error::Error::source(&error);
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

#[allow(clippy::too_many_arguments)]
async fn mail(
    host: &str,
    port: u16,
    starttls: bool,
    from: &str,
    to: &[String],
    credentials: Option<&(String, String)>,
    ca: Option<&[u8]>,
    alert: &Alert,
) -> std::result::Result<(), TryFailed> {
    use lettre::message::header::ContentType;
    use lettre::transport::smtp::authentication::Credentials;
    use lettre::transport::smtp::client::{Certificate, Tls, TlsParameters};
    use lettre::{AsyncSmtpTransport, AsyncTransport, Message, Tokio1Executor};

    let failed = |what: &str, e: &dyn std::fmt::Display| {
        TryFailed::retry(format!("e-mail through {host}:{port}: {what}{e}"))
    };
    let mut builder = AsyncSmtpTransport::<Tokio1Executor>::builder_dangerous(host).port(port);
    if starttls {
        let mut parameters = TlsParameters::builder(host.to_string());
        if let Some(pem) = ca {
            let certificate = Certificate::from_pem(pem).map_err(|e| failed("ca_file: ", &e))?;
            parameters = parameters.add_root_certificate(certificate);
        }
        let parameters = parameters.build_rustls().map_err(|e| failed("TLS: ", &e))?;
        builder = builder.tls(Tls::Required(parameters));
    } else {
        builder = builder.tls(Tls::None);
    }
    if let Some((user, password)) = credentials {
        builder = builder.credentials(Credentials::new(user.clone(), password.clone()));
    }
    let mut message = Message::builder().subject(alert.subject());
    // Addresses were checked when the config was read.
    message = message.from(from.parse().map_err(|e| failed("from: ", &e))?);
    for address in to {
        message = message.to(address.parse().map_err(|e| failed("to: ", &e))?);
    }
    let body = format!("{}\n{}\n", alert.text(), alert.json());
    let message = message
        .header(ContentType::TEXT_PLAIN)
        .body(body)
        .map_err(|e| failed("", &e))?;
    builder
        .build()
        .send(message)
        .await
        .map_err(|e| failed("", &e))?;
    Ok(())
}

async fn run_command(argv: &[String], alert: &Alert) -> std::result::Result<(), TryFailed> {
    use tokio::io::AsyncWriteExt;
    let program = &argv[0];
    let mut child = tokio::process::Command::new(program)
        .args(&argv[1..])
        .env("SPILLWAY_ALERT_REPORT", &alert.report)
        .env("SPILLWAY_ALERT_STATUS", alert.status.as_str())
        .env(
            "SPILLWAY_ALERT_SCHEDULED_FOR",
            alert
                .scheduled_for
                .map(|t| t.to_rfc3339())
                .unwrap_or_default(),
        )
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| TryFailed::retry(format!("command `{program}`: {e}")))?;
    if let Some(mut stdin) = child.stdin.take() {
        // A command that does not read its input is fine: ignore a closed pipe.
        let _ = stdin.write_all(alert.json().as_bytes()).await;
    }
    let output = child
        .wait_with_output()
        .await
        .map_err(|e| TryFailed::retry(format!("command `{program}`: {e}")))?;
    if output.status.success() {
        return Ok(());
    }
    let said = String::from_utf8_lossy(&output.stderr);
    let last = said
        .lines()
        .rev()
        .find(|l| !l.trim().is_empty())
        .unwrap_or("");
    Err(TryFailed::retry(format!(
        "command `{program}` {}{}",
        output
            .status
            .code()
            .map_or("was killed by a signal".to_string(), |c| format!(
                "exited with {c}"
            )),
        if last.is_empty() {
            String::new()
        } else {
            format!(": {}", last.chars().take(200).collect::<String>())
        }
    )))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(text: &str) -> ConfigFile {
        toml::from_str(text).unwrap()
    }

    #[test]
    fn a_report_header_overrides_the_reports_section_key_by_key() {
        let defaults = AlertRules {
            on_failure: Some(vec!["ops".into()]),
            on_success: Some(vec!["log".into()]),
            late_after: Some(Duration::from_secs(7200)),
        };
        let own = AlertRules {
            on_failure: Some(vec![]),
            on_success: None,
            late_after: Some(Duration::from_secs(60)),
        };
        assert_eq!(
            own.over(&defaults),
            AlertRules {
                on_failure: Some(vec![]),
                on_success: Some(vec!["log".into()]),
                late_after: Some(Duration::from_secs(60)),
            }
        );
    }

    #[test]
    fn an_unknown_target_or_an_unset_variable_is_a_config_error_naming_it() {
        let unknown = Alerts::from_config(&config(
            "[reports]\non_failure = [\"pager\"]\n[alerts.ops]\ncommand = [\"true\"]\n",
        ))
        .unwrap_err()
        .to_string();
        assert!(
            unknown.contains("`pager`") && unknown.contains("defined: ops"),
            "{unknown}"
        );
        let unset = Alerts::from_config(&config(
            "[alerts.ops]\nwebhook_env = \"SPILLWAY_TEST_SURELY_UNSET_HOOK\"\n",
        ))
        .unwrap_err()
        .to_string();
        assert!(
            unset.contains("[alerts.ops]") && unset.contains("SPILLWAY_TEST_SURELY_UNSET_HOOK"),
            "{unset}"
        );
        let both = Alerts::from_config(&config(
            "[alerts.ops]\nwebhook = \"http://127.0.0.1:9/\"\ncommand = [\"true\"]\n",
        ))
        .unwrap_err()
        .to_string();
        assert!(both.contains("exactly one"), "{both}");
    }

    #[tokio::test]
    async fn a_failing_command_is_tried_again_and_its_last_words_are_kept() {
        let alerts = Alerts::from_config(&config(
            "[alerts.bad]\ncommand = [\"sh\", \"-c\", \"echo no route >&2; exit 3\"]\nretries = 1\n",
        ))
        .unwrap();
        let alert = Alert {
            report: "r".into(),
            status: Event::Failed,
            scheduled_for: None,
            attempt: 1,
            run_id: None,
            error: Some("boom".into()),
            output: None,
            rows: None,
            bytes: None,
            host: "h".into(),
        };
        let delivery = alerts.deliver("bad", &alert).await;
        assert_eq!(
            delivery,
            Delivery {
                tries: 2,
                error: Some("command `sh` exited with 3: no route".into())
            }
        );
    }
}
