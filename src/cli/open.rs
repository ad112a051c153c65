//! `scout open`: the web view in a browser, logged in without pasting a
//! token. The broker issues a one-time login code (60 s); the URL carrying
//! it is printed and, unless `--print`, handed to the desktop's opener
//! (`xdg-open`, or `open` on macOS) when one exists. `--list` shows the
//! browser sessions and `--revoke ID` ends one.

use std::process::ExitCode;

use clap::Args;
use serde_json::json;

use super::Context;
use super::client::BrokerClient;
use super::output::table;
use crate::http::web::{LoginCode, SessionView};

/// Flags of `scout open`.
#[derive(Debug, Args)]
pub struct OpenArgs {
    /// Only print the URL; do not start a browser.
    #[arg(long, conflicts_with_all = ["list", "revoke"])]
    pub print: bool,
    /// List the browser sessions.
    #[arg(long, conflicts_with = "revoke")]
    pub list: bool,
    /// End a browser session (an id from `--list`).
    #[arg(long, value_name = "ID")]
    pub revoke: Option<String>,
}

#[derive(Debug, serde::Deserialize, serde::Serialize)]
struct Sessions {
    sessions: Vec<SessionView>,
}

/// The programs that open a URL in the desktop's browser, tried in order.
const OPENERS: [&str; 2] = ["xdg-open", "open"];

/// Runs `scout open`.
pub fn run(args: OpenArgs, context: &Context) -> anyhow::Result<ExitCode> {
    let client = BrokerClient::running(context)?.ok_or_else(|| {
        anyhow::anyhow!(
            "the broker of this home is not running; start it with `scout up{}`",
            super::setup::home_flag(context)
        )
    })?;
    if args.list {
        let sessions: Sessions = client
            .get("/v1/web/sessions")
            .map_err(super::send::api_error)?;
        context.printer.emit(&sessions, || {
            let now = context.env.now_unix_ms();
            let rows: Vec<Vec<String>> = sessions
                .sessions
                .iter()
                .map(|session| {
                    vec![
                        session.id.clone(),
                        ago(now, session.created_ms),
                        ago(now, session.last_used_ms),
                        format!("in {}m", session.expires_ms.saturating_sub(now) / 60_000),
                    ]
                })
                .collect();
            if rows.is_empty() {
                "no browser sessions".to_owned()
            } else {
                table(&["ID", "CREATED", "LAST USED", "EXPIRES"], &rows)
            }
        })?;
        return Ok(ExitCode::SUCCESS);
    }
    if let Some(id) = args.revoke {
        let revoked: serde_json::Value = client
            .post(&format!("/v1/web/sessions/{id}/revoke"), &json!({}))
            .map_err(super::send::api_error)?;
        context
            .printer
            .emit(&revoked, || format!("browser session {id} revoked"))?;
        return Ok(ExitCode::SUCCESS);
    }
    let code: LoginCode = client
        .post("/v1/web/codes", &json!({}))
        .map_err(super::send::api_error)?;
    let opened = !args.print && open_in_browser(&code.url);
    context.printer.emit(&code, || {
        let how = if opened {
            "opened in the browser; the link works once, within 60 seconds"
        } else {
            "open this link in a browser on this machine; it works once, within 60 seconds"
        };
        format!("{}\n{how}", code.url)
    })?;
    Ok(ExitCode::SUCCESS)
}

fn ago(now: u64, then: u64) -> String {
    let minutes = now.saturating_sub(then) / 60_000;
    format!("{minutes}m ago")
}

/// Hands `url` to the first opener found; whether one took it.
fn open_in_browser(url: &str) -> bool {
    // Without a display there is no browser to open (a server, an SSH
    // session): print only.
    if cfg!(target_os = "linux")
        && std::env::var_os("DISPLAY").is_none()
        && std::env::var_os("WAYLAND_DISPLAY").is_none()
    {
        return false;
    }
    OPENERS.iter().any(|opener| {
        std::process::Command::new(opener)
            .arg(url)
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .status()
            .is_ok_and(|status| status.success())
    })
}
