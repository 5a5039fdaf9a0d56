//! Who may connect: SCRAM-SHA-256 users, TLS policy, and the connection's start.
//!
//! Owns the SCRAM-SHA-256 exchange (RFC 5802/7677, as PostgreSQL speaks it) against stored
//! verifiers, and the startup handler that runs it, refuses plain-text connections when TLS is
//! required, registers the connection for cancel requests and opens its session. Written here
//! rather than taken from pgwire because pgwire's SCRAM needs the *salted password*, which is
//! as good as the password itself; a PostgreSQL verifier (`SCRAM-SHA-256$iter:salt$stored:server`)
//! lets the server check a client without being able to impersonate one. Must not log or echo a
//! password, a verifier or a proof.

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;
use datafusion_postgres::pgwire;
use pgwire::api::auth::{
    finish_authentication, protocol_negotiation, save_startup_parameters_to_metadata,
    ServerParameterProvider, StartupHandler,
};
use pgwire::api::{
    ClientInfo, PgWireConnectionState, PidSecretKeyGenerator, RandomPidSecretKeyGenerator,
    METADATA_USER,
};
use pgwire::error::{ErrorInfo, PgWireError, PgWireResult};
use pgwire::messages::startup::Authentication;
use pgwire::messages::{PgWireBackendMessage, PgWireFrontendMessage};
use ring::{digest, hmac, pbkdf2, rand as ring_rand};
use std::collections::HashMap;
use std::fmt;
use std::num::NonZeroU32;
use std::sync::{Arc, Mutex};

/// Iterations for verifiers made from a password (PostgreSQL's default).
pub(crate) const DEFAULT_ITERATIONS: u32 = 4096;
const MECHANISM: &str = "SCRAM-SHA-256";

/// A stored SCRAM-SHA-256 verifier, in PostgreSQL's `pg_authid` format.
#[derive(Clone, PartialEq, Eq)]
pub(crate) struct Verifier {
    iterations: u32,
    salt: Vec<u8>,
    stored_key: Vec<u8>,
    server_key: Vec<u8>,
}

impl fmt::Debug for Verifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Verifier(<redacted>)")
    }
}

impl Verifier {
    /// A verifier for `password` with a fresh random salt.
    pub(crate) fn from_password(password: &str) -> Result<Verifier, String> {
        let mut salt = vec![0u8; 16];
        ring::rand::SecureRandom::fill(&ring_rand::SystemRandom::new(), &mut salt)
            .map_err(|_| "the system random number generator failed".to_string())?;
        Ok(Self::derive(password, salt, DEFAULT_ITERATIONS))
    }

    fn derive(password: &str, salt: Vec<u8>, iterations: u32) -> Verifier {
        // SASLprep, as libpq does; a password it rejects is used as is (PostgreSQL does the same).
        let prepared = stringprep::saslprep(password)
            .map(|p| p.into_owned())
            .unwrap_or_else(|_| password.to_string());
        let mut salted = [0u8; 32];
        let rounds = NonZeroU32::new(iterations).unwrap_or(NonZeroU32::MIN);
        pbkdf2::derive(
            pbkdf2::PBKDF2_HMAC_SHA256,
            rounds,
            &salt,
            prepared.as_bytes(),
            &mut salted,
        );
        let client_key = hmac_sha256(&salted, b"Client Key");
        Verifier {
            iterations,
            salt,
            stored_key: digest::digest(&digest::SHA256, &client_key)
                .as_ref()
                .to_vec(),
            server_key: hmac_sha256(&salted, b"Server Key"),
        }
    }

    /// Parse `SCRAM-SHA-256$<iterations>:<salt>$<StoredKey>:<ServerKey>` (base64 parts).
    pub(crate) fn parse(text: &str) -> Result<Verifier, String> {
        let bad = || {
            "not a SCRAM-SHA-256 verifier (`SCRAM-SHA-256$<iterations>:<salt>$<StoredKey>:<ServerKey>`, \
             as `spillway password` prints)"
                .to_string()
        };
        let rest = text.trim().strip_prefix("SCRAM-SHA-256$").ok_or_else(bad)?;
        let (params, keys) = rest.split_once('$').ok_or_else(bad)?;
        let (iterations, salt) = params.split_once(':').ok_or_else(bad)?;
        let (stored, server) = keys.split_once(':').ok_or_else(bad)?;
        let iterations: u32 = iterations.parse().map_err(|_| bad())?;
        if iterations == 0 {
            return Err(bad());
        }
        let decode = |part: &str| B64.decode(part).map_err(|_| bad());
        let verifier = Verifier {
            iterations,
            salt: decode(salt)?,
            stored_key: decode(stored)?,
            server_key: decode(server)?,
        };
        if verifier.stored_key.len() != 32 || verifier.server_key.len() != 32 {
            return Err(bad());
        }
        Ok(verifier)
    }
}

