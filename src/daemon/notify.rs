//! Notifications: a person learns that an agent waits for them without
//! watching a terminal.
//!
//! Two channels, both optional and set in `settings.json` under
//! `notifications`: a desktop notification on this machine (`notify-send`
//! on Linux, `osascript` on macOS, looked up on `PATH` when one is sent, so
//! installing it later needs no restart), and webhooks (a URL and a format:
//! `ntfy` sends the text as the body with a `Title` header, as ntfy.sh
//! expects; `json` sends one JSON object). Every broker that opted in shows
//! desktop notifications for the approvals it sees pending anywhere in the
//! mesh; only the approval's owner calls the webhooks, so one request makes
//! one webhook call, not one per member.
//!
//! Sending never blocks the agent: notices go into a bounded queue served
//! by one task, each channel is tried [`ATTEMPTS`] times with a growing
//! pause, and a failure is logged and dropped.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, watch};

/// Notices queued at most; more while the channels are slow are dropped
/// (and logged): a person needs the first notices, not a backlog.
pub const QUEUE_MAX: usize = 256;

/// Tries per channel and notice: a webhook endpoint restarting or a
/// notification daemon starting gets a second and third chance.
pub const ATTEMPTS: u32 = 3;

/// The pause after the first failed try; it doubles after each.
pub const RETRY_PAUSE_FIRST: Duration = Duration::from_secs(1);

/// How long one webhook call or notifier process may take.
pub const SEND_TIMEOUT: Duration = Duration::from_secs(10);

/// Webhooks a broker calls at most.
pub const WEBHOOKS_MAX: usize = 8;

/// Longest webhook URL accepted.
pub const WEBHOOK_URL_BYTES_MAX: usize = 2048;

/// The `notifications` section of `settings.json`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct NotificationSettings {
    /// Show desktop notifications on this machine.
    pub desktop: bool,
    /// Webhooks called for the approvals this broker owns.
    pub webhooks: Vec<Webhook>,
}

/// One webhook.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Webhook {
    /// `http://` or `https://` URL.
    pub url: String,
    /// What the request looks like.
    #[serde(default)]
    pub format: WebhookFormat,
}

/// The body of a webhook call.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum WebhookFormat {
    /// Plain text body, `Title` header (ntfy.sh and compatible servers).
    #[default]
    Ntfy,
    /// One JSON object with every field of the notice.
    Json,
}

impl NotificationSettings {
    /// Why these settings are unusable, if they are.
    pub fn check(&self) -> Result<(), String> {
        if self.webhooks.len() > WEBHOOKS_MAX {
            return Err(format!(
                "{} webhooks; at most {WEBHOOKS_MAX}",
                self.webhooks.len()
            ));
        }
        for (idx, webhook) in self.webhooks.iter().enumerate() {
            let url = &webhook.url;
            if url.len() > WEBHOOK_URL_BYTES_MAX {
                return Err(format!(
                    "webhooks[{idx}].url is {} bytes; at most {WEBHOOK_URL_BYTES_MAX}",
                    url.len()
                ));
            }
            let lower = url.to_ascii_lowercase();
            let rest = lower
                .strip_prefix("http://")
                .or_else(|| lower.strip_prefix("https://"));
            if rest.is_none_or(|rest| rest.is_empty() || rest.starts_with('/')) {
                return Err(format!(
                    "webhooks[{idx}].url `{url}` is not an http:// or https:// URL"
                ));
            }
        }
        Ok(())
    }
}

/// What a person is told.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Notice {
    /// The approval (`apr_…`).
    pub id: String,
    /// The agent that asks.
    pub agent: String,
    /// What it asks for (`tool.Bash`).
    pub action: String,
    /// What about.
    pub summary: String,
    /// The machine the agent runs on.
    pub node: String,
    /// The command that answers it.
    pub answer: String,
}

impl Notice {
    /// The one-line title.
    pub fn title(&self) -> String {
        format!("{} asks: {}", self.agent, self.action)
    }

    /// The body text.
    pub fn text(&self) -> String {
        format!(
            "{}\non {} · approve: {}",
            self.summary, self.node, self.answer
        )
    }
}

/// Which channels a notice goes to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Channels {
    /// The desktop of this machine (when opted in).
    pub desktop: bool,
    /// The webhooks (when configured).
    pub webhooks: bool,
}

/// The sending side; cheap to clone.
#[derive(Debug, Clone)]
pub struct Notifier {
    queue: mpsc::Sender<(Notice, Channels)>,
}

impl Notifier {
    /// Starts the sending task with `settings`, until `shutdown`.
    pub fn start(
        settings: NotificationSettings,
        shutdown: watch::Receiver<bool>,
        tasks: &mut tokio::task::JoinSet<()>,
    ) -> Notifier {
        let (queue, receiver) = mpsc::channel(QUEUE_MAX);
        tasks.spawn(run(settings, receiver, shutdown));
        Notifier { queue }
    }

    /// Queues `notice` for `channels`; never waits.
    pub fn notify(&self, notice: Notice, channels: Channels) {
        if let Err(err) = self.queue.try_send((notice, channels)) {
            tracing::warn!(cause = %err, "notification dropped: the queue is full or closed");
        }
    }
}

