//! `scout mcp` end to end, driven by the Rust MCP SDK's own client: a real
//! `scout mcp` process talks to broker alpha, which routes to `@fabric`, a
//! bash agent owned by broker beta (real QUIC, real SQLite). Every tool
//! called with bad arguments answers a typed error and the server keeps
//! serving.

mod common;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::{Node, wait_until};
use rmcp::model::{
    CallToolRequestParams, CallToolResult, NumberOrString, ProgressNotificationParam,
    ProgressToken, RequestParamsMeta,
};
use rmcp::service::{NotificationContext, RunningService};
use rmcp::transport::TokioChildProcess;
use rmcp::{ClientHandler, RoleClient, ServiceExt};
use serde_json::{Value, json};

/// How long one tool call may take before the test fails: a routed bash
/// turn takes well under a second, so only a real hang trips it.
const CALL_BOUND: Duration = Duration::from_secs(120);

/// A client that keeps the progress notifications it receives.
#[derive(Debug, Clone, Default)]
struct Recorder {
    progress: Arc<Mutex<Vec<ProgressNotificationParam>>>,
}

impl ClientHandler for Recorder {
    async fn on_progress(
        &self,
        notification: ProgressNotificationParam,
        _context: NotificationContext<RoleClient>,
    ) {
        self.progress.lock().unwrap().push(notification);
    }
}

/// Alpha (where `scout mcp` runs) and beta (owner of `@fabric`, a bash
/// agent), in one mesh, with alpha seeing `@fabric`.
fn two_brokers() -> (Node, Node) {
    let mut alpha = Node::setup("alpha", &[]);
    alpha.start();
    let mut beta = Node::setup("beta", &[]);
    beta.add_bash_agent("fabric");
    let joined = beta.run(&["mesh", "join", &alpha.invite()]);
    assert_eq!(joined.code, 0, "beta join: {}", joined.stderr);
    beta.start();
    alpha.wait_for_instance("@fabric@beta#main");
    (alpha, beta)
}

/// `scout mcp` for `node`'s home, as the operator (none of the agent
/// environment set), connected to a recording client.
async fn connect(node: &Node, recorder: Recorder) -> RunningService<RoleClient, Recorder> {
    let mut command = node.sandbox.scout();
    command
        .arg("mcp")
        .env_remove("SCOUT_AGENT")
        .env_remove("SCOUT_URL")
        .env_remove("SCOUT_TOKEN")
        .env("LOG_LEVEL", "warn");
    let transport =
        TokioChildProcess::new(tokio::process::Command::from(command)).expect("spawn scout mcp");
    tokio::time::timeout(CALL_BOUND, recorder.serve(transport))
        .await
        .expect("initialize in time")
        .expect("initialize")
}

fn arguments(value: Value) -> serde_json::Map<String, Value> {
    match value {
        Value::Object(map) => map,
        other => panic!("arguments must be an object: {other}"),
    }
}

async fn call(
    client: &RunningService<RoleClient, Recorder>,
    name: &str,
    args: Value,
) -> CallToolResult {
    let params = CallToolRequestParams::new(name.to_owned()).with_arguments(arguments(args));
    tokio::time::timeout(CALL_BOUND, client.call_tool(params))
        .await
        .unwrap_or_else(|_| panic!("`{name}` answered in time"))
        .unwrap_or_else(|err| panic!("`{name}` answered a protocol error: {err}"))
}

fn structured(result: &CallToolResult) -> Value {
    result.structured_content.clone().unwrap_or(Value::Null)
}

/// The code of an error result; fails the test on a success.
fn error_code(result: &CallToolResult) -> String {
    assert_eq!(result.is_error, Some(true), "expected an error: {result:?}");
    structured(result)["error"]["code"]
        .as_str()
        .unwrap_or_else(|| panic!("an error without a code: {result:?}"))
        .to_owned()
}

