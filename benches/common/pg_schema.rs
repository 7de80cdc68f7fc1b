//! A throwaway PostgreSQL schema for a bench: created on the server the bench is given, seen
//! alone through its URL, dropped with everything in it when the bench is done with it.

use diesel::connection::SimpleConnection;
use diesel::prelude::*;

type BenchResult<T = ()> = Result<T, Box<dyn std::error::Error + Send + Sync>>;

/// A fresh schema on the server, dropped (with everything in it) when this goes.
pub struct BenchSchema {
    admin: String,
    /// The schema's name.
    pub name: String,
    /// A URL whose connections see only this schema.
    pub url: String,
}

impl BenchSchema {
    /// Creates the schema on the server at `admin`.
    pub fn create(admin: &str) -> BenchResult<Self> {
        let name = format!("tw_bench_{}", uuid::Uuid::now_v7().simple());
        PgConnection::establish(admin)?.batch_execute(&format!("CREATE SCHEMA {name}"))?;
        let separator = if admin.contains('?') { '&' } else { '?' };
        let url = format!("{admin}{separator}options=-c%20search_path%3D{name}");
        Ok(Self { admin: admin.to_owned(), name, url })
    }
}

impl Drop for BenchSchema {
    fn drop(&mut self) {
        match PgConnection::establish(&self.admin) {
            Ok(mut conn) => {
                if let Err(err) = conn.batch_execute(&format!("DROP SCHEMA IF EXISTS {} CASCADE", self.name)) {
                    eprintln!("could not drop schema {}: {err}", self.name);
                }
            }
            Err(err) => eprintln!("could not drop schema {}: {err}", self.name),
        }
    }
}