impl fmt::Display for Verifier {
    /// The storable form (safe to put in a config file: it cannot be used to log in).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "SCRAM-SHA-256${}:{}${}:{}",
            self.iterations,
            B64.encode(&self.salt),
            B64.encode(&self.stored_key),
            B64.encode(&self.server_key)
        )
    }
}

fn hmac_sha256(key: &[u8], message: &[u8]) -> Vec<u8> {
    hmac::sign(&hmac::Key::new(hmac::HMAC_SHA256, key), message)
        .as_ref()
        .to_vec()
}

/// The users allowed to connect.
#[derive(Debug, Default)]
pub(crate) struct Users {
    verifiers: HashMap<String, Verifier>,
    /// Makes the fake verifier of an unknown user stable, so that a client cannot tell unknown
    /// users from known ones by their salt.
    mock_key: Vec<u8>,
}

impl Users {
    pub(crate) fn new(verifiers: HashMap<String, Verifier>) -> Users {
        let mut mock_key = vec![0u8; 32];
        let _ = ring::rand::SecureRandom::fill(&ring_rand::SystemRandom::new(), &mut mock_key);
        Users {
            verifiers,
            mock_key,
        }
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.verifiers.is_empty()
    }

    /// The user's verifier, or a made-up one (that no proof matches) for an unknown user.
    fn lookup(&self, user: &str) -> (Verifier, bool) {
        match self.verifiers.get(user) {
            Some(verifier) => (verifier.clone(), true),
            None => {
                let salt = hmac_sha256(&self.mock_key, user.as_bytes())[..16].to_vec();
                let fake = Verifier {
                    iterations: DEFAULT_ITERATIONS,
                    salt,
                    stored_key: vec![0; 32],
                    server_key: vec![0; 32],
                };
                (fake, false)
            }
        }
    }
}

/// Where the exchange stands after the server's first message.
struct Exchange {
    verifier: Verifier,
    known_user: bool,
    gs2_header: String,
    nonce: String,
    client_first_bare: String,
    server_first: String,
}

impl Exchange {
    /// Read `client-first-message`, answer with `server-first-message`.
    fn start(users: &Users, user: &str, client_first: &str) -> PgWireResult<Exchange> {
        let malformed = || invalid("malformed SCRAM client-first-message");
        // gs2-header: "n,," (no channel binding) or "y,," (client could but server did not offer);
        // "p=..." asks for channel binding, which this server does not advertise.
        let mut parts = client_first.splitn(3, ',');
        let flag = parts.next().ok_or_else(malformed)?;
        let authzid = parts.next().ok_or_else(malformed)?;
        let bare = parts.next().ok_or_else(malformed)?;
        if flag.starts_with("p=") {
            return Err(invalid(
                "SCRAM channel binding is not offered by this server",
            ));
        }
        if flag != "n" && flag != "y" {
            return Err(malformed());
        }
        let client_nonce = bare
            .split(',')
            .find_map(|attr| attr.strip_prefix("r="))
            .filter(|nonce| !nonce.is_empty())
            .ok_or_else(malformed)?;
        let mut server_nonce = [0u8; 18];
        ring::rand::SecureRandom::fill(&ring_rand::SystemRandom::new(), &mut server_nonce)
            .map_err(|_| invalid("the system random number generator failed"))?;
        let nonce = format!("{client_nonce}{}", B64.encode(server_nonce));
        let (verifier, known_user) = users.lookup(user);
        let server_first = format!(
            "r={nonce},s={},i={}",
            B64.encode(&verifier.salt),
            verifier.iterations
        );
        Ok(Exchange {
            verifier,
            known_user,
            gs2_header: format!("{flag},{authzid},"),
            nonce,
            client_first_bare: bare.to_string(),
            server_first,
        })
    }

    /// Check `client-final-message`; on success, the `server-final-message`.
    fn finish(&self, client_final: &str) -> Result<String, ()> {
        let (without_proof, proof) = client_final.rsplit_once(",p=").ok_or(())?;
        let mut binding = None;
        let mut nonce = None;
        for attr in without_proof.split(',') {
            if let Some(value) = attr.strip_prefix("c=") {
                binding = Some(value);
            } else if let Some(value) = attr.strip_prefix("r=") {
                nonce = Some(value);
            }
        }
        if binding != Some(B64.encode(&self.gs2_header).as_str()) || nonce != Some(&self.nonce) {
            return Err(());
        }
        let proof = B64.decode(proof).map_err(|_| ())?;
        let auth_message = format!(
            "{},{},{}",
            self.client_first_bare, self.server_first, without_proof
        );
        let signature = hmac_sha256(&self.verifier.stored_key, auth_message.as_bytes());
        if proof.len() != signature.len() {
            return Err(());
        }
        let client_key: Vec<u8> = proof.iter().zip(&signature).map(|(a, b)| a ^ b).collect();
        let stored = digest::digest(&digest::SHA256, &client_key);
        let matches = stored
            .as_ref()
            .iter()
            .zip(&self.verifier.stored_key)
            .fold(0u8, |acc, (a, b)| acc | (a ^ b))
            == 0;
        if !(matches && self.known_user) {
            return Err(());
        }
        let server_signature = hmac_sha256(&self.verifier.server_key, auth_message.as_bytes());
        Ok(format!("v={}", B64.encode(server_signature)))
    }
}

