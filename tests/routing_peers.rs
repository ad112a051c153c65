//! End-to-end checks that mesh members cannot act on each other's work,
//! with real broker processes on loopback and a third member that speaks
//! raw QUIC frames with its own admitted key: only an invocation's origin
//! may query or cancel its flight at the owner (anyone else gets
//! `NOT_ORIGIN` and the flight runs on), and a flight update from a peer
//! that is not the owner, or about an unknown invocation, is dropped and
//! counted without changing the delivery.

mod common;

use std::time::Duration;

use common::raw_member::RawMember;
use common::{Node, wait_until};
use scout_mesh::lifecycle::{DeliveryPolicy, FlightState, InvocationAction};
use scout_mesh::wire::{FlightUpdate, InvokeRequest, MeshFrame};
use scout_net::transport::endpoint::request;

/// How long one raw request may take.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// alpha (the origin) and beta (the owner of `@worker`, a bash loop that
/// takes a minute per line, so a flight stays running while it is probed).
fn origin_and_owner() -> (Node, Node) {
    let mut alpha = Node::setup("alpha", &[]);
    alpha.start();
    let mut beta = Node::setup("beta", &[]);
    beta.add_prompted_agent("worker", &["bash", "-c", "printf 'ready> '; while IFS= read -r line; do sleep 60; echo \"done: $line\"; printf 'ready> '; done"]);
    let joined = beta.run(&["mesh", "join", &alpha.invite()]);
    assert_eq!(joined.code, 0, "{}", joined.stderr);
    beta.start();
    alpha.wait_for_instance("@worker@beta#main");
    (alpha, beta)
}

fn submit(node: &Node, message: &str) -> String {
    let run = node.run(&["--json", "send", "@worker", message, "--timeout", "300"]);
    assert_eq!(run.code, 0, "send: {}", run.stderr);
    run.json()["invocation_id"].as_str().expect("id").to_owned()
}

/// The state of the flight of `id` at `node`; `None` while the node does
/// not hold it yet.
fn flight_state(node: &Node, id: &str) -> Option<String> {
    let url = format!("{}/v1/invocations/{id}", node.broker().http_base());
    let status: serde_json::Value = ureq::get(&url)
        .set("Authorization", &format!("Bearer {}", node.sandbox.token()))
        .call()
        .ok()?
        .into_json()
        .ok()?;
    status["flight"]["state"].as_str().map(str::to_owned)
}

/// `POST /v1/invocations/{id}/cancel` on `node`'s API.
fn cancel(node: &Node, id: &str) {
    let url = format!("{}/v1/invocations/{id}/cancel", node.broker().http_base());
    ureq::post(&url)
        .set("Authorization", &format!("Bearer {}", node.sandbox.token()))
        .call()
        .unwrap_or_else(|err| panic!("POST {url}: {err}"));
}

fn mesh_counter(node: &Node, field: &str) -> u64 {
    node.get("/v1/mesh")[field].as_u64().expect(field)
}

fn error_code(frame: &MeshFrame) -> String {
    match frame {
        MeshFrame::Error(error) => error.code.to_string(),
        other => panic!("expected an error frame, got {other:?}"),
    }
}

#[test]
fn only_the_origin_acts_on_a_flight_and_only_the_owner_reports() {
    let (alpha, beta) = origin_and_owner();
    let id = submit(&alpha, "job-1");
    wait_until("job-1 to run on beta", || {
        (flight_state(&beta, &id).as_deref() == Some("running")).then_some(())
    });

    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(async {
        let (probe, to_beta) = RawMember::join(&beta.invite()).await;

        // A member that is not the origin can neither read nor cancel.
        let query = MeshFrame::FlightQuery {
            invocation_id: id.clone(),
        };
        let answer = request(&to_beta, &query, REQUEST_TIMEOUT).await.unwrap();
        assert_eq!(error_code(&answer), "NOT_ORIGIN");
        let cancel = MeshFrame::Cancel {
            invocation_id: id.clone(),
        };
        let answer = request(&to_beta, &cancel, REQUEST_TIMEOUT).await.unwrap();
        assert_eq!(error_code(&answer), "NOT_ORIGIN");
        // Nor learn the flight's state by replaying its id as its own invoke.
        let replay = MeshFrame::Invoke(InvokeRequest {
            invocation_id: id.clone(),
            action: InvocationAction::Consult,
            body: "replayed".into(),
            conversation_id: None,
            origin: probe.node_id.clone(),
            target: "@worker".into(),
            instance: "@worker@beta#main".into(),
            resolve_reason: "exact".into(),
            deadline_ms: None,
            policy: DeliveryPolicy::Durable,
            from: None,
            chain: Vec::new(),
        });
        let answer = request(&to_beta, &replay, REQUEST_TIMEOUT).await.unwrap();
        assert_eq!(error_code(&answer), "NOT_ORIGIN");

        // Nor can it report on alpha's delivery, or on one alpha never had.
        let to_alpha = probe.connect(&alpha).await;
        let forged = MeshFrame::FlightUpdate(FlightUpdate {
            invocation_id: id.clone(),
            state: FlightState::Completed,
            output: "forged".into(),
            failure_reason: None,
            detail: None,
            failure_code: None,
            usage: None,
        });
        let answer = request(&to_alpha, &forged, REQUEST_TIMEOUT).await.unwrap();
        assert_eq!(error_code(&answer), "NOT_OWNER");
        let unknown = MeshFrame::FlightUpdate(FlightUpdate {
            invocation_id: "00000000-0000-7000-8000-000000000000".into(),
            state: FlightState::Running,
            output: "forged output".into(),
            failure_reason: None,
            detail: None,
            failure_code: None,
            usage: None,
        });
        let answer = request(&to_alpha, &unknown, REQUEST_TIMEOUT).await.unwrap();
        assert_eq!(error_code(&answer), "INVOCATION_NOT_FOUND");
    });

    // Nothing changed: the flight runs on, the delivery has no result.
    assert_eq!(flight_state(&beta, &id).as_deref(), Some("running"));
    let status = alpha.get(&format!("/v1/invocations/{id}"));
    assert!(status["delivery"]["result"].is_null(), "{status}");
    assert_eq!(status["delivery"]["state"], "running", "{status}");
    assert_eq!(mesh_counter(&beta, "flight_requests_refused"), 3);
    assert_eq!(mesh_counter(&alpha, "flight_updates_dropped"), 2);
    wait_until("alpha to log the dropped update", || {
        alpha
            .broker()
            .stderr_line_matching("dropped a flight update")
    });

    // The origin still cancels, through the mesh.
    cancel(&alpha, &id);
    wait_until("beta to cancel job-1 for its origin", || {
        (flight_state(&beta, &id).as_deref() == Some("cancelled")).then_some(())
    });

    // And the owner's operator still cancels through the local API.
    let second = submit(&alpha, "job-2");
    wait_until("job-2 to reach beta", || flight_state(&beta, &second));
    cancel(&beta, &second);
    assert_eq!(flight_state(&beta, &second).as_deref(), Some("cancelled"));
}