async fn run(
    settings: NotificationSettings,
    mut receiver: mpsc::Receiver<(Notice, Channels)>,
    mut shutdown: watch::Receiver<bool>,
) {
    loop {
        let (notice, channels) = tokio::select! {
            next = receiver.recv() => match next {
                Some(next) => next,
                None => return,
            },
            _ = shutdown.wait_for(|stop| *stop) => return,
        };
        if channels.desktop && settings.desktop {
            with_retries("desktop", || desktop(&notice)).await;
        }
        if channels.webhooks {
            for webhook in &settings.webhooks {
                with_retries("webhook", || send_webhook(webhook, &notice)).await;
            }
        }
    }
}

async fn with_retries<F, Fut>(channel: &str, mut send: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<(), String>>,
{
    let mut pause = RETRY_PAUSE_FIRST;
    for attempt in 1..=ATTEMPTS {
        match send().await {
            Ok(()) => return,
            Err(err) if attempt == ATTEMPTS => {
                tracing::warn!(channel, attempts = ATTEMPTS, cause = %err, "notification not sent");
            }
            Err(err) => {
                tracing::info!(channel, attempt, cause = %err, "notification failed; retrying");
                tokio::time::sleep(pause).await;
                pause *= 2;
            }
        }
    }
}

async fn send_webhook(webhook: &Webhook, notice: &Notice) -> Result<(), String> {
    let webhook = webhook.clone();
    let notice = notice.clone();
    tokio::task::spawn_blocking(move || {
        let agent = ureq::AgentBuilder::new().timeout(SEND_TIMEOUT).build();
        let request = agent.post(&webhook.url).set("User-Agent", "scout");
        let sent = match webhook.format {
            WebhookFormat::Ntfy => request
                .set("Title", &header_safe(&notice.title()))
                .set("Tags", "robot")
                .send_string(&format!("{}\n{}", notice.text(), notice.id)),
            WebhookFormat::Json => request.send_json(serde_json::json!({
                "kind": "approval_pending",
                "id": notice.id,
                "agent": notice.agent,
                "action": notice.action,
                "summary": notice.summary,
                "node": notice.node,
                "answer": notice.answer,
                "title": notice.title(),
            })),
        };
        match sent {
            Ok(_) => Ok(()),
            Err(ureq::Error::Status(status, _)) => {
                Err(format!("{} answered {status}", webhook.url))
            }
            Err(err) => Err(format!("{}: {err}", webhook.url)),
        }
    })
    .await
    .map_err(|err| format!("webhook task failed: {err}"))?
}

/// `text` with `&`, `<` and `>` escaped for a markup body.
fn markup_escaped(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

/// A header value carries no line breaks or control characters.
fn header_safe(text: &str) -> String {
    text.chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect()
}

async fn desktop(notice: &Notice) -> Result<(), String> {
    let title = notice.title();
    let text = notice.text();
    let mut command = if let Some(program) = find_on_path("notify-send") {
        // Notification daemons read the body as markup: an agent's text
        // must not become a link or hide what it asks.
        let mut command = tokio::process::Command::new(program);
        command.args(["--app-name=scout", "--", &title, &markup_escaped(&text)]);
        command
    } else if let Some(program) = find_on_path("osascript") {
        // The text travels as arguments, never inside the script, so
        // nothing an agent wrote can become AppleScript.
        let mut command = tokio::process::Command::new(program);
        command.args([
            "-e",
            "on run argv",
            "-e",
            "display notification (item 2 of argv) with title (item 1 of argv)",
            "-e",
            "end run",
            &title,
            &text,
        ]);
        command
    } else {
        return Err("neither notify-send nor osascript is on PATH".to_owned());
    };
    command
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true);
    let output = tokio::time::timeout(SEND_TIMEOUT, command.output())
        .await
        .map_err(|_| format!("the notifier took more than {} s", SEND_TIMEOUT.as_secs()))?
        .map_err(|err| format!("cannot run the notifier: {err}"))?;
    if output.status.success() {
        Ok(())
    } else {
        Err(format!(
            "the notifier exited with {}: {}",
            output.status,
            String::from_utf8_lossy(&output.stderr).trim()
        ))
    }
}

fn find_on_path(program: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join(program))
        .find(|candidate| is_executable(candidate))
}

fn is_executable(path: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path)
        .is_ok_and(|meta| meta.is_file() && meta.permissions().mode() & 0o111 != 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn webhook_urls_are_checked() {
        let with = |url: &str| NotificationSettings {
            desktop: false,
            webhooks: vec![Webhook {
                url: url.to_owned(),
                format: WebhookFormat::Ntfy,
            }],
        };
        assert!(with("https://ntfy.sh/scout").check().is_ok());
        assert!(with("http://127.0.0.1:9/x").check().is_ok());
        for bad in ["ftp://x", "https://", "http:///x", "file:///etc/passwd", ""] {
            assert!(with(bad).check().is_err(), "{bad}");
        }
    }

    #[test]
    fn markup_in_a_body_is_text() {
        assert_eq!(
            markup_escaped("<a href='x'>y</a> & z"),
            "&lt;a href='x'&gt;y&lt;/a&gt; &amp; z"
        );
    }

    #[test]
    fn header_values_lose_line_breaks() {
        assert_eq!(header_safe("a\r\nInjected: 1"), "a  Injected: 1");
    }
}