fn invalid(message: &str) -> PgWireError {
    PgWireError::UserError(Box::new(ErrorInfo::new(
        "FATAL".into(),
        "08P01".into(),
        message.into(),
    )))
}

/// A FATAL error the client shows as is.
pub(crate) fn fatal(code: &str, message: String) -> PgWireError {
    PgWireError::UserError(Box::new(ErrorInfo::new(
        "FATAL".into(),
        code.into(),
        message,
    )))
}

fn auth_failed(user: &str) -> PgWireError {
    fatal(
        "28P01",
        format!("password authentication failed for user \"{user}\""),
    )
}

/// What a connection does once it is authenticated: open its session (see `session`).
pub(crate) trait OnAuthenticated: Send + Sync {
    fn opened<C: ClientInfo>(&self, client: &mut C) -> PgWireResult<()>;
}

/// The startup phase of one connection (pgwire asks for a fresh one per connection, so the
/// exchange state lives here).
pub(crate) struct Startup<P, O> {
    users: Arc<Users>,
    require_tls: bool,
    parameters: Arc<P>,
    on_authenticated: Arc<O>,
    exchange: Mutex<Option<Exchange>>,
}

impl<P, O> Startup<P, O> {
    pub(crate) fn new(
        users: Arc<Users>,
        require_tls: bool,
        parameters: Arc<P>,
        on_authenticated: Arc<O>,
    ) -> Self {
        Startup {
            users,
            require_tls,
            parameters,
            on_authenticated,
            exchange: Mutex::new(None),
        }
    }
}

#[async_trait::async_trait]
impl<P: ServerParameterProvider, O: OnAuthenticated> StartupHandler for Startup<P, O> {
    async fn on_startup<C>(
        &self,
        client: &mut C,
        message: PgWireFrontendMessage,
    ) -> PgWireResult<()>
    where
        C: ClientInfo + futures::Sink<PgWireBackendMessage> + Unpin + Send + Sync,
        C::Error: fmt::Debug,
        PgWireError: From<<C as futures::Sink<PgWireBackendMessage>>::Error>,
    {
        use futures::SinkExt;
        match message {
            PgWireFrontendMessage::Startup(ref startup) => {
                protocol_negotiation(client, startup).await?;
                save_startup_parameters_to_metadata(client, startup);
                if self.require_tls && !client.is_secure() {
                    return Err(fatal(
                        "28000",
                        "this server accepts only TLS connections (connect with sslmode=require)"
                            .into(),
                    ));
                }
                if self.users.is_empty() {
                    return self.accept(client).await;
                }
                client.set_state(PgWireConnectionState::AuthenticationInProgress);
                client
                    .send(PgWireBackendMessage::Authentication(Authentication::SASL(
                        vec![MECHANISM.to_string()],
                    )))
                    .await?;
            }
            PgWireFrontendMessage::PasswordMessageFamily(message) => {
                let user = client
                    .metadata()
                    .get(METADATA_USER)
                    .cloned()
                    .unwrap_or_default();
                let started = self
                    .exchange
                    .lock()
                    .map_err(|_| invalid("authentication state poisoned"))?
                    .take();
                match started {
                    None => {
                        let initial = message.into_sasl_initial_response()?;
                        if initial.auth_method != MECHANISM {
                            return Err(invalid("only SCRAM-SHA-256 authentication is supported"));
                        }
                        let data = initial
                            .data
                            .as_ref()
                            .ok_or_else(|| invalid("empty SCRAM client-first-message"))?;
                        let text = std::str::from_utf8(data)
                            .map_err(|_| invalid("SCRAM message is not UTF-8"))?;
                        let exchange = Exchange::start(&self.users, &user, text)?;
                        let reply = exchange.server_first.clone().into_bytes();
                        *self
                            .exchange
                            .lock()
                            .map_err(|_| invalid("authentication state poisoned"))? =
                            Some(exchange);
                        client
                            .send(PgWireBackendMessage::Authentication(
                                Authentication::SASLContinue(reply.into()),
                            ))
                            .await?;
                    }
                    Some(exchange) => {
                        let response = message.into_sasl_response()?;
                        let text = std::str::from_utf8(&response.data)
                            .map_err(|_| invalid("SCRAM message is not UTF-8"))?;
                        let Ok(server_final) = exchange.finish(text) else {
                            tracing::warn!(user = %user, peer = %client.socket_addr(), "authentication failed");
                            return Err(auth_failed(&user));
                        };
                        client
                            .send(PgWireBackendMessage::Authentication(
                                Authentication::SASLFinal(server_final.into_bytes().into()),
                            ))
                            .await?;
                        return self.accept(client).await;
                    }
                }
            }
            _ => {}
        }
        Ok(())
    }
}

