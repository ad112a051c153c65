//! The HTTP API's request and response bodies: one definition that the
//! handlers in `http/` return and the CLI in `cli/` deserializes, so a
//! renamed field fails to compile instead of silently reading `null`.
//!
//! Code map:
//! - [`invocations`]: `POST /v1/invocations` ([`SubmitBody`], [`Submitted`]),
//!   `GET /v1/invocations/{id}` ([`InvocationStatus`] and its views), the
//!   cancel answer, `GET /v1/flights` rows and conversations.
//! - [`events`]: [`RoutingEvent`], what `/v1/events/stream` and
//!   `/v1/invocations/{id}/stream` send, with its typed kind and state.
//! - [`work_orders`]: `/v1/work-orders…` bodies and [`WorkOrderView`].
//! - [`mesh`]: `GET /v1/peers` ([`Peers`]) and `GET /v1/agents`
//!   ([`AgentList`]); their rows are the daemon's own views.
//! - [`inbox`]: `GET /v1/inbox` rows ([`InboxItem`]).
//! - [`usage`]: `GET /v1/usage` ([`usage::UsageTotals`]) and the `since`
//!   window both it and `scout usage` parse.
//! - [`checkpoints`]: `/v1/checkpoints…` bodies ([`checkpoints::CheckpointView`]).
//!
//! Architecture invariant: these types are a boundary. Their JSON is what
//! the README documents, field for field; the daemon's internal state does
//! not derive `Serialize` for the API, it converts into these.

pub mod checkpoints;
pub mod events;
pub mod inbox;
pub mod invocations;
pub mod mesh;
pub mod usage;
pub mod work_orders;

pub use events::{EventKind, EventState, RoutingEvent};
pub use inbox::InboxItem;
pub use invocations::{
    AttemptView, Cancelled, ConversationView, DeliveryView, FlightRow, FlightView,
    InvocationStatus, InvocationView, MessageView, SubmitBody, Submitted,
};
pub use mesh::{AgentList, Peers};
pub use work_orders::{EnqueueBody, WorkOrderView};
