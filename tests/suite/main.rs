//! Integration tests, one binary: configuration, the command line and the store.

mod alerts;
mod api;
mod cli;
mod config_errors;
mod crm_client;
mod daemon;
mod emulator;
mod emulator_failure_cases;
mod emulator_faults;
mod emulator_hubspot;
mod emulator_query;
mod emulator_writes;
mod queries;
mod recycle;
mod rules;
mod store;
mod support;
mod sync;
mod sync_bulk;
mod sync_hubspot;
mod violations_api;
