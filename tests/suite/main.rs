//! Integration tests, one binary: configuration, the command line and the store.

mod cli;
mod config_errors;
mod emulator;
mod store;
mod support;
