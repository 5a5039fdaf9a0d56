//! One client connection, from its startup to its end.
//!
//! Once authenticated (`auth`'s startup handler calls [`Opener`]), a connection gets a
//! [`Connection`]: its own DataFusion session over the shared pool with a per-statement memory
//! cap, and a cancel channel that cancel requests (arriving on a connection of their own)
//! signal. Connections over the limit get one clear refusal ([`Refuse`]). Must not run
//! statements (see `statement`).

use super::auth::{self, OnAuthenticated, Startup};
use super::server::Server;
use super::statement::{Queries, METADATA_STATEMENT_TIMEOUT};
use async_trait::async_trait;
use bytes::Bytes;
use datafusion_postgres::pgwire;
use datafusion_postgres::DfSessionService;
use futures::Sink;
use pgwire::api::auth::StartupHandler;
use pgwire::api::cancel::CancelHandler;
use pgwire::api::query::{ExtendedQueryHandler, SimpleQueryHandler};
use pgwire::api::{
    ClientInfo, ConnectionGuard, ConnectionHandle, ErrorHandler, PgWireServerHandlers,
};
use pgwire::error::{PgWireError, PgWireResult};
use pgwire::messages::cancel::CancelRequest;
use pgwire::messages::PgWireBackendMessage;
use std::fmt::Debug;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use tokio::sync::watch;

/// One authenticated connection's session (kept in pgwire's per-connection extensions).
pub(crate) struct Connection {
    pub(crate) service: DfSessionService,
    pub(crate) cancel: watch::Receiver<u64>,
    pub(crate) key: (i32, Bytes),
    pub(crate) server: Arc<Server>,
    /// Who is connected, from where, and the privacy role their statements run under.
    pub(crate) user: String,
    pub(crate) peer: String,
    pub(crate) role: Option<Arc<crate::privacy::Role>>,
    pub(crate) guard: Option<Arc<crate::privacy::guard::PrivacyGuard>>,
}

impl Drop for Connection {
    fn drop(&mut self) {
        if let Ok(mut cancels) = self.server.cancels.lock() {
            cancels.remove(&self.key);
        }
        self.server.active.fetch_sub(1, Ordering::Relaxed);
    }
}

pub(crate) fn connection<C: ClientInfo + ?Sized>(client: &C) -> PgWireResult<Arc<Connection>> {
    client
        .session_extensions()
        .get::<Connection>()
        .ok_or_else(|| PgWireError::ApiError("connection is not authenticated".into()))
}

struct Opener(Arc<Server>);

impl OnAuthenticated for Opener {
    fn opened<C: ClientInfo>(&self, client: &mut C) -> PgWireResult<()> {
        let server = &self.0;
        let user = client
            .metadata()
            .get(pgwire::api::METADATA_USER)
            .cloned()
            .unwrap_or_default();
        let role = server.role_of(&user).cloned();
        let (ctx, privacy_guard) = server
            .engine
            .session_with_memory_cap(server.query_memory, role.as_ref(), server.states.as_ref())
            .map_err(|e| PgWireError::ApiError(Box::new(e)))?;
        let service = DfSessionService::new_with_hooks(Arc::new(ctx), server.hooks.clone());
        let (pid, secret) = client.pid_and_secret_key();
        let (handle, guard) = server.manager.register(pid, secret.clone());
        client
            .session_extensions()
            .insert::<Arc<ConnectionHandle>>(handle);
        client.session_extensions().insert::<ConnectionGuard>(guard);
        let key = (pid, secret.to_bytes());
        let (sender, receiver) = watch::channel(0u64);
        if let Ok(mut cancels) = server.cancels.lock() {
            cancels.insert(key.clone(), sender);
        }
        if let Some(timeout) = server.statement_timeout {
            client.metadata_mut().insert(
                METADATA_STATEMENT_TIMEOUT.to_string(),
                timeout.as_millis().to_string(),
            );
        }
        server.counters.connections.fetch_add(1, Ordering::Relaxed);
        server.active.fetch_add(1, Ordering::Relaxed);
        let peer = client.socket_addr().to_string();
        tracing::info!(
            peer = %peer,
            user = %user,
            role = role.as_ref().map(|r| r.name.as_str()).unwrap_or(""),
            tls = client.is_secure(),
            "connection opened"
        );
        client.session_extensions().insert(Connection {
            service,
            cancel: receiver,
            key,
            server: server.clone(),
            user,
            peer,
            role,
            guard: privacy_guard,
        });
        Ok(())
    }
}

