//! Smoke mode, shared by the benches: with `TOKENWARDEN_BENCH_SMOKE=1` each bench runs every
//! phase at tiny sizes in a few seconds, so CI (`scripts/test`) notices a bench that no longer
//! runs; its figures mean nothing then. A smoke run fails (exit 1) where a full run would only
//! skip, e.g. without a PostgreSQL server.

/// The environment variable that selects smoke mode (`1`).
pub const SMOKE_ENV: &str = "TOKENWARDEN_BENCH_SMOKE";

/// Whether this is a smoke run.
pub fn smoke() -> bool {
    std::env::var(SMOKE_ENV).is_ok_and(|value| value == "1")
}

/// `full` in a real run, `tiny` in a smoke run.
pub fn size<T>(full: T, tiny: T) -> T {
    if smoke() { tiny } else { full }
}
