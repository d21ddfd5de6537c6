//! The CRM client told to stop: what it abandons (waits, reads) and what it awaits (writes).

use std::time::Duration;

use pipewarden::crm::{ApiClient, ApiRequest, CrmError, RetryPolicy};
use pipewarden::emulator::RunningEmulator;
use pipewarden::stop::{StopHandle, StopSignal};
use reqwest::Method;
use serde_json::{json, Value};

use super::daemon::until_the_first_fault_fired;
use super::emulator_faults::set_faults;
use super::sync::{salesforce_connection, start_emulator};
use crate::support::ConfigDir;

const V: &str = "/services/data/v62.0";

/// Retries a minute apart: a call that sat out its backoff would outlast the tests' bounds.
fn patient_retries() -> RetryPolicy {
    RetryPolicy {
        max_attempts: 10,
        base_delay: Duration::from_secs(60),
        max_delay: Duration::from_secs(60),
    }
}

fn read_json(body: &[u8]) -> Result<Value, String> {
    serde_json::from_slice(body).map_err(|err| err.to_string())
}

/// An emulator with `faults` in force, and a client of its Salesforce org with patient
/// retries that stops on the handle returned with it.
async fn client_meeting(faults: Value) -> (RunningEmulator, StopHandle, ApiClient) {
    let emu = start_emulator().await;
    let dir = ConfigDir::new();
    let (stopper, stop) = StopSignal::new();
    let api = ApiClient::new(&salesforce_connection(&emu, &dir), patient_retries())
        .unwrap()
        .stop_on(stop);
    set_faults(&emu, faults).await;
    (emu, stopper, api)
}

/// Asks for a stop once the emulator's first fault has fired.
async fn stop_at_the_fault(emu: &RunningEmulator, stopper: &StopHandle) {
    until_the_first_fault_fired(emu).await;
    stopper.stop();
}

#[tokio::test]
async fn a_stop_abandons_a_read_waiting_to_retry() {
    let (emu, stopper, api) = client_meeting(
        json!([{"kind": "server_error", "target": "salesforce", "path_contains": "/query"}]),
    )
    .await;
    let read = ApiRequest::get(format!("{V}/query")).param("q", "SELECT Id FROM Lead");
    let (outcome, ()) = tokio::join!(
        tokio::time::timeout(Duration::from_secs(30), api.send(&read, read_json)),
        stop_at_the_fault(&emu, &stopper)
    );
    let err = outcome
        .expect("the stop ended the backoff")
        .expect_err("no answer came");
    assert!(matches!(err, CrmError::Interrupted { .. }), "{err}");
    assert_eq!(api.stats().calls, 1, "nothing was sent after the stop");
    emu.stop().await.unwrap();
}

#[tokio::test]
async fn a_stop_awaits_a_write_in_flight() {
    // The lead is created at once; the answer saying so comes a second later.
    let (emu, stopper, api) = client_meeting(json!([{"kind": "slow_answer", "delay_ms": 1_000,
        "target": "salesforce", "path_contains": "/sobjects/Lead"}]))
    .await;
    let create = ApiRequest::with_json(
        Method::POST,
        format!("{V}/sobjects/Lead"),
        json!({"LastName": "Nguyen", "Company": "Harbor Foods"}),
    );
    let (outcome, ()) = tokio::join!(
        api.send(&create, read_json),
        stop_at_the_fault(&emu, &stopper)
    );
    let created = outcome.expect("the write's answer was awaited").value;
    assert_eq!(created["success"], json!(true), "{created}");
    emu.stop().await.unwrap();
}