/// The handlers pgwire asks for on each connection.
pub(crate) struct Handlers {
    server: Arc<Server>,
    queries: Arc<Queries>,
    cancel: Arc<Canceller>,
    opener: Arc<Opener>,
}

impl Handlers {
    pub(crate) fn new(server: Arc<Server>) -> Handlers {
        Handlers {
            queries: Arc::new(Queries {
                server: server.clone(),
            }),
            cancel: Arc::new(Canceller {
                server: server.clone(),
            }),
            opener: Arc::new(Opener(server.clone())),
            server,
        }
    }
}

impl PgWireServerHandlers for Handlers {
    fn simple_query_handler(&self) -> Arc<impl SimpleQueryHandler> {
        self.queries.clone()
    }

    fn extended_query_handler(&self) -> Arc<impl ExtendedQueryHandler> {
        self.queries.clone()
    }

    fn startup_handler(&self) -> Arc<impl StartupHandler> {
        Arc::new(Startup::new(
            self.server.users.clone(),
            self.server.require_tls,
            self.server.parameters.clone(),
            self.opener.clone(),
        ))
    }

    fn cancel_handler(&self) -> Arc<impl CancelHandler> {
        self.cancel.clone()
    }

    fn error_handler(&self) -> Arc<impl ErrorHandler> {
        Arc::new(LogErrors)
    }
}

struct LogErrors;

impl ErrorHandler for LogErrors {
    fn on_error<C: ClientInfo>(&self, client: &C, error: &mut PgWireError) {
        tracing::info!(peer = %client.socket_addr(), "error sent: {error}");
    }
}

/// Cancel requests arrive on their own connection with the target's key.
struct Canceller {
    server: Arc<Server>,
}

#[async_trait]
impl CancelHandler for Canceller {
    async fn on_cancel_request(&self, request: CancelRequest) {
        // pgwire's handle stops a statement still being planned; the channel stops one whose
        // rows are streaming.
        self.server
            .manager
            .cancel(request.pid, &request.secret_key)
            .await;
        let key = (request.pid, request.secret_key.to_bytes());
        if let Ok(cancels) = self.server.cancels.lock() {
            if let Some(sender) = cancels.get(&key) {
                sender.send_modify(|generation| *generation += 1);
                tracing::info!(pid = request.pid, "cancel request");
            }
        }
    }
}

/// Connections over the limit get this: one clear error, then the socket closes.
pub(crate) struct Refuse {
    max: usize,
}

impl Refuse {
    pub(crate) fn new(max: usize) -> Refuse {
        Refuse { max }
    }
}

struct RefuseStartup {
    max: usize,
}

#[async_trait]
impl StartupHandler for RefuseStartup {
    async fn on_startup<C>(
        &self,
        _client: &mut C,
        _message: pgwire::messages::PgWireFrontendMessage,
    ) -> PgWireResult<()>
    where
        C: ClientInfo + Sink<PgWireBackendMessage> + Unpin + Send + Sync,
        C::Error: Debug,
        PgWireError: From<<C as Sink<PgWireBackendMessage>>::Error>,
    {
        Err(auth::fatal(
            "53300",
            format!(
                "sorry, too many clients already: this server takes {} connections at once \
                 ([server] max_connections)",
                self.max
            ),
        ))
    }
}

impl PgWireServerHandlers for Refuse {
    fn startup_handler(&self) -> Arc<impl StartupHandler> {
        Arc::new(RefuseStartup { max: self.max })
    }
}

/// A connection's place in the count; given back when the connection ends, however it ends.
pub(crate) struct Slot(pub(crate) Arc<AtomicUsize>);

impl Drop for Slot {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}
