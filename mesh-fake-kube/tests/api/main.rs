//! Integration tests: real kube-rs 4.2 clients (and a few raw HTTP requests) against the fake
//! API server. One test binary with a module per area, to link kube once.

mod access;
mod common;
mod crud;
mod discovery;
mod gateway;
mod patch;
mod raw;
mod selectors;
mod tokens;
mod validation;
mod watcher;