#[test]
fn an_mcp_client_asks_an_agent_on_another_broker() {
    let (alpha, beta) = two_brokers();
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(async {
        let recorder = Recorder::default();
        let client = connect(&alpha, recorder.clone()).await;

        let tools = client.list_all_tools().await.expect("tools/list");
        let mut names: Vec<String> = tools.iter().map(|tool| tool.name.to_string()).collect();
        names.sort();
        assert_eq!(
            names,
            [
                "agents",
                "ask",
                "inbox",
                "invocation",
                "peers",
                "permission",
                "reply",
                "request_approval",
                "resolve",
                "send",
                "whoami",
                "work_orders"
            ]
        );
        for tool in &tools {
            assert!(
                tool.description
                    .as_deref()
                    .is_some_and(|text| text.len() > 40),
                "{} needs a description a model can act on",
                tool.name
            );
        }

        let whoami = structured(&call(&client, "whoami", json!({})).await);
        assert_eq!(whoami["instance"], "operator");
        assert_eq!(whoami["node"], "alpha");

        let agents = structured(&call(&client, "agents", json!({"node": "beta"})).await);
        assert_eq!(agents["agents"][0]["name"], "@fabric@beta#main", "{agents}");
        assert_eq!(agents["agents"][0]["workspace"], "main");

        let resolved = structured(&call(&client, "resolve", json!({"name": "@fabric"})).await);
        assert_eq!(resolved["chosen"], "@fabric@beta#main", "{resolved}");

        // Ask with a progress token: the answer comes back in the result,
        // and progress was reported on the way.
        let mut params = CallToolRequestParams::new("ask").with_arguments(arguments(json!({
            "target": "@fabric",
            "message": "echo mcp-answer-$((6*7))",
            "timeout_s": 120,
        })));
        params.set_progress_token(ProgressToken(NumberOrString::String("ask-1".into())));
        let asked = tokio::time::timeout(CALL_BOUND, client.call_tool(params))
            .await
            .expect("ask in time")
            .expect("ask");
        let answer = structured(&asked);
        assert_ne!(asked.is_error, Some(true), "{asked:?}");
        assert!(
            answer["answer"]
                .as_str()
                .unwrap_or_default()
                .contains("mcp-answer-42"),
            "{answer}"
        );
        assert_eq!(answer["state"], "completed");
        assert_eq!(answer["instance"], "@fabric@beta#main");
        // The SDK's client puts its own progress token on every request, so
        // the notification carries that one, not the one set above.
        let progress = recorder.progress.clone();
        wait_until("a progress notification for the ask", || {
            let progress = progress.lock().unwrap();
            progress
                .iter()
                .any(|note| {
                    note.message
                        .as_deref()
                        .is_some_and(|m| m.starts_with("sent to @fabric@beta#main"))
                })
                .then_some(())
        });

        // The invocation tool shows the same flight, ended.
        let id = answer["invocation_id"].as_str().unwrap().to_owned();
        let shown = structured(
            &call(
                &client,
                "invocation",
                json!({"invocation_id": id, "wait": true}),
            )
            .await,
        );
        assert_eq!(shown["state"], "completed", "{shown}");

        let peers = structured(&call(&client, "peers", json!({})).await);
        assert_eq!(peers["peers"][0]["name"], "beta", "{peers}");

        client.cancel().await.expect("close the session");

        // The same server run for `@fabric` the way Scout runs it for an
        // agent (its instance, broker URL and credential in the
        // environment) sees the ask in its inbox.
        let agent = connect_as_agent(&beta, "@fabric@beta#main").await;
        let whoami = structured(&call(&agent, "whoami", json!({})).await);
        assert_eq!(whoami["instance"], "@fabric@beta#main");
        let inbox = structured(&call(&agent, "inbox", json!({})).await);
        let item = &inbox["invocations"][0];
        assert_eq!(item["invocation_id"], id.as_str(), "{inbox}");
        // The sender is what the records say: a person at alpha, or not
        // recorded on the owner at all; neither is an agent to reply to.
        let expected = match item["from"].as_str() {
            None => "SENDER_UNKNOWN",
            Some(from) if from.starts_with("user@") => "REPLY_TO_OPERATOR",
            Some(other) => panic!("the ask came from a person, not from {other}"),
        };
        let conversation = item["conversation_id"].as_str().unwrap();
        let reply = call(
            &agent,
            "reply",
            json!({"conversation_id": conversation, "message": "thanks"}),
        )
        .await;
        assert_eq!(error_code(&reply), expected);
        let unknown = call(
            &agent,
            "reply",
            json!({"conversation_id": "no-such-conversation", "message": "hi"}),
        )
        .await;
        assert_eq!(error_code(&unknown), "CONVERSATION_NOT_FOUND");
        agent.cancel().await.expect("close the session");
    });
}