impl<P: ServerParameterProvider, O: OnAuthenticated> Startup<P, O> {
    async fn accept<C>(&self, client: &mut C) -> PgWireResult<()>
    where
        C: ClientInfo + futures::Sink<PgWireBackendMessage> + Unpin + Send + Sync,
        C::Error: fmt::Debug,
        PgWireError: From<<C as futures::Sink<PgWireBackendMessage>>::Error>,
    {
        let (pid, secret) = RandomPidSecretKeyGenerator::default().generate(client);
        client.set_pid_and_secret_key(pid, secret);
        self.on_authenticated.opened(client)?;
        finish_authentication(client, self.parameters.as_ref()).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// RFC 7677's test vector: user "user", password "pencil", 4096 iterations.
    const SALT_B64: &str = "W22ZaJ0SNY7soEsUEjb6gQ==";
    const CLIENT_FIRST: &str = "n,,n=user,r=rOprNGfwEbeRWgbNEkqO";
    const CLIENT_FINAL_WITHOUT_PROOF: &str =
        "c=biws,r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0";
    const PROOF: &str = "dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ=";
    const SERVER_SIGNATURE: &str = "v=6rriTRBi23WpRR/wtup+mMhUZUn/dB5nLTJRsjl95G4=";

    fn rfc_exchange(users: &Users, user: &str) -> Exchange {
        let (verifier, known_user) = users.lookup(user);
        Exchange {
            verifier,
            known_user,
            gs2_header: "n,,".into(),
            nonce: "rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0".into(),
            client_first_bare: CLIENT_FIRST["n,,".len()..].into(),
            server_first: format!(
                "r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,s={SALT_B64},i=4096"
            ),
        }
    }

    fn rfc_users() -> Users {
        let salt = B64.decode(SALT_B64).unwrap();
        let verifier = Verifier::derive("pencil", salt, 4096);
        Users::new(HashMap::from([("user".to_string(), verifier)]))
    }

    #[test]
    fn the_rfc_7677_exchange_verifies_and_signs_as_the_rfc_says() {
        let users = rfc_users();
        let exchange = rfc_exchange(&users, "user");
        let reply = exchange
            .finish(&format!("{CLIENT_FINAL_WITHOUT_PROOF},p={PROOF}"))
            .unwrap();
        assert_eq!(reply, SERVER_SIGNATURE);
    }

    #[test]
    fn a_wrong_proof_an_unknown_user_and_a_changed_nonce_are_refused() {
        let users = rfc_users();
        let exchange = rfc_exchange(&users, "user");
        let mut wrong = B64.decode(PROOF).unwrap();
        wrong[0] ^= 1;
        let wrong = B64.encode(wrong);
        assert!(exchange
            .finish(&format!("{CLIENT_FINAL_WITHOUT_PROOF},p={wrong}"))
            .is_err());
        let stranger = rfc_exchange(&users, "mallory");
        assert!(stranger
            .finish(&format!("{CLIENT_FINAL_WITHOUT_PROOF},p={PROOF}"))
            .is_err());
        let replay = "c=biws,r=rOprNGfwEbeRWgbNEkqOother";
        assert!(exchange.finish(&format!("{replay},p={PROOF}")).is_err());
    }

    #[test]
    fn verifiers_round_trip_through_their_text_form_and_reject_garbage() {
        let verifier = Verifier::from_password("s3cret").unwrap();
        let text = verifier.to_string();
        assert!(text.starts_with("SCRAM-SHA-256$4096:"));
        assert!(!text.contains("s3cret"));
        assert_eq!(Verifier::parse(&text).unwrap(), verifier);
        for bad in [
            "",
            "md5abc",
            "SCRAM-SHA-256$0:AA==$AA==:AA==",
            "SCRAM-SHA-256$4096:AA==$AA==:AA==",
        ] {
            assert!(Verifier::parse(bad).is_err(), "{bad}");
        }
        assert_eq!(format!("{verifier:?}"), "Verifier(<redacted>)");
    }

    #[test]
    fn an_unknown_user_gets_the_same_salt_every_time() {
        let users = rfc_users();
        let (first, known) = users.lookup("nobody");
        let (second, _) = users.lookup("nobody");
        assert!(!known);
        assert_eq!(first.salt, second.salt);
    }
}
