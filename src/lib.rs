//! tokenwarden keeps GitLab and OAuth 2.0 credentials alive: it tracks tokens in a store,
//! rotates each before it expires, and tells dependent services when a secret changed.
//!
//! Data flows one way: [`config`] → [`store`] → engine → providers → [`store`] → notify.
//! The [`api`] and [`cli`] call into the store and engine; nothing below calls back up.

pub mod api;
pub mod cli;
pub mod config;
pub mod crypto;
pub mod domain;
pub mod engine;
pub mod notify;
pub mod oauth;
pub mod providers;
pub mod simulator;
pub mod sinks;
pub mod store;
pub mod telemetry;
pub mod web;