/// `scout mcp` with the environment Scout gives the agents it runs.
async fn connect_as_agent(node: &Node, instance: &str) -> RunningService<RoleClient, Recorder> {
    let mut command = node.sandbox.scout();
    command
        .arg("mcp")
        .env("SCOUT_AGENT", instance)
        .env("SCOUT_URL", node.broker().http_base())
        .env("SCOUT_TOKEN", node.sandbox.token())
        .env("LOG_LEVEL", "warn");
    let transport =
        TokioChildProcess::new(tokio::process::Command::from(command)).expect("spawn scout mcp");
    tokio::time::timeout(CALL_BOUND, Recorder::default().serve(transport))
        .await
        .expect("initialize in time")
        .expect("initialize")
}

#[test]
fn every_tool_refuses_bad_arguments_with_a_code_and_keeps_serving() {
    let mut alpha = Node::setup("alpha", &[]);
    alpha.start();
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(async {
        let client = connect(&alpha, Recorder::default()).await;
        let cases: [(&str, Value, &str); 18] = [
            ("whoami", json!({"extra": 1}), "INVALID_ARGUMENTS"),
            ("agents", json!({"prefix": 7}), "INVALID_ARGUMENTS"),
            ("resolve", json!({}), "INVALID_ARGUMENTS"),
            ("resolve", json!({"name": "@Not A Name!"}), "INVALID_NAME"),
            ("resolve", json!({"name": "@nobody"}), "AGENT_NOT_FOUND"),
            ("send", json!({"target": "@fabric"}), "INVALID_ARGUMENTS"),
            (
                "send",
                json!({"target": "@nobody", "message": "hi"}),
                "AGENT_NOT_FOUND",
            ),
            (
                "ask",
                json!({"target": "@x", "message": "hi", "timeout_s": 0}),
                "INVALID_ARGUMENTS",
            ),
            (
                "ask",
                json!({"target": ["@x"], "message": "hi"}),
                "INVALID_ARGUMENTS",
            ),
            ("invocation", json!({"wait": true}), "INVALID_ARGUMENTS"),
            (
                "invocation",
                json!({"invocation_id": "no-such-id"}),
                "INVOCATION_NOT_FOUND",
            ),
            ("inbox", json!({"limit": "ten"}), "INVALID_ARGUMENTS"),
            (
                "reply",
                json!({"conversation_id": "c", "message": "hi"}),
                "NOT_AN_AGENT",
            ),
            ("work_orders", json!({"op": "explode"}), "INVALID_ARGUMENTS"),
            (
                "work_orders",
                json!({"op": "cancel", "work_order_id": "w"}),
                "WORK_ORDER_NOT_FOUND",
            ),
            (
                "request_approval",
                json!({"summary": "may I?"}),
                "NOT_AN_AGENT",
            ),
            (
                "permission",
                json!({"tool_name": "Bash", "input": {"command": "ls"}}),
                "NOT_AN_AGENT",
            ),
            ("no_such_tool", json!({}), "UNKNOWN_TOOL"),
        ];
        for (tool, args, expected) in cases {
            let result = call(&client, tool, args.clone()).await;
            assert_eq!(error_code(&result), expected, "{tool} {args}: {result:?}");
            // The server is still there and answers a good call.
            let whoami = call(&client, "whoami", json!({})).await;
            assert_eq!(structured(&whoami)["instance"], "operator");
        }
        client.cancel().await.expect("close the session");
    });
}
