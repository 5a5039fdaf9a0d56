//! `spillway serve` and `spillway password`: resolve the server's options, open the engine
//! with the configured tables, load the reports, and hand them to `serve`.

use super::{options, ServeArgs};
use crate::config::ConfigFile;
use crate::engine::{Engine, EngineOptions};
use crate::error::{Error, Result};

/// `serve`: register the tables, load the reports, and serve until SIGTERM (exit 0).
pub(crate) async fn serve(
    args: ServeArgs,
    config: &ConfigFile,
    mut options: EngineOptions,
) -> Result<()> {
    let specs = options::table_specs_from(&args.tables, &[], None, config)?;
    let folder = options::reports_folder(args.queries.as_deref(), config);
    let reports = if folder.is_dir() || args.queries.is_some() {
        crate::report::load_reports(&folder).map_err(Error::from)?
    } else {
        Vec::new()
    };
    let pool = crate::engine::memory::pool_size(options.memory_limit);
    // Each connection runs under its user's role; the shared session has none.
    let default_role = options.role.take();
    let mut serve_options = options::serve_options(
        &args,
        &config.server,
        pool,
        options.privacy.as_deref(),
        default_role,
    )?;
    let (state_dir, max_state) = options::state_settings(config)?;
    if config.server.incremental != Some(false) {
        serve_options.states = Some((state_dir.join("serve"), max_state));
    }
    let engine = Engine::open(options, &specs).await?;
    crate::serve::run(engine, specs, reports, serve_options).await
}

/// `password`: read one line from stdin, print its SCRAM-SHA-256 verifier.
pub(crate) fn password() -> Result<()> {
    let mut line = String::new();
    std::io::stdin()
        .read_line(&mut line)
        .map_err(|e| Error::Usage(format!("cannot read the password from stdin: {e}")))?;
    let password = line.trim_end_matches(['\n', '\r']);
    if password.is_empty() {
        return Err(Error::Usage(
            "give the password on stdin, e.g. `printf %s \"$PW\" | spillway password`".into(),
        ));
    }
    let verifier = crate::serve::Verifier::from_password(password).map_err(Error::Internal)?;
    println!("{verifier}");
    Ok(())
}
