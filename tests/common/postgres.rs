//! A private PostgreSQL schema per test, on the server named by `TOKENWARDEN_TEST_POSTGRES_URL`.
//!
//! Without that variable the PostgreSQL tests print why and pass without running (a laptop
//! without PostgreSQL); with `TOKENWARDEN_REQUIRE_POSTGRES=1` (set by `.ci/run`) a missing
//! variable or an unreachable server fails the test instead.

use diesel::connection::SimpleConnection;
use tokenwarden::config::DatabaseUrl;
use tokenwarden::store::connect;

/// The server's URL, from the environment.
pub const URL_VAR: &str = "TOKENWARDEN_TEST_POSTGRES_URL";
/// Set (to anything but `0`) to make the PostgreSQL tests fail rather than skip.
pub const REQUIRE_VAR: &str = "TOKENWARDEN_REQUIRE_POSTGRES";

/// A schema of its own on the test server, dropped (with everything in it) when this goes.
pub struct TestSchema {
    admin: String,
    schema: String,
    /// A database URL whose connections see only this schema.
    pub url: DatabaseUrl,
    /// The same URL as text.
    url_text: String,
}

impl TestSchema {
    /// A fresh, empty schema, or `None` (after saying why) when PostgreSQL tests are not
    /// configured and not required.
    pub fn create() -> Option<Self> {
        let required = std::env::var(REQUIRE_VAR).is_ok_and(|value| value != "0");
        let Ok(admin) = std::env::var(URL_VAR) else {
            assert!(!required, "{REQUIRE_VAR} is set but {URL_VAR} is not: set it to a PostgreSQL URL");
            eprintln!("skipped: set {URL_VAR}=postgres://… to run the PostgreSQL tests");
            return None;
        };
        let schema = format!("tw_test_{}", uuid::Uuid::now_v7().simple());
        let admin_url = DatabaseUrl::parse(&admin).expect("the test PostgreSQL URL is a postgres:// URL");
        let mut conn = match connect(&admin_url) {
            Ok(conn) => conn,
            Err(err) => panic!("PostgreSQL at {admin_url} is unreachable: {err}"),
        };
        conn.batch_execute(&format!("CREATE SCHEMA {schema}")).expect("create the test schema");
        let separator = if admin.contains('?') { '&' } else { '?' };
        let url_text = format!("{admin}{separator}options=-c%20search_path%3D{schema}");
        let url = DatabaseUrl::parse(&url_text).expect("the schema's URL parses");
        Some(Self { admin, schema, url, url_text })
    }

    /// This schema's URL as text.
    pub fn url_text(&self) -> &str {
        &self.url_text
    }

    /// The server's TCP address: the first address of the host the URL names (port 5432 when it
    /// names none) that accepts a connection.
    pub fn server_addr(&self) -> std::net::SocketAddr {
        use std::net::ToSocketAddrs;
        let (_, host) = self.authority();
        assert!(!host.is_empty(), "the proxy tests need a PostgreSQL URL with a TCP host, not a socket");
        let host = if host.contains(':') { host.to_owned() } else { format!("{host}:5432") };
        let timeout = std::time::Duration::from_secs(2);
        (host.to_socket_addrs().expect("resolve the PostgreSQL host"))
            .find(|addr| std::net::TcpStream::connect_timeout(addr, timeout).is_ok())
            .unwrap_or_else(|| panic!("no address of {host} accepts a connection"))
    }

    /// This schema's URL with the server's host and port replaced by `addr` (a proxy's).
    pub fn url_via(&self, addr: std::net::SocketAddr) -> String {
        let (user, host) = self.authority();
        self.url_text.replacen(&format!("{user}{host}"), &format!("{user}{addr}"), 1)
    }

    /// The URL's user part (with its `@`, or empty) and its `host[:port]`.
    fn authority(&self) -> (&str, &str) {
        let rest = self.admin.split_once("://").map_or(self.admin.as_str(), |(_, rest)| rest);
        let authority = rest.split(['/', '?']).next().unwrap_or(rest);
        match authority.rfind('@') {
            Some(at) => authority.split_at(at + 1),
            None => ("", authority),
        }
    }
}

impl Drop for TestSchema {
    fn drop(&mut self) {
        let admin = DatabaseUrl::parse(&self.admin).expect("parsed before");
        if let Ok(mut conn) = connect(&admin) {
            let _ = conn.batch_execute(&format!("DROP SCHEMA IF EXISTS {} CASCADE", self.schema));
        }
    }
}
